"""In-context tasks scored as CORE scores them (DCLM; nanochat's core_eval is the reference):
the kinds multiple_choice (style "core"), schema and language_modeling. An item's prompts are
its task's few-shot examples and the item, joined by the task's delimiter, tokenized whole with
a BOS token first; the scored span is what differs between its rows (the tokens after the
choices' common prefix, the continuation's common suffix, or what the continuation adds) and
rows longer than the model's window lose tokens from the left. A task's centered accuracy and a
group's CORE are computed here too. docs/evaluation.md has the rules and the decisions.
"""

from __future__ import annotations

import csv
import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nanogptx import config, evaltasks, progress, provenance, spans, tokenizer
from nanogptx.evaltasks import Task
from nanogptx.spans import EvalError, Rows, log

SHUFFLE_SEED = 1337  # the items' order, before eval.max_items cuts it (nanochat's)
FEWSHOT_SEED = 1234  # the examples of item i are drawn with random.Random(FEWSHOT_SEED + i)
# The options of an item, per kind: its fields key, what one is called in messages.
OPTIONS = {"multiple_choice": "choices", "schema": "contexts"}


# ---------------------------------------------------------------- items


def _text(value: Any, where: str, key: str) -> str:
    if not isinstance(value, str):
        raise EvalError(f"{where}: {key}: expected a string, got {value!r}")
    if not config.is_text(value):  # valid JSON ("\\ud800"), but no character
        raise EvalError(
            f"{where}: {key} holds a lone surrogate ({value!r}), which is no character: "
            "expected Unicode text"
        )
    return value


def check_item(item: dict[str, Any], task: Task, where: str) -> dict[str, Any]:
    """An item of an in-context task as {"context" or "contexts", "choices" or "continuation",
    "label" (not language_modeling), "where"}, read through the task's fields; a key missing or
    of the wrong type, or an empty continuation, is an EvalError naming file, line and key."""
    f = task.options["fields"]
    spans.need_keys(item, f, task.label, where)
    out: dict[str, Any] = {"where": where}
    if many := OPTIONS.get(task.kind):
        n, options = task.options["choices"], item[f[many]]
        if not (isinstance(options, list) and 2 <= len(options) <= n):
            raise EvalError(
                f"{where}: {f[many]}: expected a list of 2 to {n} strings (choices = {n} in "
                f"{evaltasks.entry_file(task.name)}), got {options!r}"
            )
        out[many] = [_text(o, where, f"{f[many]}[{i}]") for i, o in enumerate(options)]
        if task.kind == "multiple_choice" and "" in out[many]:
            raise EvalError(f"{where}: {f[many]}[{out[many].index('')}] is empty: it is scored")
        first = {}
        for i, o in enumerate(out[many]):  # equal options: nothing tells them apart
            if (j := first.setdefault(o, i)) != i:
                raise EvalError(
                    f"{where}: {f[many]}[{j}] and {f[many]}[{i}] are the same text ({o!r}): "
                    "expected options that differ"
                )
        label = item[f["label"]]
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(options):
            raise EvalError(
                f"{where}: {f['label']}: expected 0 to {len(options) - 1}, got {label!r}"
            )
        out["label"] = label
    for key in ("context", "continuation"):
        if key in f:
            out[key] = _text(item[f[key]], where, f[key])
    if out.get("continuation") == "":
        raise EvalError(f"{where}: {f['continuation']} is empty: it is what is scored")
    return out


def order(items: list[dict[str, Any]], max_items: int) -> list[dict[str, Any]]:
    """The items shuffled with random.Random(SHUFFLE_SEED) (nanochat's), the first max_items
    (0: all): a cut is a fixed random subset, the same for every model."""
    items = list(items)
    random.Random(SHUFFLE_SEED).shuffle(items)
    return items[:max_items] if max_items else items


class Others(Sequence):
    """The indices 0 .. n - 1 but i, in order, without a list of them (n lists of n - 1 would be
    10^8 entries for HellaSwag): what random.sample draws from, index for index."""

    def __init__(self, n: int, i: int) -> None:
        self.n, self.i = n, i

    def __len__(self) -> int:
        return self.n - 1

    def __getitem__(self, k: Any) -> Any:
        if isinstance(k, slice):
            return [self[j] for j in range(*k.indices(len(self)))]
        if not -len(self) <= k < len(self):
            raise IndexError(k)
        k %= len(self)
        return k if k < self.i else k + 1


def shots_of(i: int, n: int, shots: int) -> list[int]:
    """The few-shot examples of item i of n: shots others, drawn with Random(FEWSHOT_SEED + i)
    from the list of the other indices (nanochat's draw)."""
    return random.Random(FEWSHOT_SEED + i).sample(Others(n, i), shots) if shots else []


# ---------------------------------------------------------------- prompts and spans


def example(kind: str, item: dict[str, Any], delimiter: str) -> str:
    """A few-shot example: its context, the delimiter and its right answer, a blank line."""
    if kind == "multiple_choice":
        return f"{item['context']}{delimiter}{item['choices'][item['label']]}\n\n"
    if kind == "schema":
        return f"{item['contexts'][item['label']]}{delimiter}{item['continuation']}\n\n"
    return f"{item['context'].strip()}{delimiter}{item['continuation']}\n\n"


def prompts(kind: str, item: dict[str, Any], shots: list[dict], delimiter: str) -> list[str]:
    """The texts of an item's rows: one per choice or per context; language_modeling: the
    prompt without its continuation (stripped) and with it."""
    head = "".join(example(kind, x, delimiter) for x in shots)
    if kind == "multiple_choice":
        return [f"{head}{item['context']}{delimiter}{c}" for c in item["choices"]]
    if kind == "schema":
        return [f"{head}{c}{delimiter}{item['continuation']}" for c in item["contexts"]]
    without = f"{head}{item['context'].strip()}{delimiter}"
    return [without.strip(), without + item["continuation"]]


def common(rows: list[list[int]], reverse: bool = False) -> int:
    """How many tokens all rows share at their start (at their end with reverse)."""
    n = min(len(r) for r in rows)
    for i in range(n):
        at = -1 - i if reverse else i
        if any(r[at] != rows[0][at] for r in rows):
            return i
    return n


def spans_of(kind: str, rows: list[list[int]], where: str) -> Rows | None:
    """Each row with where its scored span starts: after the choices' common prefix
    (multiple_choice), the contexts' common suffix (schema), what the continuation adds
    (language_modeling: the second row). None where a span is empty (a choice whose tokens all
    others share, a continuation that adds none) or the first row is not the second's prefix:
    counted wrong unscored, where nanochat scores a nan or stops. A span without a token before
    it is an EvalError naming the item."""
    if kind == "multiple_choice":
        out = [(r, common(rows)) for r in rows]
    elif kind == "schema":
        k = common(rows, reverse=True)
        out = [(r, len(r) - k) for r in rows]
    else:
        without, with_ = rows
        if with_[: len(without)] != without:
            return None
        out = [(with_, len(without))]
    for i, (row, start) in enumerate(out):
        if start >= len(row):
            return None
        if start < 1:
            raise EvalError(
                f"{where}: no token before the scored span of row {i} (options that are "
                "equal, or without bos = true nothing to predict its first token from)"
            )
    return out


def cut(rows: Rows, L: int) -> tuple[Rows, bool]:
    """rows with the tokens past the model's window dropped from the left (it holds block_size
    + 1 tokens: block_size inputs, the last a target only), each span shifted with them; and
    whether every span kept a token before it (else the item is counted wrong)."""
    out = []
    for row, start in rows:
        drop = max(0, len(row) - (L + 1))
        out.append((row[drop:], start - drop))
    return out, all(start >= 1 for _, start in out)


# ---------------------------------------------------------------- baselines and CORE


def _number(value: str | None) -> float | str | None:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return value


def baseline(task: Task, root: Path) -> float:
    """The task's random baseline in percent: its file's, checked against the dataset's
    eval_meta_data.csv (task key baselines, its row "Eval Task" = the task's label)."""
    o = task.options
    if not o["baselines"]:
        return float(o["baseline"])
    path = root / o["baselines"]
    try:  # utf-8-sig: a file saved by a spreadsheet starts with a byte order mark
        with open(path, encoding="utf-8-sig", newline="") as f:
            values = [
                row.get("Random baseline")
                for row in csv.DictReader(f)
                if row.get("Eval Task") == task.label
            ]
    except FileNotFoundError:
        raise EvalError(f"{path} does not exist: download dataset {o['dataset']} first") from None
    except (UnicodeDecodeError, csv.Error) as e:
        raise EvalError(f"{path}: not a CSV file of baselines: {e}") from None
    if len({_number(v) for v in values}) > 1:  # which would hold: an accident of order
        raise EvalError(
            f"{path}: {task.label!r} has {len(values)} rows ({', '.join(map(str, values))}): "
            "expected one, or rows that agree"
        )
    value = values[0] if values else None
    percent = _number(value)
    # not finite: nan would pass every comparison below (CORE nan)
    if not (isinstance(percent, float) and math.isfinite(percent)):
        raise EvalError(
            f"{path}: no random baseline for {task.label!r} (expected a row with "
            f"'Eval Task' = {task.label!r} and a number in 'Random baseline', got {value!r})"
        )
    if abs(percent - o["baseline"]) > 1e-9:
        raise EvalError(
            f"{task.name}: baseline = {o['baseline']} in {evaltasks.entry_file(task.name)}, but "
            f"{path} gives {percent} for {task.label}: correct the task file"
        )
    return percent


def centered(acc: float, percent: float) -> float:
    """Accuracy above random guessing, as a share of the way to 1: (acc - b) / (1 - b)."""
    b = percent / 100
    return (acc - b) / (1 - b)


def aggregate(group: Task, results: dict[str, Any]) -> dict[str, Any]:
    """A group's figure: the mean centered accuracy of its tasks, under "core" when every one
    scored all its items, else under "core_partial" with cut = true (never called CORE)."""
    ran = [results[t] for t in group.options["tasks"]]
    mean = sum(r["centered"] for r in ran) / len(ran)
    complete = all(r["all_items"] for r in ran)
    return {
        "core" if complete else "core_partial": mean,
        "cut": not complete,
        "tasks": len(ran),
        "items": sum(r["items"] for r in ran),
        "method": (
            "the mean over its tasks of the centered accuracy (acc - b) / (1 - b), b the "
            "task's random baseline (DCLM's CORE)"
            + ("" if complete else "; eval.max_items cut the tasks short: not CORE")
        ),
    }


def aggregate_summary(name: str, r: dict[str, Any]) -> str:
    if not r["cut"]:
        return f"{name}: CORE {r['core']:.4f} over {r['tasks']} tasks, {r['items']:,} items"
    return (
        f"{name}: cut CORE {r['core_partial']:.4f} over {r['tasks']} tasks, only "
        f"{r['items']:,} items (eval.max_items): not CORE"
    )


# ---------------------------------------------------------------- the scorer


class InContext:
    """The scorer of an in-context task: its items read, checked, ordered, rendered and
    tokenized when it is loaded (a bad one stops the stage before any work); multiple_choice
    and schema pick the row of lowest mean loss over its span (ties: the first), and
    language_modeling is right where greedy decoding gives every span token."""

    def __init__(self, task: Task, s: Any) -> None:
        self.task, self.s, o = task, s, task.options
        self.greedy = task.kind == "language_modeling"
        root = s.datasets[o["dataset"]]
        self.path, self.csv = root / o["file"], root / o["baselines"] if o["baselines"] else None
        self.baseline = baseline(task, root)
        every = spans.read_items(self.path, task, lambda it, where: check_item(it, task, where))
        self.total, self.items = len(every), order(every, s.e.max_items)
        if o["shots"] >= len(self.items):
            short = f"{self.path} has {self.total}" if o["shots"] >= self.total else (
                f"{len(self.items)} are scored (eval.max_items)"
            )  # fmt: skip
            raise EvalError(
                f"{task.name}: {o['shots']} few-shot examples per item need at least "
                f"{o['shots'] + 1} items, {short}"
            )
        self.bos = [] if not o["bos"] else [s.tok.eot_token]
        if o["bos"] and s.tok.eot_token is None:
            raise EvalError(
                f"{task.name}: bos = true in {evaltasks.entry_file(task.name)}, but the "
                f"model's tokenizer ({s.tok.name}) has no BOS token"
            )
        rendered = [self.render(i) for i in range(len(self.items))]
        self.rows: list[Rows | None] = [rows for rows, _ in rendered]
        self.cropped = sum(cropped for _, cropped in rendered)

    def render(self, i: int) -> tuple[Rows | None, bool]:
        """Item i's rows cut to the window (None where it is counted wrong unscored), and
        whether they were cut."""
        o, item, tok = self.task.options, self.items[i], self.s.tok
        shots = [self.items[j] for j in shots_of(i, len(self.items), o["shots"])]
        texts = prompts(self.task.kind, item, shots, o["delimiter"])
        try:
            tokens = [self.bos + tok.encode(t) for t in texts]
        except tokenizer.TokenizerError as err:
            raise EvalError(
                f"{item['where']}: the model's tokenizer ({tok.name}) cannot encode it: {err}"
            ) from None
        rows = spans_of(self.task.kind, tokens, item["where"])
        L = self.s.m.block_size
        if rows is None:
            return None, False
        cropped = max(len(r) for r, _ in rows) > L + 1
        rows, fits = cut(rows, L)
        # int32 arrays: 22 tasks' few-shot rows as Python ints would take gigabytes
        return ([(np.asarray(r, np.int32), at) for r, at in rows] if fits else None), cropped

    @property
    def inputs(self) -> list[dict[str, Any]]:
        return [provenance.file_entry(p) for p in (self.path, self.csv) if p is not None]

    def method(self) -> str:
        o, k = self.task.options, self.task.kind
        rule = (
            "right only if greedy decoding gives every token of the continuation"
            if self.greedy
            else "the "
            + ("choice" if k == "multiple_choice" else "context")
            + " of lowest mean loss over the scored tokens wins (ties: the first)"
        )
        return (
            f"in-context, as CORE (DCLM, nanochat's core_eval): items shuffled with seed "
            f"{SHUFFLE_SEED}, {o['shots']} few-shot examples each (seed {FEWSHOT_SEED} + "
            f"index), delimiter {o['delimiter']!r}, {'BOS first, ' if o['bos'] else ''}rows "
            f"cut from the left to block_size + 1 tokens; {rule}; centered = (acc - b) / "
            f"(1 - b), b = {self.baseline:g}%"
        )

    def right(self, item: dict[str, Any], got: np.ndarray) -> bool:
        """Whether an item's rows' outputs (nll sum, tokens[, greedy hits]) make it right."""
        if self.greedy:
            return bool(got[0, 2] == got[0, 1])
        return int(np.argmin(got[:, 0] / got[:, 1])) == item["label"]

    def score(self, params: Any, scorer: Any, channel: progress.Channel | None) -> dict[str, Any]:
        o, name = self.task.options, self.task.name
        scored = [i for i, rows in enumerate(self.rows) if rows is not None]
        meter = progress.Meter(f"{name} items", len(scored), channel)
        capacity = self.s.e.batch_size * (o.get("choices", 0) or 1)
        rows = [self.rows[i] for i in scored]
        L = self.s.m.block_size
        out, groups = spans.score_rows(rows, capacity, L, params, scorer, meter)  # type: ignore[arg-type]
        right = np.zeros(len(self.items), bool)
        for i, got in zip(scored, out, strict=True):
            right[i] = self.right(self.items[i], got)
        acc, rate = float(right.mean()), meter.rate()
        log(f"{name}: {progress.plural(len(scored), 'item')} at {rate:,.1f} items/s")
        declared = o["items"] or self.total
        return {
            "acc": acc,
            "centered": centered(acc, self.baseline),
            "items": len(self.items),
            "shots": o["shots"],
            "all_items": len(self.items) == self.total == declared,
            "baseline": self.baseline,
            "unscored_items": len(self.items) - len(scored),  # counted wrong: see method
            "cropped_items": self.cropped,
            "items_per_second": rate,
            "buckets": groups,
            "method": self.method(),
        }

    def summary(self, r: dict[str, Any]) -> str:
        notes = [f"{r['shots']}-shot"]
        if r["cropped_items"]:
            notes.append(f"{r['cropped_items']:,} cut from the left to fit model.block_size")
        if r["unscored_items"]:
            notes.append(
                f"{r['unscored_items']:,} counted wrong unscored (a span longer than "
                f"model.block_size = {self.s.m.block_size}, or a continuation that changes "
                "the tokens of its prompt)"
            )
        return (
            f"{self.task.name}: acc {r['acc']:.4f}, centered {r['centered']:.4f} over "
            f"{progress.plural(r['items'], 'item')} ({', '.join(notes)})"
        )
