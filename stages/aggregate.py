"""DVC stage `aggregate`: study tables, statistics, results/metrics.json and results/claims.json.

A thin shell over `python -m metaland aggregate` (see `metaland.cli`), so `dvc repro` and a
hand-run command do the same thing.
"""

from metaland.cli import stage_main

if __name__ == "__main__":
    stage_main("aggregate")
