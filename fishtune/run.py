"""Entry point: `python -m fishtune.run` runs fishtune.harness.run (see there)."""
from .harness.run import main

if __name__ == "__main__":
    main()
