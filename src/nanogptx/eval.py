"""Evaluate a trained model on its eval.tasks (nanogptx.evaltasks), one scorer per kind of task.

    python -m nanogptx.eval --config config/RUN.toml --model results/RUN/model \
        [--data data/prepared/ID] [--dataset hellaswag=data/raw/hellaswag] --out results/RUN/eval
Writes <out>/metrics.json (each task's figures and method, a group's CORE) and provenance.json.
CORE's in-context kinds are nanogptx.icl's; the batching of rows, nanogptx.spans's.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from nanogptx import (
    checkpoint,
    config,
    evaltasks,
    icl,
    loader,
    model,
    progress,
    provenance,
    runtime,
    spans,
    tokenizer,
)
from nanogptx.config import Config, EvalConfig, ModelConfig
from nanogptx.errors import UserError
from nanogptx.evaltasks import Task
from nanogptx.spans import EvalError, log


def make_scorer(m: ModelConfig, rt: runtime.Runtime, greedy: bool = False) -> Any:
    """jit of (params, ids_BxL, at_BxE, weights_BxE) -> per row (sum of weight * nll, sum of
    weights): the nll of token at + 1 after tokens ..at, for the E positions `at` of each row
    (weight 0: not scored). The head (a V-wide matmul and softmax) runs at those positions only
    (for HellaSwag the endings, a fraction of each row), over chunks of them. With greedy, a
    third output: the weighted count of positions whose likeliest next token is the target."""

    def score(params: Any, ids_BxL: jax.Array, at_BxE: jax.Array, w_BxE: jax.Array) -> tuple:
        x_BxLxD, _ = model.trunk(params, ids_BxL[:, :-1], m, rt=rt)  # the last: a target only
        x_BxExD = jnp.take_along_axis(x_BxLxD, at_BxE[..., None], axis=1)
        target_BxE = jnp.take_along_axis(ids_BxL, at_BxE + 1, axis=1)
        nll_BxE = model.token_nll(params, x_BxExD, target_BxE, m, rt)
        out = (nll_BxE * w_BxE).sum(axis=1), w_BxE.sum(axis=1)
        if not greedy:
            return out
        best_BxE = model.head(params, x_BxExD, m, rt).argmax(axis=-1)  # ties: the first
        return *out, ((best_BxE == target_BxE) * w_BxE).sum(axis=1)

    return jax.jit(score)


def on_devices(scorer: Any, devices: list[Any]) -> tuple[Any, Any]:
    """scorer with its rows split over devices (one mesh axis "data", as training's; the
    parameters replicated), and the placement of the parameters. Rows are padded to a multiple
    of the devices with zeros (weight 0) and the outputs cut back."""
    mesh = Mesh(np.array(devices), ("data",))
    rows, n = NamedSharding(mesh, P("data")), len(devices)

    def call(params: Any, *arrays: np.ndarray) -> tuple:
        B = arrays[0].shape[0]
        pad = -B % n
        placed = [jax.device_put(np.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1)), rows)
                  for a in arrays]  # fmt: skip
        return tuple(out[:B] for out in jax.device_get(scorer(params, *placed)))

    return call, NamedSharding(mesh, P())


def rows_per_item(task: Task) -> int:
    """The rows an item of task scores: one per choice or context, else one."""
    return task.options.get("choices", 0) or 1


def scorer_shapes(task: str, m: ModelConfig, e: EvalConfig) -> dict[str, tuple[int, int, int]]:
    """The largest (rows, ids per row, scored positions per row) each scorer is called with for
    a task (a group: any of its members), for nanogptx.plan: under "loss" the scorer of every
    kind but language_modeling, under "greedy" language_modeling's (make_scorer's greedy), each
    only where the task's kinds use it. Rows: eval.batch_size items of their kind's rows each (a
    window of split_loss, a row per choice or context); the longest bucket any item can meet
    (block_size + 1 ids, block_size scored)."""
    members = [evaltasks.get(t) for t in evaltasks.expand([task])]
    out = {}
    for scorer, greedy in (("loss", False), ("greedy", True)):
        rows = [rows_per_item(t) for t in members if (t.kind == "language_modeling") == greedy]
        if rows:
            out[scorer] = (e.batch_size * max(rows), m.block_size + 1, m.block_size)
    return out


@dataclass(frozen=True)
class Setting:
    """What a task is loaded against: the run's [eval] section, the model and the stage's
    inputs (--data: the prepared data; --dataset NAME=DIR: registry datasets)."""

    e: EvalConfig
    m: ModelConfig
    tok: Any
    tok_dict: dict[str, Any]
    model_dir: Path
    data_dir: Path | None
    datasets: dict[str, Path]


# ---------------------------------------------------------------- split_loss


class SplitLoss:
    """Loss and bits per byte over a whole split of the run's prepared data, tiled into windows
    of block_size targets (window w predicts tokens w L + 1 .. w L + L from those before it)."""

    def __init__(self, task: Task, s: Setting) -> None:
        self.task, self.s = task, s
        self.data = loader.open_prepared(s.data_dir)
        if self.data.manifest["tokenizer"].get("vocab_sha256") != s.tok_dict.get("vocab_sha256"):
            raise EvalError(
                f"{self.data.dir}: tokenized with another vocabulary than the "
                f"model's ({s.model_dir / 'tokenizer.json'})"
            )
        self.inputs = [
            provenance.file_entry(self.data.dir / "manifest.json", self.data.manifest_sha256)
        ]

    def method(self) -> str:
        split = self.task.options["split"]
        return (
            f"mean next-token cross-entropy over the whole {split} split tiled into windows "
            "of block_size targets (window w predicts tokens w*L+1 .. w*L+L, each from the "
            "tokens before it in the window); bits per byte = summed nats / ln 2 / UTF-8 "
            "bytes of the targets"
        )

    def windows(self, stream: loader.TokenStream) -> int:
        L, e = self.s.m.block_size, self.s.e
        n = (stream.n_tokens - 1) // L
        if n == 0:
            raise EvalError(
                f"{self.data.dir}: the {self.task.options['split']} split has "
                f"{progress.plural(stream.n_tokens, 'token')}, fewer than "
                f"model.block_size + 1 = {L + 1}"
            )
        return min(n, e.max_windows) if e.max_windows else n

    def score(self, params: Any, scorer: Any, channel: progress.Channel | None) -> dict[str, Any]:
        stream = self.data.split(self.task.options["split"])
        L, B, n = self.s.m.block_size, self.s.e.batch_size, self.windows(stream)
        nbytes = self.s.tok.token_bytes()
        total_nll, total_tokens, total_bytes = 0.0, 0, 0
        at_BxL = np.broadcast_to(np.arange(L, dtype=np.int32), (B, L))  # every position scored
        meter = progress.Meter(f"{self.task.name} windows", n, channel)
        for lo in range(0, n, B):
            k = min(B, n - lo)
            ids = np.zeros((B, L + 1), np.int32)
            weights = np.zeros((B, L), np.float32)
            for j in range(k):  # window w: tokens w L .. w L + L, its targets the last L
                ids[j] = stream.read((lo + j) * L, L + 1)
                weights[j] = 1.0
            nll, count = scorer(params, ids, np.asarray(at_BxL), weights)
            total_nll += float(np.asarray(nll, np.float64).sum())
            total_tokens += int(np.asarray(count).sum())
            total_bytes += int(nbytes[ids[:k, 1:]].sum())
            meter.update(lo + k)
        meter.close()
        return {
            "loss": total_nll / total_tokens,
            "bits_per_byte": total_nll / math.log(2) / total_bytes if total_bytes else None,
            "windows": n,
            "tokens": total_tokens,
            "bytes": total_bytes,
            "whole_split": n == (stream.n_tokens - 1) // L,
            "method": self.method(),
        }

    def summary(self, r: dict[str, Any]) -> str:
        return (
            f"{self.task.name}: {r['loss']:.4f} over {progress.plural(r['windows'], 'window')} "
            f"({progress.plural(r['tokens'], 'token')}), "
            f"{r['bits_per_byte']:.4f} bits per byte"
        )


# ---------------------------------------------------------------- multiple_choice


def check_item(item: dict[str, Any], task: Task, where: str) -> dict[str, Any]:
    """A multiple-choice item as {"context", "choices", "label", "where"}, read through the
    task's fields; a key missing or of the wrong type, or an empty context, is an EvalError
    naming file, line and key."""
    f, n = task.options["fields"], task.options["choices"]
    spans.need_keys(item, f, task.label, where)
    ctx, ends, label = item[f["context"]], item[f["choices"]], item[f["label"]]
    if not (isinstance(ends, list) and len(ends) == n and all(isinstance(s, str) for s in ends)):
        raise EvalError(f"{where}: {f['choices']}: expected a list of {n} strings, got {ends!r}")
    if not isinstance(ctx, str):
        raise EvalError(f"{where}: {f['context']}: expected a string, got {ctx!r}")
    if not ctx.strip():  # the first choice token would be predicted from nothing
        raise EvalError(
            f"{where}: {f['context']} is empty: an ending is scored after its "
            "context, so an item needs one"
        )
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < n:
        labels = f"{', '.join(map(str, range(n - 1)))} or {n - 1}"
        raise EvalError(f"{where}: {f['label']}: expected {labels}, got {label!r}")
    texts = {f["context"]: ctx, **{f"{f['choices']}[{i}]": e for i, e in enumerate(ends)}}
    for key, text in texts.items():  # valid JSON ("\\ud800"), but no character
        if not config.is_text(text):
            raise EvalError(
                f"{where}: {key} holds a lone surrogate ({text!r}), which "
                "is no character: expected Unicode text"
            )
    return {"context": ctx, "choices": ends, "label": label, "where": where}


def read_items(path: Path, task: Task, max_items: int = 0) -> list[dict[str, Any]]:
    """The items of a task's jsonl file (the first max_items; 0: all), each checked."""
    return spans.read_items(
        path, task, lambda item, where: check_item(item, task, where), max_items
    )


def render(
    item: dict[str, Any], tok: Any, L: int, delimiter: str = " "
) -> tuple[list[list[int]], list[int], bool]:
    """The rows (context + delimiter + choice tokens) of an item, where each choice starts, and
    whether the context was cropped: a row longer than L + 1 drops context tokens from the left,
    as lm-evaluation-harness and nanochat do. A choice of more than L tokens cannot follow even
    one context token in the model's window: an EvalError naming the item's file and line."""
    ctx = tok.encode(item["context"])
    rows, starts, longest = [], [], 0
    for i, ending in enumerate(item["choices"]):
        end = tok.encode(delimiter + ending)
        if len(end) > L:
            raise EvalError(
                f"{item['where']}: ending {i} is {len(end)} tokens, more than the "
                f"model's window holds after a context token (model.block_size = "
                f"{L}): this item cannot be scored by this model"
            )
        row = (ctx + end)[-(L + 1) :]
        rows.append(row)
        starts.append(len(row) - len(end))
        longest = max(longest, len(end))
    return rows, starts, len(ctx) + longest > L + 1


class MultipleChoice:
    """One context, several choices (HellaSwag's endings), scored completion-style as llm.c and
    build-nanogpt: the sum and the mean of each choice's token log-probabilities after the
    context; acc picks the largest sum, acc_norm the largest mean. Its items are read, checked
    and tokenized when it is loaded, so a bad one stops the stage before any work."""

    @staticmethod
    def rows(task: Task) -> int:
        return task.options["choices"]

    def __init__(self, task: Task, s: Setting) -> None:
        self.task, self.s = task, s
        o = task.options
        self.path = s.datasets[o["dataset"]] / o["file"]
        self.items = read_items(self.path, task, s.e.max_items)
        try:
            self.rendered = [render(it, s.tok, s.m.block_size, o["delimiter"]) for it in self.items]
        except tokenizer.TokenizerError as err:
            needs = f"; {task.label} needs {task.tokens()}" if o["tokenizer"] else ""
            raise EvalError(
                f"{task.name}: the model's tokenizer ({s.tok.name}) cannot encode an item: "
                f"{err}{needs}"
            ) from None
        self.cropped = sum(cropped for *_, cropped in self.rendered)

    @property
    def inputs(self) -> list[dict[str, Any]]:
        return [provenance.file_entry(self.path)]

    def method(self) -> str:
        return (
            "completion-style (llm.c, build-nanogpt): context tokens, then "
            f"{self.task.options['delimiter']!r} + ending; per ending the sum and the mean "
            "of its tokens' log-probabilities; acc: argmax of the sum, acc_norm: argmax of "
            "the mean (the length-normalised score)"
        )

    def score(self, params: Any, scorer: Any, channel: progress.Channel | None) -> dict[str, Any]:
        items, C, B, name = self.items, self.rows(self.task), self.s.e.batch_size, self.task.name
        rows = [list(zip(rows, starts, strict=True)) for rows, starts, _ in self.rendered]
        meter = progress.Meter(f"{name} items", len(items), channel)
        out, groups = spans.score_rows(rows, C * B, self.s.m.block_size, params, scorer, meter)
        nll, count = np.stack([o[:, 0] for o in out]), np.stack([o[:, 1] for o in out])
        sums, means = -nll, -nll / count
        labels = np.array([item["label"] for item in items])
        rate = meter.rate()
        log(f"{name}: {progress.plural(len(items), 'item')} at {rate:,.1f} items/s")
        return {
            "acc": float((sums.argmax(1) == labels).mean()),
            "acc_norm": float((means.argmax(1) == labels).mean()),
            "items": len(items),
            "all_items": len(items) == self.task.options["items"],
            "items_per_second": rate,
            "cropped_items": self.cropped,
            "buckets": groups,
            "method": self.method(),
        }

    def summary(self, r: dict[str, Any]) -> str:
        return (
            f"{self.task.name}: acc {r['acc']:.4f}, acc_norm {r['acc_norm']:.4f} over "
            f"{progress.plural(r['items'], 'item')} ({r['cropped_items']:,} with "
            f"their context cropped from the left to fit model.block_size = "
            f"{self.s.m.block_size})"
        )


def multiple_choice(task: Task, s: Setting) -> Any:
    """A multiple-choice task's scorer: llm.c's rule, or CORE's (task key style)."""
    return MultipleChoice(task, s) if task.options["style"] == "llm.c" else icl.InContext(task, s)


# One scorer per kind of task (nanogptx.evaltasks.KINDS; a group is its members).
SCORERS: dict[str, Any] = {
    "split_loss": SplitLoss,
    "multiple_choice": multiple_choice,
    "schema": icl.InContext,
    "language_modeling": icl.InContext,
}


# ---------------------------------------------------------------- the stage


def check_tasks(
    names: tuple[str, ...], data_dir: Path | None, datasets: dict[str, Path]
) -> list[Task]:
    """The registry's tasks that eval.tasks runs (a group's members), each with the input its
    kind reads passed."""
    tasks = []
    try:
        scored = [evaltasks.get(name) for name in evaltasks.expand(names)]
    except evaltasks.TaskError as err:
        raise EvalError(f"eval.tasks: {err}") from None
    for task in scored:
        name = task.name
        if task.input == "prepared" and data_dir is None:
            raise EvalError(f"eval.tasks has {name}: pass --data")
        if task.input == "dataset" and task.options["dataset"] not in datasets:
            raise EvalError(f"eval.tasks has {name}: pass --dataset {task.options['dataset']}=DIR")
        tasks.append(task)
    return tasks


def check_tokens(tasks: list[Task], tok_dict: dict[str, Any], model_dir: Path) -> None:
    """Each task scored in the tokens of one tokenizer only needs a model of that tokenizer."""
    for task in tasks:
        needs, has = task.options.get("tokenizer", ""), tok_dict.get("name")
        if needs and has != needs:
            raise EvalError(
                f"eval.tasks has {task.name}, which is scored in {task.tokens()}, "
                f"but the model in {model_dir} uses the {has!r} tokenizer "
                f"({model_dir / 'tokenizer.json'}): remove {task.name} from "
                f'eval.tasks or train with tokenizer.name = "{needs}"'
            )


def evaluate(
    cfg: Config,
    model_dir: str | Path,
    data_dir: str | Path | None,
    out_dir: str | Path,
    datasets: dict[str, str | Path] | None = None,
    channel: progress.Channel | None = None,
) -> dict[str, Any]:
    """Run cfg.eval.tasks on the model in model_dir; write metrics.json and provenance.json.
    datasets: {registry dataset: its directory}; channel: progress lines for a person watching."""
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    data_dir = None if data_dir is None else Path(data_dir)
    datasets = {name: Path(d) for name, d in (datasets or {}).items()}
    record = provenance.Record.start("eval", config.sections(cfg, config.STAGE_SECTIONS["eval"]))
    tasks = check_tasks(cfg.eval.tasks, data_dir, datasets)
    params, mcfg, tok_dict = checkpoint.load_model(model_dir)
    check_tokens(tasks, tok_dict, model_dir)
    model_sha = checkpoint.check_model_hash(model_dir)
    m = mcfg.model
    s = Setting(
        cfg.eval, m, tokenizer.from_manifest(tok_dict), tok_dict, model_dir, data_dir, datasets
    )
    jobs = [SCORERS[t.kind](t, s) for t in tasks]  # inputs checked: a bad one stops us now
    rt = runtime.choose_for(m, jax.local_devices()[0])
    log(rt.explain(m, jax.default_backend()))
    devices = jax.local_devices()
    scorer, replicated = on_devices(make_scorer(m, rt), devices)
    greedy, _ = on_devices(make_scorer(m, rt, greedy=True), devices)  # compiled only if used
    params = jax.device_put(jax.tree.map(np.asarray, params), replicated)
    log(f"eval: rows split over {progress.plural(len(devices), 'local device')}")
    inputs = [provenance.file_entry(model_dir / checkpoint.MODEL_FILES[0], model_sha)]
    reads = [
        ("--model", model_dir),
        ("--data", data_dir),
        *((f"--dataset {name}", d) for name, d in datasets.items()),
    ]
    results: dict[str, Any] = {}
    with provenance.exclusive(out_dir, "evaluation", inputs=reads, stage="eval"):
        for job in jobs:
            t0 = time.perf_counter()
            use = greedy if getattr(job, "greedy", False) else scorer
            results[job.task.name] = r = job.score(params, use, channel)
            inputs += [e for e in job.inputs if e["path"] not in {i["path"] for i in inputs}]
            log(job.summary(r))
            r["seconds"] = round(time.perf_counter() - t0, 3)
        for group in (n for n in cfg.eval.tasks if evaltasks.get(n).kind == "group"):
            results[group] = r = icl.aggregate(evaltasks.get(group), results)
            log(icl.aggregate_summary(group, r))
        metrics = {"model_sha256": model_sha, **results}
        path = out_dir / "metrics.json"
        provenance.write_json_atomic(path, metrics)
        record.finish(
            out_dir,
            inputs=inputs,
            outputs=[provenance.file_entry(path)],
            extra={"model_config": config.to_dict(m), "runtime": rt.describe()},
        )
    return metrics


def dataset_dirs(pairs: list[str], parser: argparse.ArgumentParser) -> dict[str, Path]:
    """--dataset NAME=DIR arguments as {NAME: DIR}."""
    out = {}
    for pair in pairs:
        name, eq, d = pair.partition("=")
        if not (eq and evaltasks.NAME.fullmatch(name) and d) or name in out:
            parser.error(f"--dataset {pair}: expected NAME=DIR, each dataset once")
        out[name] = Path(d)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m nanogptx.eval", description=__doc__.split("\n\n")[0]
    )
    config.add_arguments(parser, config.STAGE_SECTIONS["eval"])
    parser.add_argument("--model", type=Path, required=True, help="trained model directory")
    parser.add_argument("--data", type=Path, help="prepared data directory (split_loss tasks)")
    parser.add_argument(
        "--dataset",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="a registry dataset's directory (the tasks that read it)",
    )
    parser.add_argument("--out", type=Path, required=True, help="directory for metrics.json")
    progress.add_arguments(parser, "eval")
    args = parser.parse_intermixed_args(argv)
    datasets = dataset_dirs(args.dataset, parser)
    cfg = config.from_args(args, parser, registry=False)  # the data is --data, as prepared
    try:
        evaluate(cfg, args.model, args.data, args.out, datasets, progress.from_args(args))
    except (UserError, OSError) as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
