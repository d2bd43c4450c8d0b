"""DVC stage `fetch@<dataset>`: download (or take from METALAND_DATA_MIRROR), verify and normalise one dataset.

A thin shell over `python -m metaland fetch` (see `metaland.cli`), so `dvc repro` and a
hand-run command do the same thing.
"""

from metaland.cli import stage_main

if __name__ == "__main__":
    stage_main("fetch")
