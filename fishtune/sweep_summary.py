"""Entry point: `python -m fishtune.sweep_summary` runs fishtune.reports.sweep_summary (see there)."""
import sys

from .reports.sweep_summary import main

if __name__ == "__main__":
    sys.exit(main())
