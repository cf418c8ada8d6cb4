"""Every script and benchmark the README names starts: each imports and answers --help (exit 0), and
the helper modules beside them import. A moved module breaks this test, not a user's first try."""
import importlib.util
import subprocess
import sys

import pytest

from conftest import ROOT

PROGRAMS = sorted(p for d in ("scripts", "benchmarks") for p in (ROOT / d).glob("*.py"))


@pytest.mark.parametrize("path", PROGRAMS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_script_imports_and_answers_help(path, monkeypatch):
    monkeypatch.syspath_prepend(str(path.parent))   # benchmarks import their neighbours
    spec = importlib.util.spec_from_file_location(f"_script_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    if "__main__" not in path.read_text():          # a helper module: importing it is its whole use
        spec.loader.exec_module(module)
        return
    proc = subprocess.run([sys.executable, str(path), "--help"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage" in proc.stdout.lower()
