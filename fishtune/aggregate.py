"""Entry point: `python -m fishtune.aggregate` runs fishtune.reports.aggregate (see there)."""
from .reports.aggregate import main

if __name__ == "__main__":
    main()
