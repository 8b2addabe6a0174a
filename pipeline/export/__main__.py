"""`python -m pipeline.export`: see `pipeline.export`."""

import sys

from pipeline.errors import exit_status
from pipeline.export import main

sys.exit(exit_status(main, "pipeline.export"))  # a reader that goes away (| head) is no error
