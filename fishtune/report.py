"""Entry point: `python -m fishtune.report RUNS_DIR --out FILE.html` runs fishtune.reports.report (see there)."""
from .reports.report import main

if __name__ == "__main__":
    main()
