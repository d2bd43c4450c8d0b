"""DVC stage `aggregate`: study tables, statistics, results/metrics.json and results/claims.json.

A thin shell over `python -m metaland aggregate` (see `metaland.cli`), so `dvc repro` and a
hand-run command do the same thing.
"""

import sys

from metaland.cli import main

if __name__ == "__main__":
    main(["aggregate", *sys.argv[1:]])
