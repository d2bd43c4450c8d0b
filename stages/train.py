"""DVC stage `train@<run>`: meta-train one run of params.yaml, resuming from its newest valid checkpoint.

A thin shell over `python -m metaland train` (see `metaland.cli`), so `dvc repro` and a
hand-run command do the same thing.
"""

from metaland.cli import stage_main

if __name__ == "__main__":
    stage_main("train")
