"""DVC stage `probe@<run>`: run the study's landscape probes on every extracted checkpoint.

A thin shell over `python -m metaland probe` (see `metaland.cli`), so `dvc repro` and a
hand-run command do the same thing.
"""

from metaland.cli import stage_main

if __name__ == "__main__":
    stage_main("probe")
