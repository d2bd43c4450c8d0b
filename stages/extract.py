"""DVC stage `extract@<run>`: select, verify and publish the checkpoints a study probes.

A thin shell over `python -m metaland extract` (see `metaland.cli`), so `dvc repro` and a
hand-run command do the same thing.
"""

import sys

from metaland.cli import main

if __name__ == "__main__":
    main(["extract", *sys.argv[1:]])
