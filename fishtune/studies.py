"""Entry point: `python -m fishtune.studies` runs fishtune.harness.studies (see there)."""
from .harness.studies import main

if __name__ == "__main__":
    raise SystemExit(main())
