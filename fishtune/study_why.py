"""Entry point: `python -m fishtune.study_why` runs fishtune.reports.study_why (see there)."""
from .reports.study_why import main

if __name__ == "__main__":
    main()
