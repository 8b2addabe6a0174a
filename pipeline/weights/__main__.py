"""`python -m pipeline.weights`: see `pipeline.weights.cli`."""

import sys

from pipeline.errors import exit_status
from pipeline.weights.cli import main

sys.exit(exit_status(main, "pipeline.weights"))
