"""Entry point: `python -m fishtune.study` runs fishtune.reports.study (see there)."""
from .reports.study import main

if __name__ == "__main__":
    main()
