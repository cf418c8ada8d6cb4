"""Wall time of every bad-input case of tests/test_bad_input.py (its BAD table) as a user meets it: a real
`python -m fishtune.run` process, from start to its one line and exit 2.

The tests call the CLI in one process (dozens of cases in seconds) and check the line; this times the
process a user waits on, which includes Python's start and the imports before the check. Prints each
case's seconds and exit code, then the median and the slowest; exit 1 when a case is not one line, exit 2.

    GLUE_DIR= .venv/bin/python benchmarks/bad_input.py [--limit N]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from conftest import GLUE_FIXTURES  # noqa: E402
from test_bad_input import BAD  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="time only the first N cases")
    args = parser.parse_args()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    seconds, bad = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for overrides, message in BAD[:args.limit]:
            model = [] if any(o.startswith("model=") for o in overrides) else ["model=tiny_bert"]
            argv = [sys.executable, "-m", "fishtune.run", *model, f"data.glue_dir={GLUE_FIXTURES}",
                    f"paths.runs_dir={tmp}/runs", *overrides]
            start = time.perf_counter()
            done = subprocess.run(argv, cwd=tmp, capture_output=True, text=True, env=env, timeout=300)
            seconds.append(time.perf_counter() - start)
            lines = done.stderr.strip().splitlines()
            ok = done.returncode == 2 and len(lines) == 1 and message in lines[0]
            bad += [] if ok else [(overrides, done.returncode, lines[-3:])]
            print(f"{seconds[-1]:6.2f} s  exit {done.returncode}  {' '.join(overrides)[:90]}", flush=True)
    print(f"{len(seconds)} cases: median {statistics.median(seconds):.2f} s, slowest {max(seconds):.2f} s; "
          f"{len(seconds) - len(bad)} of {len(seconds)} one line and exit 2")
    for overrides, code, lines in bad:
        print(f"NOT ONE LINE: {overrides} exit {code}: {lines}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
