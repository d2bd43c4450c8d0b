"""DVC stage `extract@<run>`: select, verify and publish the checkpoints a study probes.

A thin shell over `python -m metaland extract` (see `metaland.cli`), so `dvc repro` and a
hand-run command do the same thing.
"""

from metaland.cli import stage_main

if __name__ == "__main__":
    stage_main("extract")
