"""``python -m medadapt.retrieval build|status|query|publish``: the index's command line (:func:`medadapt.retrieval.rag.main`)."""
import sys

from medadapt.retrieval.rag import main

sys.exit(main())
