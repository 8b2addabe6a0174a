"""`python -m pipeline.benchmark`: the throughput benchmark (its code: `pipeline.bench`; see --help)."""

import sys

from pipeline.bench.cli import main
from pipeline.errors import exit_status

if __name__ == "__main__":
    sys.exit(exit_status(main, "python -m pipeline.benchmark"))
