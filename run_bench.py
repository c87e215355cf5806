"""cambench command line (see `python run_bench.py --help`); the logic lives in benchmark/cli.py."""

import sys

if __name__ == "__main__":  # a spawned worker (dask, loky) re-imports this file: it must not run a command
    from benchmark.cli import main

    sys.exit(main())
