"""``python -m metaland`` — the command-line interface (see ``metaland.cli``)."""

from metaland.cli import main

if __name__ == "__main__":
    main()
