"""``python -m sleepemo <command>``: the one entry point, :func:`sleepemo.cli.main`
(``python -m sleepemo --help`` lists the commands)."""
import sys

from sleepemo.cli import main

if __name__ == "__main__":
    sys.exit(main())
