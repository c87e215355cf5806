"""cambench command line (see `python run_bench.py --help`); the logic lives in benchmark/cli.py."""

import sys

from benchmark.cli import main

sys.exit(main())
