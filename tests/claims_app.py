"""`python -m fishtune.run`, watched from outside, for tests/test_claims.py.

Every training this process starts (fishtune.harness.train.train) appends a line `PID RUN` to the file
$CLAIMS_APP_LOG (appends of one short line from several processes do not interleave), so a test counts
trainings without trusting the code it tests. With $CLAIMS_APP_HANG set to a path, the process writes
that file after its first epoch checkpoint and then waits there until it is killed: a sweep killed
mid-run, at a moment the test knows.
"""
import os
import sys
import time
from pathlib import Path

# The checkout this file is in, not whichever fishtune the venv has installed (a script's folder, tests/,
# is what Python puts first on sys.path).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fishtune.harness.train as train_module  # noqa: E402
from fishtune.harness.cli import main  # noqa: E402

_train, _save_checkpoint = train_module.train, train_module.save_checkpoint


def train(*args, checkpoint=None, **kwargs):
    with open(os.environ["CLAIMS_APP_LOG"], "a") as log:
        log.write(f"{os.getpid()} {checkpoint.name.removesuffix('.ckpt.pt')}\n")
    return _train(*args, checkpoint=checkpoint, **kwargs)


def save_checkpoint(path, state, guard=None):
    _save_checkpoint(path, state, guard)
    Path(os.environ["CLAIMS_APP_HANG"]).write_text(str(path))
    time.sleep(3600)


train_module.train = train  # run.execute imports it when it runs, so it gets this one
if os.environ.get("CLAIMS_APP_HANG"):
    train_module.save_checkpoint = save_checkpoint

if __name__ == "__main__":
    main()
