"""Entry point: `python -m fishtune.mask_report` runs fishtune.reports.mask_report (see there)."""
from .reports.mask_report import main

if __name__ == "__main__":
    main()
