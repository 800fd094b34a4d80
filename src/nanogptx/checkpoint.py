"""Checkpoints of the train state and the final model directory: safetensors + JSON, no pickle;
tensors named by key path ("opt.1.0.mu.blocks.attn_w"), so they restore onto any device count.

    save(ckpt_dir, step, tensors, meta, files, keep)   # atomic: ckpt_dir/step_00000100/
    save_model(out_dir, params, cfg, tokenizer, step); params, cfg, tokenizer = load_model(out_dir)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import jax
import numpy as np
import safetensors.numpy
from safetensors import safe_open

from nanogptx import config, model, provenance, tokenizer
from nanogptx.errors import UserError

FORMAT = "nanogptx-checkpoint/2"  # /2: meta.json records the sha256 of every file
MODEL_FORMAT = "nanogptx-params/1"
STATE_FILE, META_FILE = "state.safetensors", "meta.json"
MODEL_FILES = ("params.safetensors", "config.toml", "tokenizer.json")
_STEP_DIR = re.compile(r"^step_(\d+)$")


class CheckpointError(UserError, ValueError):
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
    """Every checkpoint directory (step_NNNNNNNN) as (step, path), oldest first, intact or not:
    `load` says whether one is intact."""
    root = Path(ckpt_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name))]
    return sorted(found)


def latest(ckpt_dir: str | Path) -> Path | None:
    found = list_checkpoints(ckpt_dir)
    return found[-1][1] if found else None


def clean(ckpt_dir: str | Path) -> list[Path]:
    """Remove what a killed save or prune left behind (.nanogptx-tmpdir.* and .nanogptx-trash.*
    directories of files; see provenance.remove_temporaries)."""
    root = Path(ckpt_dir)
    return provenance.remove_temporaries(root) if root.is_dir() else []


def _meta_sha256(meta: dict[str, Any]) -> str:
    """sha256 of meta.json's content: its canonical JSON without the meta_sha256 key."""
    body = {k: v for k, v in meta.items() if k != "meta_sha256"}
    blob = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def save(
    ckpt_dir: str | Path,
    step: int,
    tensors: dict[str, np.ndarray],
    meta: dict[str, Any],
    files: dict[str, bytes] | None = None,
    keep: int = 2,
) -> Path:
    """Write ckpt_dir/step_<step>/ atomically (temp dir, fsync, rename), then keep the last `keep`.

    meta.json records the sha256 of every file and of its own content, which `load` checks. A kill
    at any instant leaves either the complete new checkpoint or none of it (a temporary directory
    that `clean` removes); older checkpoints stay intact. A damaged checkpoint of the same step
    (one that `restore` skipped) is replaced.
    """
    root = Path(ckpt_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = step_path(root, step)
    tmp = root / provenance.temp_name("tmpdir", final.name)
    trash = root / provenance.temp_name("trash", final.name)
    os.mkdir(tmp, 0o777)  # the umask decides, as for any directory (mkdtemp would give 0700)
    try:
        host = {k: np.asarray(v, order="C") for k, v in tensors.items()}
        blobs = {STATE_FILE: safetensors_bytes(host, {"format": FORMAT, "step": str(step)})}
        blobs |= files or {}
        for name, data in blobs.items():
            _write_file(tmp / name, data)
        meta = {"format": FORMAT, "step": step, **meta}
        meta["sha256"] = {name: hashlib.sha256(data).hexdigest() for name, data in blobs.items()}
        meta["meta_sha256"] = _meta_sha256(meta)
        _write_file(tmp / META_FILE, (json.dumps(meta, indent=2) + "\n").encode())
        _fsync_path(tmp)
        if final.exists():
            os.rename(final, trash)
        os.rename(tmp, final)
        _fsync_path(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(trash, ignore_errors=True)
    for _, old in list_checkpoints(root)[:-keep]:
        gone = root / provenance.temp_name("trash", old.name)
        os.rename(old, gone)
        shutil.rmtree(gone)
    return final


def load(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Tensors and metadata of one checkpoint directory, after checking every recorded sha256;
    a damaged or incomplete checkpoint raises CheckpointError saying what is wrong."""
    path = Path(path)
    meta_path = path / META_FILE
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} is damaged: {META_FILE} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint {path} is damaged: {META_FILE}: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        fmt = meta.get("format") if isinstance(meta, dict) else None
        raise CheckpointError(f"{meta_path}: format {fmt!r}, expected {FORMAT!r}")
    if meta.get("meta_sha256") != _meta_sha256(meta):
        raise CheckpointError(
            f"checkpoint {path} is damaged: the content of {META_FILE} does not match its "
            f"recorded sha256 {meta.get('meta_sha256')}"
        )
    hashes = meta.get("sha256")
    if not isinstance(hashes, dict) or STATE_FILE not in hashes:
        raise CheckpointError(f"{meta_path}: no sha256 recorded for {STATE_FILE}")
    for name, expected in hashes.items():
        try:
            provenance.verify(path / name, expected, "checkpoint file")
        except FileNotFoundError:
            raise CheckpointError(f"checkpoint {path} is damaged: {name} is missing") from None
        except provenance.HashMismatch as e:
            raise CheckpointError(f"checkpoint {path} is damaged: {e}") from None
    try:
        tensors = safetensors.numpy.load_file(path / STATE_FILE)
    except (OSError, safetensors.SafetensorError) as e:
        raise CheckpointError(f"checkpoint {path} cannot be read: {e}") from None
    return tensors, meta


def restore(
    ckpt_dir: str | Path, policy: str = "latest", max_step: int | None = None, say: Any = print
) -> tuple[Path, dict[str, np.ndarray], dict[str, Any]] | None:
    """The checkpoint to resume from (path, tensors, meta), or None when there is none.

    policy "latest": the newest at or before max_step, which must be intact (else
    CheckpointError); "latest_valid": the newest intact one, saying which were skipped and why.
    """
    found = list_checkpoints(ckpt_dir)
    usable = [(s, p) for s, p in found if max_step is None or s <= max_step]
    if len(usable) < len(found):
        past = ", ".join(p.name for _, p in found[len(usable) :])  # sorted: the newest are past
        if not usable:
            raise CheckpointError(
                f"every checkpoint in {ckpt_dir} ({past}) is past train.max_iters = {max_step}: "
                f"raise train.max_iters, or delete {ckpt_dir} to start afresh"
            )
        say(f"not resuming from {past}: past train.max_iters = {max_step}")
    skipped = []
    for step, path in reversed(usable):
        try:
            tensors, meta = load(path)
            if meta["step"] != step:
                raise CheckpointError(f"checkpoint {path}: {META_FILE} says step {meta['step']}")
            return path, tensors, meta
        except CheckpointError as e:
            if policy != "latest_valid":
                raise CheckpointError(
                    f"{e}. Set train.resume = latest_valid to resume from the newest intact "
                    f"checkpoint instead, or delete {path}"
                ) from None
            say(f"skipping checkpoint {path.name}: {e}")
            skipped.append(path.name)
    if skipped:
        raise CheckpointError(
            f"no intact checkpoint in {ckpt_dir} (skipped {', '.join(skipped)}); delete "
            f"{ckpt_dir} to start afresh"
        )
    return None


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
    tok: dict[str, Any],
    step: int,
) -> list[Path]:
    """params.safetensors (float32, flat "." keys), config.toml (vocab_size resolved; init_from
    scratch, as the file describes the model itself: where its weights started is provenance)
    and tokenizer.json into out_dir; returns the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    flat = {k: np.asarray(v, np.float32, order="C") for k, v in flatten(params).items()}
    rows = flat["wte"].shape[0]
    m = cfg.model if cfg.model.vocab_size else dataclasses.replace(cfg.model, vocab_size=rows)
    if model.vocab_rows(m) != rows:
        raise CheckpointError(
            f"model.vocab_size = {m.vocab_size} (vocab_multiple {m.vocab_multiple}) but wte "
            f"has {rows} rows"
        )
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(m, init_from="scratch"))
    blob = safetensors_bytes(flat, {"format": MODEL_FORMAT, "step": str(step)})
    paths = [out / name for name in MODEL_FILES]
    provenance.write_bytes_atomic(paths[0], blob)
    provenance.write_bytes_atomic(paths[1], config.dump(cfg).encode())
    provenance.write_bytes_atomic(paths[2], (json.dumps(tok, indent=2) + "\n").encode())
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
    try:  # the model's own description: no dataset registry needed (a model stands alone)
        cfg = config.load(root / "config.toml", registry=False)
    except config.ConfigError as e:
        raise CheckpointError(f"model directory {root}: config.toml: {e}") from None
    tok_path = root / "tokenizer.json"
    tok = provenance.read_json(tok_path, CheckpointError, "tokenizer")
    try:  # what it describes is a tokenizer this code has
        tokenizer.from_manifest(tok if isinstance(tok, dict) else {"name": None})
    except tokenizer.TokenizerError as e:
        raise CheckpointError(f"tokenizer {tok_path}: {e}") from None
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
    rows = model.vocab_rows(cfg.model)
    abstract = jax.eval_shape(lambda: model.init_params(cfg.model, rows, jax.random.key(0)))
    params = unflatten_like(abstract, tensors, where=f"{path} (against {root / 'config.toml'})")
    return params, cfg, tok


def check_model_hash(model_dir: Path) -> str:
    """sha256 of params.safetensors; each model file (MODEL_FILES) is checked against the train
    stage's provenance when present (a config.toml cut short may still parse)."""
    shas = {name: provenance.sha256_file(Path(model_dir) / name) for name in MODEL_FILES}
    for name, sha in shas.items():
        try:
            recorded = provenance.recorded_sha256(model_dir, name)
        except FileNotFoundError:
            break  # a model saved by a user's own code: nothing recorded to check against
        except provenance.FileError as e:
            raise CheckpointError(str(e)) from None
        if recorded is not None and recorded != sha:
            raise provenance.HashMismatch(
                f"{Path(model_dir) / name}: sha256 is {sha}, but "
                f"{Path(model_dir) / provenance.FILENAME} records {recorded}: the model changed "
                "after training"
            )
    return shas[MODEL_FILES[0]]
