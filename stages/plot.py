"""DVC stage `plot`: every figure of every study and report/index.html.

A thin shell over `python -m metaland plot` (see `metaland.cli`), so `dvc repro` and a
hand-run command do the same thing.
"""

from metaland.cli import stage_main

if __name__ == "__main__":
    stage_main("plot")
