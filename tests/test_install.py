"""An installed fishtune (`pip install .`, not editable) runs from any directory with the configs it
ships (the repository's conf/, packaged as fishtune/conf through the fishtune/conf -> ../conf symlink).

The venv gets fishtune itself from a wheel built of a copy of the package's files, so nothing of the
checkout is on its path. Its dependencies (torch, transformers, peft, adapters, hydra, ... about 2 GB)
are not installed again: a .pth file puts the running interpreter's site-packages behind the venv's
own. Installing them would need the local torch wheel and PyPI, and minutes, for nothing this test
checks; what it checks is what the package ships. The running interpreter's fishtune (an editable
install of the checkout, or PYTHONPATH) is kept out: its .pth finder is not read from a path a .pth
adds, PYTHONPATH is cleared, and the test asserts where the venv's fishtune comes from.
"""
import os
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from conftest import GLUE_FIXTURES, ROOT

pytestmark = pytest.mark.slow


def _run(cmd, cwd, env, timeout=600):
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(python of a fresh venv with fishtune installed from a wheel, its environment, a folder outside the repo)."""
    tmp = tmp_path_factory.mktemp("install")
    venv = tmp / "venv"
    # Without pip: pip and setuptools (84, which builds wheels itself) come with the dependencies; the
    # setuptools that ensurepip would put first on the path (65 on Python 3.11) cannot build a wheel
    # without the `wheel` package.
    made = _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp, env=dict(os.environ))
    if made.returncode != 0:
        pytest.skip(f"cannot create a venv here: {made.stderr.strip().splitlines()[-1:]}")
    python = venv / "bin" / "python"
    purelib = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        cwd=tmp, env=dict(os.environ)).stdout.strip())
    deps = [p for p in {sysconfig.get_paths()["purelib"], *site.getsitepackages()} if Path(p).is_dir()]
    (purelib / "_fishtune_test_deps.pth").write_text("\n".join(deps) + "\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="disabled",
               PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INDEX="1")
    # The package's files only, so the build leaves nothing in the checkout and sees nothing else of it.
    source = tmp / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    # The configs live in conf/ beside the package; fishtune/conf stays a symlink to it, as in the
    # checkout, so the wheel must hold the files themselves for the checks below to pass.
    shutil.copytree(ROOT / "fishtune", source / "fishtune", symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "conf", source / "conf")
    assert (source / "fishtune" / "conf").is_symlink()
    # --no-build-isolation: setuptools comes from the dependencies' site-packages (offline, no PyPI).
    if _run([str(python), "-c", "import pip, setuptools"], cwd=tmp, env=env).returncode != 0:
        pytest.skip("the running interpreter has no pip and setuptools to build and install fishtune offline")
    pip = _run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", str(source)],
               cwd=tmp, env=env)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    shutil.rmtree(source)  # what runs below can only be the installed copy
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    return python, env, elsewhere, purelib


def test_the_installed_package_is_not_the_checkout(installed):
    python, env, elsewhere, purelib = installed
    out = _run([str(python), "-c", "import fishtune, fishtune.harness as h; print(fishtune.__file__); print(h.CONF_DIR)"],
               cwd=elsewhere, env=env)
    assert out.returncode == 0, out.stderr
    package, conf = out.stdout.split()
    assert Path(package).is_relative_to(purelib), package
    # the wheel's own copy of the configs, files not a link back to a checkout
    assert Path(conf).is_relative_to(purelib.resolve()) and not (Path(package).parent / "conf").is_symlink(), conf
    assert (Path(conf) / "config.yaml").is_file() and (Path(conf) / "peft" / "lora.yaml").is_file()
    assert (Path(conf) / "model" / "arch" / "bert-base-uncased.json").is_file()
    assert (Path(package).parent / "reports" / "paper_data" / "table1.csv").is_file()


def test_the_installed_package_trains_a_tiny_model_from_another_directory(installed):
    python, env, elsewhere, _ = installed
    runs = elsewhere / "runs"
    out = _run([str(python), "-m", "fishtune.run", "model=tiny_bert", "task=rte", "mask=fish", "profile=quick",
                f"data.glue_dir={GLUE_FIXTURES}", f"paths.runs_dir={runs}", "train.max_epochs=1"],
               cwd=elsewhere, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert len(list(runs.glob("tiny_bert-rte-lora-L5-r1-fish-b1-s42-*.json"))) == 1, out.stdout
    # An experiment without -m: one line saying how to run it, and no run.
    out = _run([str(python), "-m", "fishtune.run", "+experiment=table1"], cwd=elsewhere, env=env)
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        "fishtune: error: an experiment is a sweep: run it with -m (python -m fishtune.run -m +experiment=table1)"]


def test_the_installed_command_checks_its_input_and_completes_with_hydra(installed):
    """[project.scripts]: `fishtune` is `python -m fishtune.run`, and Hydra's tab completion works through it."""
    python, env, elsewhere, _ = installed
    command = str(python.parent / "fishtune")
    out = _run([command, "trian.lr=1"], cwd=elsewhere, env=env)
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        "fishtune: error: unknown key 'trian.lr'; did you mean train.lr?"], out.stderr
    out = _run([command, "-sc", "query=bash"], cwd=elsewhere, env={**env, "COMP_LINE": "fishtune task=s"})
    assert out.returncode == 0 and out.stdout.split() == ["task=sst2", "task=stsb"], out.stdout + out.stderr
    out = _run([command, "-sc", "install=bash"], cwd=elsewhere, env=env)
    assert out.returncode == 0 and "complete -o nospace -o default -F hydra_bash_completion fishtune" in out.stdout, \
        out.stdout + out.stderr
