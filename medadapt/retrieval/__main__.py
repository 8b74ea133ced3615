"""``python -m medadapt.retrieval build|status|query|publish``: the index's command line (:mod:`medadapt.retrieval.cli`)."""
import sys

from medadapt.retrieval.cli import main

sys.exit(main())
