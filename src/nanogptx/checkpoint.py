"""Checkpoints of the train state, and the final model directory: safetensors + JSON, no pickle.

    save(ckpt_dir, step, tensors, meta, files, keep)   # atomic: ckpt_dir/step_00000100/
    tensors, meta = load(latest(ckpt_dir))
    save_model(out_dir, params, cfg, tokenizer, step); params, cfg, tokenizer = load_model(out_dir)

Tensors are host numpy arrays named by their pytree key paths ("opt.1.0.mu.blocks.attn_w"), so a
checkpoint restores onto any device count; `unflatten_like` rebuilds a tree and checks every leaf.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import jax
import numpy as np
import safetensors.numpy
from safetensors import safe_open

from nanogptx import config, model, provenance

FORMAT = "nanogptx-checkpoint/1"
MODEL_FORMAT = "nanogptx-params/1"
STATE_FILE, META_FILE = "state.safetensors", "meta.json"
MODEL_FILES = ("params.safetensors", "config.toml", "tokenizer.json")
_STEP_DIR = re.compile(r"^step_(\d+)$")


class CheckpointError(ValueError):
    """A checkpoint or model directory that is missing, incomplete or does not fit the config."""


def _key_name(entry: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    raise TypeError(f"unexpected pytree key {entry!r}")


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Leaves by their key path joined with "." ({"blocks": {"fc_w": x}} -> {"blocks.fc_w": x})."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {prefix + ".".join(_key_name(k) for k in path): leaf for path, leaf in leaves}


def unflatten_like(
    abstract: Any, tensors: dict[str, np.ndarray], prefix: str = "", where: str = "checkpoint"
) -> Any:
    """The tree of `abstract` (e.g. from jax.eval_shape) with leaves taken from `tensors` by name;
    every name, shape and dtype must match, and no tensor under `prefix` may be left over."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract)
    names = [prefix + ".".join(_key_name(k) for k in path) for path, _ in leaves]
    missing = [n for n in names if n not in tensors]
    extra = sorted(set(n for n in tensors if n.startswith(prefix)) - set(names))
    if missing or extra:
        raise CheckpointError(
            f"{where}: does not match the expected structure; missing {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}, unexpected {extra[:5]}"
            f"{' ...' if len(extra) > 5 else ''}"
        )
    out = []
    for name, (_, leaf) in zip(names, leaves, strict=True):
        array = tensors[name]
        if tuple(array.shape) != tuple(leaf.shape) or array.dtype != np.dtype(leaf.dtype):
            raise CheckpointError(
                f"{where}: {name} is {array.dtype}{list(array.shape)}, "
                f"expected {np.dtype(leaf.dtype)}{list(leaf.shape)}"
            )
        out.append(array)
    return jax.tree_util.tree_unflatten(treedef, out)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def step_path(ckpt_dir: str | Path, step: int) -> Path:
    return Path(ckpt_dir) / f"step_{step:08d}"


def list_checkpoints(ckpt_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints as (step, path), oldest first."""
    root = Path(ckpt_dir)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        m = _STEP_DIR.match(path.name)
        if m and (path / STATE_FILE).is_file() and (path / META_FILE).is_file():
            found.append((int(m.group(1)), path))
    return sorted(found)


def latest(ckpt_dir: str | Path) -> Path | None:
    found = list_checkpoints(ckpt_dir)
    return found[-1][1] if found else None


def clean(ckpt_dir: str | Path) -> list[Path]:
    """Remove what a killed save or prune left behind (.tmp-* and .trash-* directories)."""
    root = Path(ckpt_dir)
    removed = [p for p in root.glob(".tmp-*")] + [p for p in root.glob(".trash-*")]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


def save(
    ckpt_dir: str | Path,
    step: int,
    tensors: dict[str, np.ndarray],
    meta: dict[str, Any],
    files: dict[str, bytes] | None = None,
    keep: int = 2,
) -> Path:
    """Write ckpt_dir/step_<step>/ atomically (temp dir, fsync, rename), then keep the last `keep`.

    A kill at any instant leaves either the complete new checkpoint or none of it (a .tmp-*
    directory that `latest` ignores and `clean` removes); older checkpoints stay intact.
    """
    root = Path(ckpt_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = step_path(root, step)
    if not final.exists():
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=root))
        try:
            host = {k: np.asarray(v, order="C") for k, v in tensors.items()}
            _write_file(
                tmp / STATE_FILE, safetensors_bytes(host, {"format": FORMAT, "step": str(step)})
            )
            for name, data in (files or {}).items():
                _write_file(tmp / name, data)
            meta = {"format": FORMAT, "step": step, **meta}
            _write_file(tmp / META_FILE, (json.dumps(meta, indent=2) + "\n").encode())
            _fsync_path(tmp)
            os.rename(tmp, final)
            _fsync_path(root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    for _, old in list_checkpoints(root)[:-keep]:
        trash = root / f".trash-{old.name}-{os.getpid()}"
        os.rename(old, trash)
        shutil.rmtree(trash)
    return final


def load(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Tensors and metadata of one checkpoint directory."""
    path = Path(path)
    try:
        meta = json.loads((path / META_FILE).read_text())
        tensors = safetensors.numpy.load_file(path / STATE_FILE)
    except (OSError, json.JSONDecodeError, safetensors.SafetensorError) as e:
        raise CheckpointError(f"checkpoint {path} cannot be read: {e}") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{path / META_FILE}: format {meta.get('format')!r}, expected {FORMAT!r}"
        )
    return tensors, meta


def safetensors_bytes(tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> bytes:
    """safetensors.numpy.save with a canonical header: safetensors orders the metadata
    differently in each process, and equal parameters must give files with equal sha256."""
    blob = safetensors.numpy.save(tensors, metadata=metadata)
    n = int.from_bytes(blob[:8], "little")
    header = json.dumps(json.loads(blob[8 : 8 + n]), sort_keys=True, separators=(",", ":"))
    header += " " * (-len(header) % 8)  # the format pads the header to 8-byte alignment
    return len(header).to_bytes(8, "little") + header.encode() + blob[8 + n :]


def save_model(
    out_dir: str | Path,
    params: Any,
    cfg: config.Config,
    tokenizer: dict[str, Any],
    step: int,
) -> list[Path]:
    """params.safetensors (float32, flat "." keys), config.toml (vocab_size resolved) and
    tokenizer.json into out_dir; returns the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    flat = {k: np.asarray(v, np.float32, order="C") for k, v in flatten(params).items()}
    vocab = flat["wte"].shape[0]
    if cfg.model.vocab_size not in (0, vocab):
        raise CheckpointError(f"model.vocab_size = {cfg.model.vocab_size} but wte has {vocab} rows")
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=vocab))
    blob = safetensors_bytes(flat, {"format": MODEL_FORMAT, "step": str(step)})
    paths = [out / name for name in MODEL_FILES]
    provenance.write_bytes_atomic(paths[0], blob)
    provenance.write_bytes_atomic(paths[1], config.dump(cfg).encode())
    provenance.write_bytes_atomic(paths[2], (json.dumps(tokenizer, indent=2) + "\n").encode())
    return paths


def load_model(model_dir: str | Path) -> tuple[Any, config.Config, dict[str, Any]]:
    """(params as numpy float32 arrays, the resolved Config, the tokenizer dict) of a trained
    model directory; a missing file or params that do not fit the config raise CheckpointError."""
    root = Path(model_dir)
    if not root.is_dir():
        raise CheckpointError(f"model directory {root} does not exist: run the train stage first")
    for name in MODEL_FILES:
        if not (root / name).is_file():
            raise CheckpointError(f"model directory {root}: {name} is missing")
    try:
        cfg = config.load(root / "config.toml")
    except config.ConfigError as e:
        raise CheckpointError(f"model directory {root}: config.toml: {e}") from None
    tokenizer = json.loads((root / "tokenizer.json").read_text())
    path = root / MODEL_FILES[0]
    try:
        with safe_open(str(path), "np") as f:
            fmt = (f.metadata() or {}).get("format")
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open API)
    except (OSError, safetensors.SafetensorError) as e:
        raise CheckpointError(f"{path} cannot be read: {e}") from None
    if fmt != MODEL_FORMAT:
        raise CheckpointError(f"{path}: format {fmt!r}, expected {MODEL_FORMAT!r}")
    vocab = cfg.model.vocab_size
    if vocab <= 0:
        raise CheckpointError(f"{root / 'config.toml'}: model.vocab_size must be resolved (> 0)")
    abstract = jax.eval_shape(lambda: model.init_params(cfg.model, vocab, jax.random.key(0)))
    params = unflatten_like(abstract, tensors, where=f"{path} (against {root / 'config.toml'})")
    return params, cfg, tokenizer
