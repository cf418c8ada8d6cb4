"""The command line, `python -m fishtune.run OVERRIDES` (or the installed `fishtune`): checked, then handed to Hydra.

The command line is parsed once (`parse_command_line`) and checked before Hydra starts: a malformed
override, an unknown key or group option, an experiment without -m, a runs folder that cannot be one:
one line, exit 2. A sweep whose runs are all finished stops there, in one line, without launching a job
(`sweeps.finished_jobs`); otherwise Hydra runs the run or the sweep, each job through the runner
(fishtune.harness.run.run_job).
"""
from __future__ import annotations

import argparse
import difflib
import os
import signal
import sys
import tempfile
import threading
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from . import CONF_DIR
from . import run as runner
from .checks import ConfigError
from .signals import exit_at_once

# Config groups whose options all live in conf/: its folders, but hydra/ (hydra/* groups also
# have options from plugins).
OWN_GROUPS = tuple(sorted(d.name for d in CONF_DIR.iterdir() if d.is_dir() and d.name != "hydra"))


def parse_overrides(argv: list[str]) -> list:
    """The Hydra overrides on a command line (Hydra's own flags, -m or --cfg job, left out), parsed with
    Hydra's grammar; a malformed one is one line (ConfigError) naming it and what is wrong."""
    return parse_command_line(argv)[1]


def parse_command_line(argv: list[str]) -> tuple[argparse.Namespace, list]:
    """(Hydra's flags, the overrides parsed with Hydra's grammar) of a command line; a malformed override
    is one line (ConfigError) naming it and what is wrong."""
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser

    flags = get_args_parser().parse_known_args(argv)[0]
    parser = OverridesParser.create()
    out = []
    for text in flags.overrides or []:
        try:
            out += parser.parse_overrides([text])
        except Exception as e:  # noqa: BLE001 - Hydra's OverrideParseException and the lexer's own
            why = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
            if why.startswith("LexerNoViableAltException"):   # the lexer repeats the text and points at it
                why = "a key must be a dotted name (letters, digits, _ . / -)"
            raise ConfigError(f"cannot read the override {text!r}: {why} "
                              f"(Hydra's override grammar: key=value, group=option, +key=value, ~key; "
                              f"a value with spaces or commas in quotes)") from None
    return flags, out


def check_group_overrides(overrides: list, conf_dir: Path = CONF_DIR) -> None:
    """Reject an unknown option of a config group (task=foo) with one line naming the allowed ones,
    before Hydra composes anything. `overrides`: parse_overrides'."""
    given: dict[str, str] = {}
    for o in overrides:
        group = conf_dir / o.key_or_group
        if o.key_or_group not in OWN_GROUPS or o.package is not None or o.is_delete():
            continue
        if o.key_or_group in given:  # Hydra would take the last one without a word
            raise ConfigError(f"{o.key_or_group} is given twice ({given[o.key_or_group]} and {o.input_line}); give it "
                              f"once (several values: {o.key_or_group}=a,b with -m)")
        given[o.key_or_group] = o.input_line
        allowed = sorted(f.stem for f in group.glob("*.yaml"))
        values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()]
        for v in values:
            if v not in allowed:
                raise ConfigError(f"unknown {o.key_or_group} {v!r}; choose one of: {', '.join(allowed)}")


def check_keys(overrides: list, flags: argparse.Namespace) -> None:
    """Reject, in one line naming the closest known key, an override of a key that no file of conf/ has
    (a typo, `trian.lr=1`; `+train.foo=1`, which Hydra would add and the run never read, yet it would
    change the run's identity). Keys of Hydra's own config (hydra.*) are Hydra's to check.
    (`flags`, `overrides`: parse_command_line's.)"""
    from .results import conf_types

    if flags.config_path or flags.config_name:
        return   # another primary config: its keys are its own
    # the user's own config folders (--config-dir, hydra.searchpath=[file://...]) add groups of theirs
    folders = [Path(flags.config_dir)] if flags.config_dir else []
    for o in overrides:
        if o.key_or_group == "hydra.searchpath":
            entries = o.value() if isinstance(o.value(), list) else [o.value()]
            if any(not str(e).startswith("file://") for e in entries):
                return   # a package's configs: not looked into here
            folders += [Path(str(e).removeprefix("file://")) for e in entries]
    keys = {k.removesuffix("[]") for k in conf_types()}
    known = keys | {".".join(k.split(".")[:i]) for k in keys for i in range(1, k.count(".") + 1)} | set(OWN_GROUPS)
    for o in overrides:
        key = o.key_or_group
        if o.is_hydra_override() or o.package is not None or key in known or "/" in key \
                or any((folder / key.split(".")[0]).is_dir() for folder in folders):
            continue
        # a known parent (train.lrr): the closest of its own keys, else all of them; else the closest key
        parent = key.rpartition(".")[0]
        under = sorted(k[len(parent) + 1:] for k in keys if parent and k.startswith(parent + ".")
                       and "." not in k[len(parent) + 1:])
        close = difflib.get_close_matches(key.rpartition(".")[2], under, n=1) if under else \
            difflib.get_close_matches(key, sorted(keys), n=1)
        hint = (f"did you mean {f'{parent}.' if under else ''}{close[0]}?" if close
                else f"{parent} has: {', '.join(under)}" if under else "conf/config.yaml and its groups list the keys")
        added = " (+ adds a key that fishtune never reads)" if o.is_add() or o.is_force_add() else ""
        raise ConfigError(f"unknown key {key!r}{added}; {hint}")


def _default_runs_dir() -> str:
    import yaml

    return str(yaml.safe_load((CONF_DIR / "config.yaml").read_text())["paths"]["runs_dir"])


def _writable(folder: Path) -> bool:
    """Whether `folder` can be written, or created: the nearest folder of it that exists can be written."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder.is_dir() and os.access(folder, os.W_OK)


def check_runs_dir(overrides: list) -> tuple[list[str], str | None]:
    """Check paths.runs_dir as typed (one line, ConfigError: empty, or under a file), and return the
    overrides that keep Hydra's own files out of a runs folder that cannot be written (a read-only
    checkout whose runs are all finished still rebuilds and skips): Hydra's run and sweep folders go to
    ~/.cache/fishtune/hydra (else a temporary folder), with the note that says so (printed once Hydra
    starts). Nothing when the user set Hydra's folders. `overrides`: parse_overrides'."""
    chosen = [str(v) for o in overrides if o.key_or_group == "paths.runs_dir" and not o.is_delete()
              for v in (o.sweep_string_iterator() if o.is_sweep_override() else [o.value()])]
    runs_dirs = chosen or [_default_runs_dir()]
    for runs_dir in runs_dirs:
        if not runs_dir.strip():
            raise ConfigError(f"paths.runs_dir={runs_dir!r}: must be a folder path (e.g. paths.runs_dir=runs); "
                              f"empty would write result files into the current folder")
        for folder in (Path(runs_dir), *Path(runs_dir).parents):
            if folder.exists() and not folder.is_dir():
                raise ConfigError(f"paths.runs_dir={runs_dir}: {folder} is a file, not a folder (choose a folder path)")
    if any(o.key_or_group in ("hydra.run.dir", "hydra.sweep.dir") for o in overrides) \
            or all(_writable(Path(d) / "hydra") for d in runs_dirs):
        return [], None
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fishtune" / "hydra"
    base = cache if _writable(cache) else Path(tempfile.gettempdir()) / f"fishtune-hydra-{os.getuid()}"
    note = f"fishtune: note: {', '.join(runs_dirs)} cannot be written; Hydra's own files go to {base}"
    quoted = "'" + str(base).replace("\\", "\\\\").replace("'", "\\'")
    return [f"hydra.run.dir={quoted}/${{now:%Y-%m-%d_%H-%M-%S}}'",
            f"hydra.sweep.dir={quoted}/multirun_${{now:%Y-%m-%d_%H-%M-%S-%f}}'"], note


def check_experiment_is_a_sweep(argv: list[str]) -> None:
    """An experiment (conf/experiment/) lists its runs under hydra.sweeper.params, which only a
    multirun reads: without -m Hydra would do one default run and say nothing. Refuse that in one line."""
    names = [a.split("=", 1)[1] for a in argv if a.lstrip("+~").startswith("experiment=")]
    if names and not _is_multirun(argv):
        raise ConfigError(f"an experiment is a sweep: run it with -m (python -m fishtune.run -m "
                          f"+experiment={names[0]})")


def _is_multirun(argv: list[str]) -> bool:
    return any(a in ("-m", "--multirun") or a.replace(" ", "") == "hydra.mode=MULTIRUN" for a in argv)


def with_custom_model(argv: list[str]) -> list[str]:
    """`model.path=X` without a `model=` choice means your own checkpoint: add `model=custom`
    (conf/model/custom.yaml: family and name from the checkpoint). The default model, the embedded MiniLM,
    reads no path, and would otherwise refuse it (docs/OWN.md, "Your own model")."""
    keys = [a.split("=", 1)[0].lstrip("+~") for a in argv if "=" in a and not a.startswith("-")]
    if "model.path" in keys and "model" not in keys and "experiment" not in keys:
        return [*argv, "model=custom"]
    return argv


def _check_command_line() -> tuple[argparse.Namespace, list, str | None]:
    """main's checks of sys.argv (one line and exit 2 on the first bad value); may add Hydra's own output
    folder to it (check_runs_dir). Returns the command line parsed (parse_command_line) and the note to
    print when Hydra starts."""
    sys.argv[1:] = with_custom_model(sys.argv[1:])
    try:
        argv = sys.argv[1:]
        check_experiment_is_a_sweep(argv)
        flags, overrides = parse_command_line(argv)
        check_keys(overrides, flags)
        check_group_overrides(overrides)
        extra, note = check_runs_dir(overrides)
        sys.argv += extra
    except ConfigError as e:
        print(f"fishtune: error: {e}", file=sys.stderr)
        sys.exit(2)
    return flags, overrides, note


# Hydra's flags after which it does something else than launch the runs: print, complete, or read other configs.
_NOT_A_LAUNCH = ("help", "hydra_help", "version", "cfg", "info", "shell_completion", "config_path", "config_name",
                 "config_dir", "experimental_rerun")


def _all_finished(flags: argparse.Namespace, overrides: list) -> int | None:
    """The number of runs of a sweep that are all finished (each result file there and valid), found
    without launching anything; None when some run is not, or it cannot be told cheaply (Hydra then launches
    the sweep and each job decides for itself)."""
    from .sweeps import finished_jobs

    if not (flags.multirun or any(o.key_or_group == "hydra.mode" and str(o.value()) == "MULTIRUN"
                                  for o in overrides)) \
            or any(getattr(flags, name, None) for name in _NOT_A_LAUNCH) \
            or any(o.key_or_group == "hydra.searchpath" for o in overrides):
        return None
    return finished_jobs([o.input_line for o in overrides])


def main() -> None:
    """`python -m fishtune.run OVERRIDES`: the command line is checked before Hydra starts (a malformed
    override, an unknown key or group option, an experiment without -m, a runs folder that cannot be one:
    one line, exit 2); a sweep whose runs are all finished says so in one line and launches nothing; else
    Hydra runs the run or the sweep. Hydra's tab completion (`-sc install=bash`, `-sc query=bash`) reads its
    words as overrides of its own: it goes to Hydra unchecked."""
    checked = None if {"-sc", "--shell-completion"} & set(sys.argv[1:]) else _check_command_line()
    # Outside a run (a sweep's launcher, Hydra composing): SIGTERM and SIGINT end the process at once, in one
    # line. Not by an exception: joblib would kill a parallel sweep's workers on its way out (SIGKILL, claims
    # left behind), whereas its workers, seeing their launcher gone, stop cleanly (signals.watch_parent).
    if threading.current_thread() is threading.main_thread():
        for s in (signal.SIGTERM, signal.SIGINT):
            signal.signal(s, exit_at_once)
    if checked is not None:
        flags, overrides, note = checked
        if (n := _all_finished(flags, overrides)) is not None:
            print(f"fishtune: {n} of {n} finished, 0 to train")
            return
        if note:
            print(note, file=sys.stderr)
    _hydra_main()


# An absolute config path: main() also works when called from Python (`from fishtune.run import main`),
# where Hydra would otherwise look for conf/ as a package next to fishtune.
@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    job = None
    if hc.mode == RunMode.MULTIRUN:
        job = runner.SweepJob(sweep_dir=Path(str(hc.sweep.dir)), job_dir=Path(str(hc.runtime.output_dir)),
                              parallel="joblib" in str(hc.launcher.get("_target_", "")))
    runner.run_job(OmegaConf.to_container(cfg, resolve=True), job)
