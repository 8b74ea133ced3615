"""``python -m eval run|summary|merge``: see :mod:`eval.run`."""
import sys

from eval.run import main

sys.exit(main())
