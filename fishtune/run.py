"""Entry point: `python -m fishtune.run` (and the installed `fishtune`) runs fishtune.harness.cli.main (see there)."""
from .harness.cli import main

if __name__ == "__main__":
    main()
