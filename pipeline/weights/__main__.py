"""`python -m pipeline.weights`: see `pipeline.weights.cli`."""

import sys

from pipeline.weights.cli import main

sys.exit(main())
