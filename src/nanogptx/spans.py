"""Rows of token ids scored over a span at their end (a choice, a continuation), for the eval
stage's scorers: the errors of its inputs, reading a jsonl file of items, and the batching of
rows by padded length bucket through a scorer (nanogptx.eval.make_scorer).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from nanogptx import progress
from nanogptx.errors import UserError

BUCKET = 32  # rows are padded up to a multiple of this (one compiled shape each)


class EvalError(UserError, RuntimeError):
    """An expected failure: a missing input, a malformed item, a task the model's tokenizer
    cannot serve."""


def log(msg: str) -> None:
    print(msg, flush=True)


def read_line(raw: bytes, where: str) -> dict[str, Any] | None:
    """One line of a jsonl file of items as a JSON object (None: a blank line)."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise EvalError(f"{where}: not UTF-8 text (byte {err.start} of the line)") from None
    if not line.strip():
        return None
    try:
        item = json.loads(line)
    except json.JSONDecodeError as err:
        raise EvalError(f"{where}: not a JSON object: {err}") from None
    if not isinstance(item, dict):
        raise EvalError(f"{where}: expected a JSON object, got {type(item).__name__}")
    return item


def need_keys(item: dict[str, Any], fields: dict[str, str], label: str, where: str) -> None:
    """Every key the task's fields name is in the item, else an EvalError naming them all."""
    for key in fields.values():
        if key not in item:
            keys = list(fields.values())
            raise EvalError(
                f"{where}: key {key!r} is missing (a {label} item has "
                f"{', '.join(keys[:-1])} and {keys[-1]})"
            )


def read_items(
    path: Path, task: Any, check: Callable[[dict, str], dict], max_items: int = 0
) -> list[dict[str, Any]]:
    """The items of a task's jsonl file (the first max_items; 0: all), each check(item, where)ed
    (where: file:line)."""
    items = []
    try:
        f = open(path, "rb")  # noqa: SIM115 (closed below)
    except FileNotFoundError:
        raise EvalError(
            f"{path} does not exist: download dataset {task.options['dataset']} first"
        ) from None
    with f:
        for lineno, raw in enumerate(f, 1):
            if lineno == 1:  # a byte order mark (a Windows editor's save) is no text
                raw = raw.removeprefix(b"\xef\xbb\xbf")
            if (item := read_line(raw, f"{path}:{lineno}")) is not None:
                items.append(check(item, f"{path}:{lineno}"))
            if max_items and len(items) == max_items:
                break
    if not items:
        raise EvalError(f"{path}: no items")
    return items


def buckets(lengths: list[tuple[int, int]], L: int) -> dict[tuple[int, int], list[int]]:
    """Item indices grouped by (row length, ending length), each rounded up to BUCKET (the row
    at most L + 1): one compiled shape per group."""
    out: dict[tuple[int, int], list[int]] = {}
    for i, (n, e) in enumerate(lengths):
        width = min(-(-n // BUCKET) * BUCKET, L + 1)
        out.setdefault((width, min(-(-e // BUCKET) * BUCKET, width - 1)), []).append(i)
    return dict(sorted(out.items()))


def pack(members: list[int], sizes: list[int], capacity: int) -> list[list[int]]:
    """members in order, in chunks of at most capacity rows (an item's rows stay together)."""
    chunks: list[list[int]] = [[]]
    used = 0
    for i, size in zip(members, sizes, strict=True):
        if chunks[-1] and used + size > capacity:
            chunks.append([])
            used = 0
        chunks[-1].append(i)
        used += size
    return chunks


# An item's rows: each row's token ids and where its scored span starts (the span runs to the
# row's end: the choice, the continuation).
Rows = list[tuple[Sequence[int], int]]


def batch_rows(items: list[Rows], capacity: int, width: int, E: int) -> tuple[np.ndarray, ...]:
    """The scorer's arguments for items' rows, one after the other: capacity rows padded to
    width ids and E scored positions (those whose next token is the span's)."""
    ids = np.zeros((capacity, width), np.int32)
    at = np.zeros((capacity, E), np.int32)
    weights = np.zeros((capacity, E), np.float32)
    r = 0
    for rows in items:
        for row, start in rows:
            ids[r, : len(row)] = row
            n = len(row) - start
            at[r, :n] = np.arange(start - 1, len(row) - 1)
            weights[r, :n] = 1.0
            r += 1
    return ids, at, weights


def score_rows(
    items: list[Rows], capacity: int, L: int, params: Any, scorer: Any, meter: progress.Meter
) -> tuple[list[np.ndarray], dict[str, int]]:
    """Every item's rows through the scorer, items grouped by padded length bucket and packed
    capacity rows a call: per item an array of its rows' outputs (nll sum, tokens[, greedy
    hits]), and how many items each bucket (ids x scored positions) held."""
    lengths = [(max(len(r) for r, _ in rows), max(len(r) - s for r, s in rows)) for rows in items]
    groups = buckets(lengths, L)
    out: list[np.ndarray] = [np.zeros(0)] * len(items)
    done = 0
    for (width, E), members in groups.items():
        for chunk in pack(members, [len(items[i]) for i in members], capacity):
            args = batch_rows([items[i] for i in chunk], capacity, width, E)
            got = np.stack(jax.device_get(scorer(params, *args)), axis=1)  # rows x outputs
            r = 0
            for i in chunk:
                out[i], r = got[r : r + len(items[i])], r + len(items[i])
            done += len(chunk)
            meter.update(done)
    meter.close()
    return out, {f"{w}x{e}": len(v) for (w, e), v in groups.items()}
