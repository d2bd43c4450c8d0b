"""DVC stage `check-params`: validate the whole params file on any edit, before every other stage.

A thin shell over `python -m metaland check-params` (see `metaland.cli`).
"""

from metaland.cli import stage_main

if __name__ == "__main__":
    stage_main("check-params")
