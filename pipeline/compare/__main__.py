"""`python -m pipeline.compare`."""

import sys

from pipeline.compare.cli import main

sys.exit(main())
