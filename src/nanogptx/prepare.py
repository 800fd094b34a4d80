"""prepare: raw files -> cleaned documents -> tokenizer -> tokens on threads -> shards + manifest.

    python -m nanogptx.prepare --config config/shakespeare-char.toml \
        --raw data/raw/tinyshakespeare --out data/prepared/<data_id> --threads 4
"""

from __future__ import annotations

import argparse
import bisect
import functools
import itertools
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from nanogptx import config, datasets, progress, provenance, readers, shards, tokenizer
from nanogptx.config import Config, DataConfig
from nanogptx.errors import UserError
from nanogptx.readers import Batch, ReadError
from nanogptx.shards import FORMAT, token_dtype
from nanogptx.tokenizer import Tokenizer

SPLITS = ("train", "val")
CHUNK_CHARS = 1 << 20  # characters of text per tokenization task

T = TypeVar("T")
R = TypeVar("R")


class PrepareError(UserError, ValueError):
    """Input or output that prepare refuses, with what was expected."""


# --- Cleaning: named functions on a batch of documents, applied in the order data.cleaning lists.
# A document read in pieces (readers.Batch) is cleaned as the whole document would be.


def normalize_newlines(b: Batch, dc: DataConfig) -> Batch:
    """\\r\\n and \\r become \\n."""
    b.texts = [t.replace("\r\n", "\n").replace("\r", "\n") if "\r" in t else t for t in b.texts]
    return b


def strip(b: Batch, dc: DataConfig) -> Batch:
    """Whitespace at the start and end of each document goes."""
    texts, n = [t.strip() for t in b.texts], len(b.texts)
    if b.joins_prev and n:  # a piece's inner ends are not the document's ends
        texts[0] = b.texts[0] if n == 1 and b.joins_next else b.texts[0].rstrip()
    if b.joins_next and n:
        texts[-1] = b.texts[-1] if n == 1 and b.joins_prev else b.texts[-1].lstrip()
    b.texts = texts
    return b


def drop_short(b: Batch, dc: DataConfig) -> Batch:
    """Documents shorter than data.min_chars go (one read in pieces is longer than a piece)."""
    m = dc.min_chars
    if not (b.joins_prev or b.joins_next):
        b.texts = [t for t in b.texts if len(t) >= m]
        return b
    keep = [len(t) >= m for t in b.texts]
    if keep:
        keep[0] |= b.joins_prev
        keep[-1] |= b.joins_next
    b.texts = [t for t, k in zip(b.texts, keep, strict=True) if k]
    return b


CLEANING: dict[str, Callable[[Batch, DataConfig], Batch]] = {
    "normalize_newlines": normalize_newlines,
    "strip": strip,
    "drop_short": drop_short,
}


# --- Raw files: checked against what download recorded, then read as batches of documents.


def verify_raw(raw: Path, files: list[Path], threads: int = 1) -> list[dict[str, Any]]:
    """Check each file's sha256 against <raw>/provenance.json; return their file entries."""
    record_path = raw / provenance.FILENAME
    try:
        record = provenance.read(raw)
    except FileNotFoundError:
        raise PrepareError(
            f"{record_path} is missing: run the download stage first "
            f"(python -m nanogptx.download --out {raw})"
        ) from None
    except provenance.FileError as e:
        raise PrepareError(str(e)) from None
    recorded = {Path(str(o.get("path", ""))).name: o for o in record["outputs"]}
    for p in files:
        entry = recorded.get(p.name)
        if not entry or not entry.get("sha256"):
            raise PrepareError(
                f"{p.name}: no sha256 recorded for it in {record_path}; run the download stage "
                "again so that every file is hashed"
            )
        if not p.is_file():
            raise PrepareError(f"{p}: missing (it is listed in {record_path})")
        size = p.stat().st_size
        if entry.get("bytes") is not None and size != entry["bytes"]:
            raise provenance.HashMismatch(
                f"raw file {p}: {size} bytes, {record_path} recorded {entry['bytes']}"
            )

    def check(p: Path) -> dict[str, Any]:
        entry = recorded[p.name]
        provenance.verify(p, entry["sha256"], "raw file")
        return {**provenance.file_entry(p, entry["sha256"]), "check": entry.get("check")}

    return list(_in_order(check, files, threads))


def documents(
    files: list[Path],
    reader: str,
    dc: DataConfig,
    piece_chars: int = readers.PIECE_CHARS,
    options: tuple[tuple[str, str], ...] = (),
) -> Iterator[tuple[Path, Batch]]:
    """Cleaned batches of documents in file order; data.max_docs documents at most; no empties.
    options: the reader's, from the registry (a parquet column, a jsonl field)."""
    read = functools.partial(readers.TEXT_READERS[reader], **dict(options))
    if reader == "text":
        read = functools.partial(readers.read_text, piece_chars=piece_chars, **dict(options))
    cleaning = [CLEANING[name] for name in dc.cleaning]
    left = dc.max_docs or -1
    for path in files:
        for b in read(path, dc.decode_errors):
            if left >= 0:
                if left == 0 and not b.joins_prev:
                    return
                keep = b.joins_prev + left
                if len(b.texts) > keep:
                    b = Batch(b.texts[:keep], b.joins_prev, False)
                left -= len(b.texts) - b.joins_prev
            for clean in cleaning:
                b = clean(b, dc)
            if not all(b.texts):
                b.texts = [t for t in b.texts if t]
            if b.texts:
                yield path, b


def _check_empty(n: int, files: list[Path], dc: DataConfig) -> None:
    if n == 0:
        raise PrepareError(
            f"the corpus is empty: no text left in {', '.join(str(p) for p in files)} after "
            f"reading and cleaning (data.cleaning = {list(dc.cleaning)}, data.min_chars = "
            f"{dc.min_chars}, data.max_docs = {dc.max_docs})"
        )


# --- Splits. fraction: the corpus text (documents in file order, cleaned) is cut at character
# int(n * (1 - val_fraction)), as nanoGPT cuts its text: what comes before is train, the rest val;
# a document straddling the cut becomes two documents. first_docs: the first val_docs documents
# are val (llm.c keeps FineWeb's first shard for val). files: files named *val* are val.


@dataclass(frozen=True)
class Run:
    """Consecutive texts of one split; texts[0] goes on from the run before when joins_prev."""

    split: str
    texts: list[str]
    joins_prev: bool


def split_runs(
    stream: Iterator[tuple[Path, Batch]], dc: DataConfig, total_chars: int
) -> Iterator[Run]:
    if dc.split == "files":
        for path, b in stream:
            yield Run("val" if "val" in path.name else "train", b.texts, b.joins_prev)
    elif dc.split == "first_docs":
        left, last = dc.val_docs, None
        for _, b in stream:
            k = min(len(b.texts), left + (b.joins_prev and last == "val"))
            left -= k - (b.joins_prev and last == "val" and k > 0)
            if k:
                yield Run("val", b.texts[:k], b.joins_prev)
                last = "val"
            if k < len(b.texts):
                yield Run("train", b.texts[k:], b.joins_prev and k == 0 and last == "train")
                last = "train"
    else:
        cut, pos = int(total_chars * (1 - dc.val_fraction)), 0
        for _, b in stream:
            n = sum(map(len, b.texts))
            if pos + n <= cut:
                yield Run("train", b.texts, b.joins_prev)
            elif pos >= cut:
                yield Run("val", b.texts, b.joins_prev and pos > cut)
            else:
                ends = list(itertools.accumulate(map(len, b.texts)))
                i = bisect.bisect_left(ends, cut - pos)
                k = cut - pos - (ends[i] - len(b.texts[i]))  # characters of texts[i] for train
                head, tail = b.texts[i][:k], b.texts[i][k:]
                yield Run("train", b.texts[:i] + [head], b.joins_prev)
                yield Run("val", ([tail] if tail else []) + b.texts[i + 1 :], False)
            pos += n


def chunks(runs: Iterable[Run], chunk_chars: int) -> Iterator[Run]:
    """Runs regrouped into tasks of about chunk_chars characters, never mixing splits; pieces of
    one document that meet in a task are joined."""
    split, texts, joins, size = "", [], False, 0
    for run in runs:
        s, ts, j = run.split, run.texts, run.joins_prev
        if not ts:
            continue
        if texts and s != split:
            yield Run(split, texts, joins)
            texts, size = [], 0
        if not texts:
            split, joins = s, j
        elif j:
            size += len(ts[0])
            texts[-1] += ts[0]
            ts = ts[1:]
        ends = np.cumsum(np.fromiter(map(len, ts), np.int64, len(ts)))
        start, base = 0, 0
        while start < len(ts):
            if size >= chunk_chars:
                yield Run(split, texts, joins)
                texts, size, joins = [], 0, False
            end = int(np.searchsorted(ends, base + chunk_chars - size)) + 1
            texts += ts[start:end]
            size += int(ends[min(end, len(ts)) - 1]) - base
            base, start = int(ends[min(end, len(ts)) - 1]), end
        if size >= chunk_chars:
            yield Run(split, texts, joins)
            texts, size, joins = [], 0, False
    if texts:
        yield Run(split, texts, joins)


# --- Tokenizing on threads: tiktoken's Rust encoder releases the GIL while it works, and each
# task is one call on about a megabyte of text, so per-document Python work stays small.


def _in_order(fn: Callable[[T], R], items: Iterable[T], threads: int) -> Iterator[R]:
    """map(fn, items) on `threads` threads, results in input order, at most 2 * threads ahead."""
    if threads <= 1:
        yield from map(fn, items)
        return
    window: deque = deque()
    with ThreadPoolExecutor(threads, thread_name_prefix="prepare") as pool:
        try:
            for item in items:
                window.append(pool.submit(fn, item))
                if len(window) >= 2 * threads:
                    yield window.popleft().result()
            while window:
                yield window.popleft().result()
        finally:
            for f in window:
                f.cancel()


@dataclass(frozen=True)
class Encoded:
    """Tokens of consecutive rows of one split (a row: a document, or a piece of one)."""

    split: str
    tokens: np.ndarray
    lengths: np.ndarray  # tokens of each row
    documents: int  # documents that start here


def _encoder(tok: Tokenizer, dtype: np.dtype) -> Callable[[Run], Encoded]:
    def encode(run: Run) -> Encoded:
        tokens, lengths = tok.encode_documents(run.texts, run.joins_prev)
        documents = len(run.texts) - run.joins_prev
        return Encoded(run.split, tokens.astype(dtype, copy=False), lengths, documents)

    return encode


# --- llm.c .bin shards: already GPT-2 tokens; a document starts at each end-of-text token.


def bin_runs(files: list[Path], dc: DataConfig, eot: int, vocab: int) -> Iterator[Encoded]:
    counts = [readers.bin_tokens(p) for p in files]
    # split = fraction cuts at a token position of all the files' tokens (before data.max_docs)
    cut = int(sum(counts) * (1 - dc.val_fraction))
    pos, docs, full = 0, 0, False
    for path in files:
        for at_file, tokens in _positions(readers.read_bin(path)):
            if len(tokens) and int(tokens.max()) >= vocab:
                i = int(np.argmax(tokens >= vocab))
                raise ReadError(
                    f"{path}: token {at_file + i} is {tokens[i]}, outside GPT-2's vocabulary "
                    f"({vocab})"
                )
            starts = np.flatnonzero(tokens == eot)
            if dc.max_docs and docs + len(starts) > dc.max_docs:  # stop before the next document
                tokens, starts = tokens[: starts[dc.max_docs - docs]], starts[: dc.max_docs - docs]
                full = True
            if dc.split == "files":
                parts = [("val" if "val" in path.name else "train", 0, len(tokens))]
            else:
                if dc.split == "fraction":
                    at = min(max(cut - pos, 0), len(tokens))
                else:
                    i = dc.val_docs - docs
                    at = 0 if i < 0 else int(starts[i]) if i < len(starts) else len(tokens)
                parts = [("val" if dc.split == "first_docs" else "train", 0, at)]
                parts.append(("train" if dc.split == "first_docs" else "val", at, len(tokens)))
            for split, lo, hi in parts:
                if hi > lo:
                    inner = starts[(starts >= lo) & (starts < hi)] - lo
                    bounds = np.unique(np.concatenate([[0], inner, [hi - lo]]))
                    yield Encoded(split, tokens[lo:hi], np.diff(bounds), len(inner))
            pos, docs = pos + len(tokens), docs + len(starts)
            if full:
                return


def _positions(arrays: Iterable[np.ndarray]) -> Iterator[tuple[int, np.ndarray]]:
    pos = 0
    for a in arrays:
        yield pos, a
        pos += len(a)


# --- The stage, in phases: check, verify the raw files, the tokenizer, write the shards, and the
# manifest and provenance. out is cleared of an earlier run's outputs first.


def prepare(
    cfg: Config,
    raw: str | Path,
    out: str | Path,
    threads: int = 1,
    *,
    dataset: datasets.Dataset | None = None,
    chunk_chars: int = CHUNK_CHARS,
    piece_chars: int = readers.PIECE_CHARS,
    channel: progress.Channel | None = None,
) -> dict[str, Any]:
    """Tokenize the raw files of cfg.data.dataset (or of `dataset`) from raw into shards in out;
    return the manifest. chunk_chars and piece_chars tune task and text-piece sizes (tests).
    out is held for the while: a second prepare into it is refused, and an interrupted one's
    temporary files are removed first."""
    with provenance.exclusive(out, "prepare", inputs=[("--raw", raw)], stage="prepare") as removed:
        if removed:
            _say(f"removed what an interrupted run left in {out}: {len(removed)} temporary files")
        raw, out = Path(raw), Path(out)
        ds = dataset or datasets.get(cfg.data.dataset)
        return _prepare(cfg, ds, raw, out, threads, chunk_chars, piece_chars, channel)


def _prepare(
    cfg: Config,
    ds: datasets.Dataset,
    raw: Path,
    out: Path,
    threads: int,
    chunk_chars: int,
    piece_chars: int,
    channel: progress.Channel | None,
) -> dict[str, Any]:
    dc = cfg.data
    files = [raw / f.name for f in ds.files]
    rec = provenance.Record.start("prepare", config.sections(cfg, config.STAGE_SECTIONS["prepare"]))
    _check_settings(cfg, ds, files)
    _clear_out(out)
    started = time.perf_counter()
    inputs = verify_raw(raw, files, threads)
    docs = functools.partial(documents, files, ds.reader, dc, piece_chars, ds.options)
    tok, total_chars = tokenizer_step(cfg, ds.reader, docs, files)
    dtype = token_dtype(tok.vocab_size)
    encoded: Iterable[Encoded]
    if ds.reader == "bin":
        encoded = bin_runs(files, dc, tok.eot_token, tok.vocab_size)
    else:
        runs = split_runs(docs(), dc, total_chars)
        encoded = _in_order(_encoder(tok, dtype), chunks(runs, chunk_chars), threads)
    writers = {s: shards.Writer(out, s, dc.shard_format, dtype, dc.shard_tokens) for s in SPLITS}
    entries = write_shards(encoded, writers, files, dc, channel, started)
    sources = [{"name": p.name, "sha256": e["sha256"]} for p, e in zip(files, inputs, strict=True)]
    manifest = _manifest(ds.name, dc, tok, dtype, sources, writers)
    provenance.write_json_atomic(out / "manifest.json", manifest)
    outputs = [provenance.file_entry(out / e["file"], e["sha256"]) for e in entries]
    rec.finish(
        out,
        inputs=inputs,
        outputs=[*outputs, provenance.file_entry(out / "manifest.json")],
        extra={
            "threads": threads,
            "splits": manifest["splits"],
            "tokenizer": {k: v for k, v in manifest["tokenizer"].items() if k != "chars"},
        },
    )
    _summary(manifest, tok, threads, out, time.perf_counter() - started)
    return manifest


def _check_settings(cfg: Config, ds: datasets.Dataset, files: list[Path]) -> None:
    """Settings that cannot work with this dataset, refused before any file is read."""
    if ds.reader == "bin" and cfg.tokenizer.name != "gpt2":
        raise PrepareError(
            f"dataset {ds.name} holds GPT-2 tokens (.bin shards): tokenizer.name must be gpt2, "
            f"not {cfg.tokenizer.name!r}"
        )
    if cfg.data.split == "files" and len({"val" in p.name for p in files}) < 2:
        raise PrepareError(
            f"data.split = files needs files named *val* and others: {[p.name for p in files]}"
        )


def _clear_out(out: Path) -> None:
    """Remove what an earlier run of prepare finished in out (shards, manifest, provenance)."""
    for p in out.iterdir():
        if shards.NAME.fullmatch(p.name) or p.name in ("manifest.json", provenance.FILENAME):
            p.unlink()


def tokenizer_step(
    cfg: Config, reader: str, docs: Callable[[], Iterator[tuple[Path, Batch]]], files: list[Path]
) -> tuple[Tokenizer, int]:
    """The run's tokenizer: learned in one pass over the cleaned corpus (char: its characters;
    see tokenizer.LEARNERS), or ready-made (gpt2); and the corpus' characters, counted in that
    pass, or in a pass of their own for data.split = fraction (0 when no pass is made)."""
    name, dc = cfg.tokenizer.name, cfg.data
    learner = tokenizer.LEARNERS[name]() if name in tokenizer.LEARNERS else None
    total_chars = 0
    if reader != "bin" and (learner is not None or dc.split == "fraction"):
        for _, b in docs():
            total_chars += sum(map(len, b.texts))
            if learner is not None:
                learner.add(b.texts)
        _check_empty(total_chars, files, dc)
    return (learner.tokenizer() if learner else tokenizer.READY[name]()), total_chars


def write_shards(
    encoded: Iterable[Encoded],
    writers: dict[str, shards.Writer],
    files: list[Path],
    dc: DataConfig,
    channel: progress.Channel | None,
    started: float,
) -> list[dict[str, Any]]:
    """Each encoded run into its split's shards; the shards' manifest entries. On an error or an
    interrupt the shards written so far are removed."""
    try:
        _write(encoded, writers, channel, started)
        entries = [e for s in SPLITS for e in writers[s].finish()]
        _check_empty(sum(w.tokens for w in writers.values()), files, dc)
        for s in SPLITS:
            if writers[s].tokens == 0:
                raise PrepareError(
                    f"split {s!r} is empty (data.split = {dc.split}, val_fraction = "
                    f"{dc.val_fraction}, val_docs = {dc.val_docs}): it needs at least one token"
                )
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    return entries


def _write(
    encoded: Iterable[Encoded],
    writers: dict[str, shards.Writer],
    channel: progress.Channel | None,
    started: float,
) -> None:
    n_docs = 0
    # A tqdm bar on a terminal, else a line in the log every 10 s; through the channel too.
    with progress.Meter(
        "prepare",
        None,
        channel,
        10.0,
        unit="tok",
        scale=True,
        log=_say,
        text=lambda m: rate_line(writers, n_docs, started),
    ) as meter:
        for e in encoded:
            writers[e.split].add(e.tokens, e.lengths, e.documents)
            n_docs += e.documents
            meter.add(len(e.tokens), progress.plural(n_docs, "document"))
        meter.close(f"{rate_line(writers, n_docs, started)}; writing the manifest")


def rate_line(writers: dict[str, shards.Writer], n_docs: int, started: float) -> str:
    done = sum(w.tokens for w in writers.values())
    seconds = time.perf_counter() - started
    return (
        f"{progress.plural(done, 'token')}, {progress.plural(n_docs, 'document')}, "
        f"{done / seconds:,.0f} tokens/s"
    )


def _manifest(
    dataset: str,
    dc: DataConfig,
    tok: Tokenizer,
    dtype: np.dtype,
    sources: list[dict[str, str]],
    writers: dict[str, shards.Writer],
) -> dict[str, Any]:
    splits = {
        s: {"tokens": w.tokens, "documents": w.documents, "shards": len(w.entries)}
        for s, w in writers.items()
    }
    return {
        "format": FORMAT,
        "dataset": dataset,
        "data_config": config.to_dict(dc),
        "tokenizer": tok.identity(),
        "sources": sources,
        "shard_format": dc.shard_format,
        "dtype": dtype.name,
        "splits": splits,
        "shards": [e for s in SPLITS for e in writers[s].entries],
    }


def _say(msg: str) -> None:
    print(f"prepare: {msg}", file=sys.stderr, flush=True)


def _summary(
    manifest: dict[str, Any], tok: Tokenizer, threads: int, out: Path, seconds: float
) -> None:
    for s, info in manifest["splits"].items():
        _say(
            f"{s}: {progress.plural(info['tokens'], 'token')}, "
            f"{progress.plural(info['documents'], 'document')}, "
            f"{progress.plural(info['shards'], 'shard')}"
        )
    _say(
        f"{tok.name} vocabulary of {tok.vocab_size:,}; {seconds:.1f} s, "
        f"{progress.plural(threads, 'thread')} -> {out}"
    )


def default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m nanogptx.prepare",
        description="Tokenize a downloaded dataset into shards, manifest.json and provenance.json.",
    )
    config.add_arguments(parser, config.STAGE_SECTIONS["prepare"])
    parser.add_argument(
        "--raw",
        type=Path,
        required=True,
        help="downloaded files and their provenance.json (data/raw/<dataset>)",
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="output directory (data/prepared/<data_id>)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=default_threads(),
        help="tokenizer threads (default: the CPUs this process may use)",
    )
    progress.add_arguments(parser, "prepare")
    args = parser.parse_intermixed_args(argv)
    cfg = config.from_args(args, parser)
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    try:
        prepare(cfg, args.raw, args.out, args.threads, channel=progress.from_args(args))
    except (UserError, OSError) as e:
        parser.exit(1, f"{parser.prog}: error: {e}\n")


if __name__ == "__main__":
    main()
