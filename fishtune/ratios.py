"""Entry point: `python -m fishtune.ratios` runs fishtune.reports.ratios (see there)."""
import sys

from .reports.ratios import main

if __name__ == "__main__":
    sys.exit(main())
