"""Prepared token shards -> batches that are a pure function of (seed, step), placed on devices.

    data = open_prepared("data/prepared/<data_id>")   # manifest (against provenance), shards
    x_BxL, y_BxL = batch(data, BatchSpec("train", seed=1337, batch_size=12, block_size=64), 0)
Any step's batch can be recomputed from the schedule that train records in provenance.json."""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nanogptx import progress, provenance, shards
from nanogptx.errors import UserError
from nanogptx.shards import FORMAT

# Name and version of the batch function: bump the version when `batch` changes its output.
BATCH_FUNCTION = "nanogptx.loader.batch/1"
STREAMS = ("train", "eval")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class DataError(UserError, ValueError):
    """Prepared data that is missing, malformed or inconsistent with the manifest."""


@dataclass(frozen=True)
class TokenStream:
    """One split: its shards read as one concatenated stream of tokens."""

    name: str
    shards: tuple[np.ndarray, ...]
    offsets: np.ndarray  # start of each shard in the stream, then the total

    @property
    def n_tokens(self) -> int:
        return int(self.offsets[-1])

    def read(self, start: int, length: int) -> np.ndarray:
        """tokens[start:start + length] as int32, across shard boundaries."""
        out = np.empty(length, np.int32)
        i = int(np.searchsorted(self.offsets, start, side="right")) - 1
        done = 0
        while done < length:
            lo = start + done - int(self.offsets[i])
            piece = self.shards[i][lo : lo + length - done]
            out[done : done + len(piece)] = piece
            done += len(piece)
            i += 1
        return out


@dataclass(frozen=True)
class Prepared:
    """A prepared data directory: its manifest, the manifest's sha256 and the split streams."""

    dir: Path
    manifest: dict[str, Any]
    manifest_sha256: str
    splits: dict[str, TokenStream]

    @property
    def vocab_size(self) -> int:
        return int(self.manifest["tokenizer"]["vocab_size"])

    def split(self, name: str) -> TokenStream:
        if name not in self.splits:
            raise DataError(f"{self.dir}: no split {name!r}; the manifest has {list(self.splits)}")
        return self.splits[name]


def read_manifest(data_dir: str | Path) -> dict[str, Any]:
    path = Path(data_dir) / "manifest.json"
    if not path.exists():
        raise DataError(f"{path} is missing: run the prepare stage for this data first")
    manifest = provenance.read_json(path, DataError, "manifest")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        fmt = manifest.get("format") if isinstance(manifest, dict) else manifest
        raise DataError(f"{path}: format is {fmt!r}, expected {FORMAT!r}")
    for key in ("tokenizer", "shard_format", "splits", "shards"):
        if key not in manifest:
            raise DataError(f"{path}: key {key!r} is missing")
    _check_manifest(path, manifest)
    return manifest


def _check_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """The types of what the loader reads, each bad value named with its key."""

    def need(ok: bool, key: str, value: Any, expected: str) -> None:
        if not ok:
            raise DataError(
                f"{path}: {key} is {value!r} ({type(value).__name__}), expected {expected}"
            )

    def count(key: str, value: Any) -> None:
        is_int = isinstance(value, int) and not isinstance(value, bool)
        need(is_int and value >= 0, key, value, "a number of tokens (an integer >= 0)")

    tok = manifest["tokenizer"]
    need(isinstance(tok, dict), "tokenizer", tok, "an object")
    vocab = tok.get("vocab_size")
    is_count = isinstance(vocab, int) and not isinstance(vocab, bool)
    need(is_count and vocab > 0, "tokenizer.vocab_size", vocab, "an integer > 0")
    fmt = manifest["shard_format"]
    need(fmt in shards.FORMATS, "shard_format", fmt, " or ".join(shards.FORMATS))
    need(isinstance(manifest["shards"], list), "shards", manifest["shards"], "a list")
    for i, entry in enumerate(manifest["shards"]):
        need(isinstance(entry, dict), f"shards[{i}]", entry, "an object")
        name, split, sha = entry.get("file"), entry.get("split"), entry.get("sha256")
        ok = isinstance(name, str) and shards.PLAIN_NAME.fullmatch(name) is not None
        need(ok, f"shards[{i}].file", name, "a shard file name such as train_000000.npy")
        need(isinstance(split, str), f"shards[{i}].split", split, "a split name")
        count(f"shards[{i}].tokens", entry.get("tokens"))
        ok = isinstance(sha, str) and _SHA256.fullmatch(sha) is not None
        need(ok, f"shards[{i}].sha256", sha, "64 hexadecimal digits")


def verify_manifest(data_dir: str | Path) -> str:
    """sha256 of manifest.json, checked against what the prepare stage recorded for it in
    provenance.json (HashMismatch: a manifest edited since, splits swapped, vocabulary...)."""
    data_dir = Path(data_dir)
    path, record = data_dir / "manifest.json", data_dir / provenance.FILENAME
    sha = provenance.sha256_file(path)
    try:
        recorded = provenance.recorded_sha256(data_dir, path.name)
    except FileNotFoundError:
        raise DataError(
            f"{record} is missing: the prepare stage writes it last, so this data was not "
            "finished (or not made by prepare); run prepare for it"
        ) from None
    except provenance.FileError as e:
        raise DataError(str(e)) from None
    if recorded is None:
        raise DataError(f"{record}: records no {path.name} among its outputs")
    if recorded != sha:
        raise provenance.HashMismatch(
            f"{path}: sha256 is {sha}, but {record} records {recorded}: the manifest changed "
            "after the prepare stage wrote it; run prepare again"
        )
    return sha


def verify_shards(data_dir: str | Path, manifest: dict[str, Any]) -> None:
    """Refuse a shard whose sha256 differs from the manifest's (HashMismatch names both)."""
    for entry in manifest["shards"]:
        path = Path(data_dir) / entry["file"]
        if not path.is_file():
            raise DataError(f"shard {path} listed in the manifest is missing")
        provenance.verify(path, entry["sha256"], "shard")


def open_prepared(data_dir: str | Path, verify: bool = True) -> Prepared:
    """Read manifest.json, check it against prepare's record and every shard's hash against it
    (unless verify=False) and map the shards."""
    data_dir = Path(data_dir)
    manifest = read_manifest(data_dir)
    if verify:
        verify_manifest(data_dir)
        verify_shards(data_dir, manifest)
    splits: dict[str, list[np.ndarray]] = {name: [] for name in manifest["splits"]}
    for entry in manifest["shards"]:
        path = data_dir / entry["file"]
        tokens = shards.load(path, manifest["shard_format"])
        if tokens.ndim != 1 or len(tokens) != entry["tokens"]:
            raise DataError(
                f"shard {path}: {tokens.shape} tokens, the manifest says {entry['tokens']}"
            )
        splits.setdefault(entry["split"], []).append(tokens)
    streams = {}
    for name, arrays in splits.items():
        offsets = np.cumsum([0] + [len(a) for a in arrays], dtype=np.int64)
        streams[name] = TokenStream(name, tuple(arrays), offsets)
    sha = provenance.sha256_file(data_dir / "manifest.json")
    return Prepared(data_dir, manifest, sha, streams)


@dataclass(frozen=True)
class BatchSpec:
    """The batches of one stream: batch `step` is a pure function of these and the step.

    order random: windows uniform over the split, as nanoGPT's get_batch; sequential:
    consecutive non-overlapping windows, wrapping around. stream: train or eval, independent
    draws from the same seed."""

    split: str
    seed: int
    batch_size: int
    block_size: int
    order: str = "random"
    stream: str = "train"


def _rng(spec: BatchSpec, step: int) -> np.random.Generator:
    if spec.seed < 0 or step < 0:
        raise ValueError(f"seed and step must be >= 0, got seed {spec.seed}, step {step}")
    if spec.stream not in STREAMS:
        raise ValueError(f"stream {spec.stream!r}: expected one of {STREAMS}")
    stream_id, split_id = STREAMS.index(spec.stream), zlib.crc32(spec.split.encode())
    return np.random.default_rng([spec.seed, stream_id, split_id, step])


def window_starts(n_tokens: int, spec: BatchSpec, step: int) -> np.ndarray:
    """First token of each of the batch_size windows of batch `step` (pure in its arguments):
    random, uniform over [0, n_tokens - block_size); sequential, window after window."""
    B, L = spec.batch_size, spec.block_size
    if n_tokens < L + 1:
        raise DataError(
            f"split {spec.split!r} has {progress.plural(n_tokens, 'token')}, fewer than "
            f"block_size + 1 = {L + 1}"
        )
    if spec.order == "random":
        return _rng(spec, step).integers(0, n_tokens - L, B)
    if spec.order == "sequential":
        n_windows = (n_tokens - 1) // L
        return (np.arange(B, dtype=np.int64) + step * B) % n_windows * L
    raise ValueError(f"order {spec.order!r}: expected random or sequential")


def batch(
    data: Prepared, spec: BatchSpec, step: int, rows: slice = slice(None)
) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and next-token targets (int32) of batch `step`; `rows` reads only some rows."""
    starts = window_starts(data.split(spec.split).n_tokens, spec, step)
    return windows(data, spec.split, starts[rows], spec.block_size)


def windows(
    data: Prepared, split: str, starts: np.ndarray, block_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and next-token targets (int32) of the block_size windows that begin at `starts`."""
    tokens = data.split(split)
    xy_BxL1 = np.stack([tokens.read(int(s), block_size + 1) for s in starts])
    if xy_BxL1.size and (xy_BxL1.max() >= data.vocab_size or xy_BxL1.min() < 0):
        raise DataError(
            f"{data.dir}: split {split!r} holds token ids outside [0, {data.vocab_size})"
        )
    return xy_BxL1[:, :-1], xy_BxL1[:, 1:]


def schedule(data: Prepared, spec: BatchSpec, accumulation: int) -> dict[str, Any]:
    """What provenance records so that any step's batch of the train stream `spec` can be
    recomputed: micro-batch i of step s is batch(data, spec, s * accumulation + i)."""
    return {
        "function": BATCH_FUNCTION,
        "manifest_sha256": data.manifest_sha256,
        "seed": spec.seed,
        "order": spec.order,
        "batch_size": spec.batch_size,
        "block_size": spec.block_size,
        "micro_batches_per_step": accumulation,
        # batch/1's formulas in its first, positional form (the spec's fields in that order), as
        # runs before BatchSpec recorded them
        "train_batch": "micro-batch m of step s = batch(data, 'train', seed, s * "
        "micro_batches_per_step + m, batch_size, block_size, order)",
        "eval_batches": "batch(data, split, seed, k, batch_size, block_size, 'random', "
        "stream='eval') for k < train.eval_iters, the same at every evaluation",
    }


def local_rows(sharding: Any, global_shape: tuple[int, ...], axis: int) -> slice:
    """The rows (along `axis`) that this process's devices hold under `sharding`."""
    n = global_shape[axis]
    spans = {
        (index[axis].start or 0, n if index[axis].stop is None else index[axis].stop)
        for index in sharding.addressable_devices_indices_map(global_shape).values()
    }
    lo, hi = min(s[0] for s in spans), max(s[1] for s in spans)
    covered = np.zeros(n, bool)
    for a, b in spans:
        covered[a:b] = True
    if not covered[lo:hi].all():
        raise ValueError(f"this process's rows along axis {axis} are not contiguous: {spans}")
    return slice(lo, hi)


def device_batch(
    sharding: Any,
    global_shape: tuple[int, ...],
    axis: int,
    load: Callable[[slice], tuple[np.ndarray, ...]],
) -> tuple[Any, ...]:
    """Global jax.Arrays of global_shape (e.g. inputs and targets), for which this process loads
    only its own rows: load(rows) returns them."""
    import jax

    rows = local_rows(sharding, global_shape, axis)
    return tuple(
        jax.make_array_from_process_local_data(sharding, a, global_shape) for a in load(rows)
    )
