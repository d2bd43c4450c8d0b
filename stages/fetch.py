"""DVC stage `fetch@<dataset>`: download (or take from METALAND_DATA_MIRROR), verify and normalise one dataset.

A thin shell over `python -m metaland fetch` (see `metaland.cli`), so `dvc repro` and a
hand-run command do the same thing.
"""

import sys

from metaland.cli import main

if __name__ == "__main__":
    main(["fetch", *sys.argv[1:]])
