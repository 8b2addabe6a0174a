"""`python -m pipeline.gpu_check`: the prepared GPU check (its code: `pipeline.bench.gpu_check`)."""

import sys

from pipeline.bench.gpu_check import main
from pipeline.errors import exit_status

if __name__ == "__main__":
    sys.exit(exit_status(main, "python -m pipeline.gpu_check"))
