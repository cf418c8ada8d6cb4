"""wandb through the CLI, offline: what a run logs (read back from wandb's own offline file) and what it prints."""
import json
import os
import struct
import subprocess
import sys

from conftest import GLUE_FIXTURES, ROOT, run_config

QUICK = ["train.max_epochs=2", "fisher.samples=16", "data.train_samples=24", "data.dev_samples=12"]


def wandb_records(path) -> list:
    """The protobuf Records of a wandb offline run file (`run-<id>.wandb`): a 7-byte header, then LevelDB's
    log format (32 KiB blocks of chunks: crc32 [4], length [2], type [1]: full 1, first 2, middle 3, last 4)."""
    from wandb.proto import wandb_internal_pb2 as pb

    raw, block = path.read_bytes(), 32768
    assert raw[:4] == b":W&B", raw[:7]
    records, pos, chunks = [], 7, b""
    while pos + 7 <= len(raw):
        if block - pos % block < 7:   # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        if kind == 0:
            break
        chunks += raw[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(chunks)
            records.append(record)
            chunks = b""
    return records


def test_a_cli_run_logs_its_profile_data_and_lr_group_and_prints_one_wandb_line(tmp_path):
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path / "wandb_dir")}
    env.pop("WANDB_SILENT", None)   # wandb's quiet is fishtune's own setting, not the caller's
    out = subprocess.run([sys.executable, "-m", "fishtune.run", "model=tiny_bert", "task=rte", "mask=rand",
                          "profile=quick", "logger=wandb", f"data.glue_dir={GLUE_FIXTURES}",
                          f"paths.runs_dir={tmp_path / 'runs'}", *QUICK],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    # wandb's ~20 lines (banner, sync hints, history sparklines, summary) are gone: one line says where
    # the run is, then the result line
    said = [line for line in (out.stdout + out.stderr).splitlines() if "wandb" in line.lower()]
    assert len(said) == 1 and said[0].startswith("fishtune: wandb: offline run in "), out.stdout + out.stderr
    folder = said[0].removeprefix("fishtune: wandb: offline run in ").removesuffix(" (`wandb sync` it to upload)")
    lines = out.stdout.splitlines()
    assert lines[-1].startswith("fishtune: tiny_bert-rte-lora-") and " best rte score " in lines[-1], out.stdout

    (log,) = (tmp_path / "runs" / "wandb").glob("offline-run-*/run-*.wandb")
    assert str(log.parent) == folder
    (run,) = [r.run for r in wandb_records(log) if r.WhichOneof("record_type") == "run"]
    # quick's profile, its 24 examples (data.train_samples) and its 40 x 5e-5 learning rate
    assert run.run_group == "tiny_bert-rte-lora-r1-b1-quick-n24-lr0.002" and run.job_type == "rand"
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    composed = run_config(tmp_path / "runs", "task=rte", "mask=rand", "profile=quick", *QUICK)
    assert config["mask"] == composed["mask"] and config["mask"]["mode"] == "rand"   # the config's dict, kept
    assert config["task"] == composed["task"] and config["model"]["name"] == "tiny_bert"
    assert (config["profile"], config["lr"], config["method"], config["data"]["train_samples"]) == \
        ("quick", 0.002, "lora", 24)
