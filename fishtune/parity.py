"""Entry point: `python -m fishtune.parity` runs fishtune.reports.parity (see there)."""
from .reports.parity import main

if __name__ == "__main__":
    main()
