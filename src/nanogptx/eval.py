"""Evaluate a trained model: loss and bits per byte on the whole validation split, HellaSwag.

    python -m nanogptx.eval --config config/RUN.toml --model results/RUN/model \
        --data data/prepared/<data_id> [--hellaswag data/raw/hellaswag] --out results/RUN/eval

Writes <out>/metrics.json (each task's figures and how they were measured) and provenance.json.
Tasks ([eval] tasks):
- val_loss: the whole val split tiled into windows of model.block_size targets (not a sample of
  random batches), mean next-token cross-entropy over all of them, and bits per byte (summed
  nats / ln 2 / the UTF-8 bytes the targets stand for).
- hellaswag: each item's context followed by each of its 4 endings (" " + ending), scored
  completion-style as llm.c and build-nanogpt do: the sum and the mean of the endings' token
  log-probabilities after the context; acc picks the largest sum, acc_norm the largest mean.
  A context and ending longer than block_size + 1 tokens loses context from the left (as
  lm-evaluation-harness and nanochat); an ending longer than block_size, an empty context and
  a model whose tokenizer is not GPT-2's are refused before any work.
Batched and compiled: one program per padded length bucket, every item of it through one jit.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nanogptx import checkpoint, config, loader, model, progress, provenance, runtime, tokenizer
from nanogptx.config import Config, EvalConfig, ModelConfig
from nanogptx.errors import UserError

HELLASWAG_FILE = "hellaswag_val.jsonl"
HELLASWAG_ITEMS = 10_042
BUCKET = 32  # HellaSwag rows are padded up to a multiple of this (one compiled shape each)
VAL_LOSS_METHOD = (
    "mean next-token cross-entropy over the whole val split tiled into windows of block_size "
    "targets (window w predicts tokens w*L+1 .. w*L+L, each from the tokens before it in the "
    "window); bits per byte = summed nats / ln 2 / UTF-8 bytes of the targets"
)
HELLASWAG_METHOD = (
    "completion-style (llm.c, build-nanogpt): context tokens, then ' ' + ending; per ending the "
    "sum and the mean of its tokens' log-probabilities; acc: argmax of the sum, acc_norm: "
    "argmax of the mean (the length-normalised score)"
)


class EvalError(UserError, RuntimeError):
    """An expected failure: a missing input, a malformed HellaSwag line, a task the model's
    tokenizer cannot serve."""


def log(msg: str) -> None:
    print(msg, flush=True)


def make_scorer(m: ModelConfig, rt: runtime.Runtime) -> Any:
    """jit of (params, ids_BxL, at_BxE, weights_BxE) -> per row (sum of weight * nll, sum of
    weights): the nll of token at + 1 after tokens ..at, for the E positions `at` of each row
    (weight 0: not scored). The head (a V-wide matmul and softmax) runs at those positions only
    (for HellaSwag the endings, a fraction of each row), over chunks of them."""

    def score(params: Any, ids_BxL: jax.Array, at_BxE: jax.Array, w_BxE: jax.Array) -> tuple:
        x_BxLxD, _ = model.trunk(params, ids_BxL[:, :-1], m, rt=rt)  # the last: a target only
        x_BxExD = jnp.take_along_axis(x_BxLxD, at_BxE[..., None], axis=1)
        target_BxE = jnp.take_along_axis(ids_BxL, at_BxE + 1, axis=1)
        nll_BxE = model.token_nll(params, x_BxExD, target_BxE, m, rt)
        return (nll_BxE * w_BxE).sum(axis=1), w_BxE.sum(axis=1)

    return jax.jit(score)


def scorer_shapes(task: str, m: ModelConfig, e: EvalConfig) -> tuple[int, int, int]:
    """The largest (rows, ids per row, scored positions per row) a task calls the scorer with,
    for nanogptx.plan: val_loss, eval.batch_size windows of block_size + 1 tokens with every
    position scored; hellaswag, 4 rows per item, its longest bucket (block_size + 1, scoring
    block_size)."""
    rows = {"val_loss": e.batch_size, "hellaswag": 4 * e.batch_size}[task]
    return rows, m.block_size + 1, m.block_size


# ---------------------------------------------------------------- val loss


def val_loss(
    params: Any,
    m: ModelConfig,
    e: EvalConfig,
    data: loader.Prepared,
    tok: Any,
    scorer: Any,
    channel: progress.Channel | None = None,
) -> dict[str, Any]:
    """Loss and bits per byte over the whole val split, tiled into windows of block_size targets."""
    stream = data.split("val")
    L = m.block_size
    n = (stream.n_tokens - 1) // L
    if n == 0:
        raise EvalError(f"{data.dir}: the val split has "
                        f"{progress.plural(stream.n_tokens, 'token')}, fewer than "
                        f"model.block_size + 1 = {L + 1}")  # fmt: skip
    if e.max_windows:
        n = min(n, e.max_windows)
    nbytes = tok.token_bytes()
    B = e.batch_size
    total_nll, total_tokens, total_bytes = 0.0, 0, 0
    at_BxL = np.broadcast_to(np.arange(L, dtype=np.int32), (B, L))  # every position is scored
    meter = progress.Meter("val_loss windows", n, channel)
    for lo in range(0, n, B):
        k = min(B, n - lo)
        ids = np.zeros((B, L + 1), np.int32)
        weights = np.zeros((B, L), np.float32)
        for j in range(k):  # window w: tokens w L .. w L + L, its targets the last L
            ids[j] = stream.read((lo + j) * L, L + 1)
            weights[j] = 1.0
        nll, count = scorer(params, jnp.asarray(ids), jnp.asarray(at_BxL), jnp.asarray(weights))
        total_nll += float(np.asarray(nll, np.float64).sum())
        total_tokens += int(np.asarray(count).sum())
        total_bytes += int(nbytes[ids[:k, 1:]].sum())
        meter.update(lo + k)
    meter.close()
    loss = total_nll / total_tokens
    return {
        "loss": loss,
        "bits_per_byte": total_nll / math.log(2) / total_bytes if total_bytes else None,
        "windows": n,
        "tokens": total_tokens,
        "bytes": total_bytes,
        "whole_split": n == (stream.n_tokens - 1) // L,
        "method": VAL_LOSS_METHOD,
    }


# ---------------------------------------------------------------- HellaSwag


def read_hellaswag(path: Path, max_items: int = 0) -> list[dict[str, Any]]:
    """The items of a HellaSwag jsonl file: {"ctx", "endings" (4 strings), "label" (0-3),
    "where" (file:line)}; a line that is not JSON, lacks a key or has an empty context is an
    EvalError naming file, line and key."""
    items = []
    try:
        f = open(path, "rb")  # noqa: SIM115 (closed below)
    except FileNotFoundError:
        raise EvalError(f"{path} does not exist: download dataset hellaswag first") from None
    with f:
        for lineno, raw in enumerate(f, 1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise EvalError(f"{where}: not UTF-8 text (byte {err.start} of the line)") from None
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as err:
                raise EvalError(f"{where}: not a JSON object: {err}") from None
            if not isinstance(item, dict):
                raise EvalError(f"{where}: expected a JSON object, got {type(item).__name__}")
            for key in ("ctx", "endings", "label"):
                if key not in item:
                    raise EvalError(f"{where}: key {key!r} is missing (a HellaSwag item has "
                                    "ctx, endings and label)")  # fmt: skip
            ends, label = item["endings"], item["label"]
            if not (
                isinstance(ends, list) and len(ends) == 4 and all(isinstance(s, str) for s in ends)
            ):
                raise EvalError(f"{where}: endings: expected a list of 4 strings, got {ends!r}")
            if not isinstance(item["ctx"], str):
                raise EvalError(f"{where}: ctx: expected a string, got {item['ctx']!r}")
            if not item["ctx"].strip():  # the first ending token would be predicted from nothing
                raise EvalError(f"{where}: ctx is empty: an ending is scored after its context, "
                                "so an item needs one")  # fmt: skip
            if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < 4:
                raise EvalError(f"{where}: label: expected 0, 1, 2 or 3, got {label!r}")
            texts = {"ctx": item["ctx"], **{f"endings[{i}]": e for i, e in enumerate(ends)}}
            for key, text in texts.items():  # valid JSON ("\\ud800"), but no character
                if not config.is_text(text):
                    raise EvalError(f"{where}: {key} holds a lone surrogate ({text!r}), which "
                                    "is no character: expected Unicode text")  # fmt: skip
            items.append({"ctx": item["ctx"], "endings": ends, "label": label, "where": where})
            if max_items and len(items) == max_items:
                break
    if not items:
        raise EvalError(f"{path}: no items")
    return items


def render(item: dict[str, Any], tok: Any, L: int) -> tuple[list[list[int]], list[int], bool]:
    """The 4 rows (context + ending tokens) of an item, where each ending starts, and whether
    the context was cropped: a row longer than L + 1 drops context tokens from the left, as
    lm-evaluation-harness and nanochat do. An ending of more than L tokens cannot follow even
    one context token in the model's window: an EvalError naming the item's file and line."""
    ctx = tok.encode(item["ctx"])
    rows, starts, longest = [], [], 0
    for i, ending in enumerate(item["endings"]):
        end = tok.encode(" " + ending)
        if len(end) > L:
            raise EvalError(f"{item['where']}: ending {i} is {len(end)} tokens, more than the "
                            f"model's window holds after a context token (model.block_size = "
                            f"{L}): this item cannot be scored by this model")  # fmt: skip
        row = (ctx + end)[-(L + 1) :]
        rows.append(row)
        starts.append(len(row) - len(end))
        longest = max(longest, len(end))
    return rows, starts, len(ctx) + longest > L + 1


def buckets(lengths: list[tuple[int, int]], L: int) -> dict[tuple[int, int], list[int]]:
    """Item indices grouped by (row length, ending length), each rounded up to BUCKET (the row
    at most L + 1): one compiled shape per group."""
    out: dict[tuple[int, int], list[int]] = {}
    for i, (n, e) in enumerate(lengths):
        width = min(-(-n // BUCKET) * BUCKET, L + 1)
        out.setdefault((width, min(-(-e // BUCKET) * BUCKET, width - 1)), []).append(i)
    return dict(sorted(out.items()))


class HellaSwag:
    """HellaSwag's items read, checked and tokenized for a model (before any scoring, so that a
    bad item stops the stage before it has done any work)."""

    def __init__(self, path: Path, e: EvalConfig, tok: Any, L: int) -> None:
        self.path = path
        self.items = read_hellaswag(path, e.max_items)
        try:
            self.rendered = [render(item, tok, L) for item in self.items]
        except tokenizer.TokenizerError as err:
            raise EvalError(f"hellaswag: the model's tokenizer ({tok.name}) cannot encode an "
                            f"item: {err}; HellaSwag needs GPT-2 tokens") from None  # fmt: skip
        self.cropped = sum(cropped for *_, cropped in self.rendered)


def hellaswag(
    params: Any,
    m: ModelConfig,
    e: EvalConfig,
    task: HellaSwag,
    scorer: Any,
    channel: progress.Channel | None = None,
) -> dict[str, Any]:
    items, rendered = task.items, task.rendered
    lengths = [
        (max(len(r) for r in rows), max(len(r) - s for r, s in zip(rows, starts, strict=True)))
        for rows, starts, _ in rendered
    ]
    groups = buckets(lengths, m.block_size)
    sums = np.zeros((len(items), 4))
    means = np.zeros((len(items), 4))
    meter = progress.Meter("hellaswag items", len(items), channel)
    done = 0
    for (width, E), members in groups.items():
        B = e.batch_size
        for lo in range(0, len(members), B):
            chunk = members[lo : lo + B]
            ids = np.zeros((4 * B, width), np.int32)
            at = np.zeros((4 * B, E), np.int32)  # the positions whose next token is the ending's
            weights = np.zeros((4 * B, E), np.float32)
            for j, i in enumerate(chunk):
                rows, starts, _ = rendered[i]
                for r, (row, start) in enumerate(zip(rows, starts, strict=True)):
                    ids[4 * j + r, : len(row)] = row
                    n = len(row) - start
                    at[4 * j + r, :n] = np.arange(start - 1, len(row) - 1)
                    weights[4 * j + r, :n] = 1.0
            nll, count = jax.device_get(
                scorer(params, jnp.asarray(ids), jnp.asarray(at), jnp.asarray(weights))
            )
            k = len(chunk)
            nll, count = nll[: 4 * k].reshape(k, 4), count[: 4 * k].reshape(k, 4)
            sums[chunk] = -nll
            means[chunk] = -nll / count
            done += k
            meter.update(done)
    meter.close()
    labels = np.array([item["label"] for item in items])
    rate = meter.rate()
    log(f"hellaswag: {progress.plural(len(items), 'item')} at {rate:,.1f} items/s")
    return {
        "acc": float((sums.argmax(1) == labels).mean()),
        "acc_norm": float((means.argmax(1) == labels).mean()),
        "items": len(items),
        "all_items": len(items) == HELLASWAG_ITEMS,
        "items_per_second": rate,
        "cropped_items": task.cropped,
        "buckets": {f"{w}x{e}": len(v) for (w, e), v in groups.items()},
        "method": HELLASWAG_METHOD,
    }


# ---------------------------------------------------------------- the stage


def evaluate(
    cfg: Config,
    model_dir: str | Path,
    data_dir: str | Path | None,
    out_dir: str | Path,
    hellaswag_dir: str | Path | None = None,
    channel: progress.Channel | None = None,
) -> dict[str, Any]:
    """Run cfg.eval.tasks on the model in model_dir; write metrics.json and provenance.json.
    channel: progress lines for a person watching (the workflow's terminal)."""
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    e = cfg.eval
    record = provenance.Record.start("eval", config.sections(cfg, config.STAGE_SECTIONS["eval"]))
    need = {"val_loss": data_dir, "hellaswag": hellaswag_dir}
    flags = {"val_loss": "--data", "hellaswag": "--hellaswag"}
    for task in e.tasks:
        if need[task] is None:
            raise EvalError(f"eval.tasks has {task}: pass {flags[task]}")
    params, mcfg, tok_dict = checkpoint.load_model(model_dir)
    if "hellaswag" in e.tasks and tok_dict.get("name") != "gpt2":
        raise EvalError(f"eval.tasks has hellaswag, which is scored in GPT-2 tokens, but the "
                        f"model in {model_dir} uses the {tok_dict.get('name')!r} tokenizer "
                        f"({model_dir / 'tokenizer.json'}): remove hellaswag from eval.tasks "
                        "or train with tokenizer.name = \"gpt2\"")  # fmt: skip
    model_sha = checkpoint.check_model_hash(model_dir)
    m = mcfg.model
    tok = tokenizer.from_manifest(tok_dict)
    swag = None  # its items read and checked now: a bad one stops the stage before any work
    if "hellaswag" in e.tasks:
        swag = HellaSwag(Path(hellaswag_dir) / HELLASWAG_FILE, e, tok, m.block_size)
    rt = runtime.choose_for(m, jax.local_devices()[0])
    log(rt.explain(m, jax.default_backend()))
    params = jax.tree.map(jnp.asarray, params)
    scorer = make_scorer(m, rt)
    inputs = [provenance.file_entry(model_dir / checkpoint.MODEL_FILES[0], model_sha)]
    results: dict[str, Any] = {}
    reads = [("--model", model_dir), ("--data", data_dir), ("--hellaswag", hellaswag_dir)]
    with provenance.exclusive(out_dir, "evaluation", inputs=reads, stage="eval"):
        for task in e.tasks:
            t0 = time.perf_counter()
            if task == "val_loss":
                data = loader.open_prepared(data_dir)
                if data.manifest["tokenizer"].get("vocab_sha256") != tok_dict.get("vocab_sha256"):
                    raise EvalError(f"{data.dir}: tokenized with another vocabulary than the "
                                    f"model's ({model_dir / 'tokenizer.json'})")  # fmt: skip
                results[task] = val_loss(params, m, e, data, tok, scorer, channel)
                inputs += [provenance.file_entry(data.dir / "manifest.json",
                                                 data.manifest_sha256)]  # fmt: skip
                r = results[task]
                log(f"val_loss: {r['loss']:.4f} over {progress.plural(r['windows'], 'window')} "
                    f"({progress.plural(r['tokens'], 'token')}), "
                    f"{r['bits_per_byte']:.4f} bits per byte")  # fmt: skip
            else:
                results[task] = hellaswag(params, m, e, swag, scorer, channel)
                inputs.append(provenance.file_entry(swag.path))
                r = results[task]
                log(f"hellaswag: acc {r['acc']:.4f}, acc_norm {r['acc_norm']:.4f} over "
                    f"{progress.plural(r['items'], 'item')} ({r['cropped_items']:,} with "
                    f"their context cropped from the left to fit model.block_size = "
                    f"{m.block_size})")  # fmt: skip
            results[task]["seconds"] = round(time.perf_counter() - t0, 3)
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m nanogptx.eval", description=__doc__.split("\n\n")[0]
    )
    config.add_arguments(parser, config.STAGE_SECTIONS["eval"])
    parser.add_argument("--model", type=Path, required=True, help="trained model directory")
    parser.add_argument("--data", type=Path, help="prepared data directory (val_loss)")
    parser.add_argument("--hellaswag", type=Path, help="directory of hellaswag_val.jsonl")
    parser.add_argument("--out", type=Path, required=True, help="directory for metrics.json")
    progress.add_arguments(parser, "eval")
    args = parser.parse_intermixed_args(argv)
    cfg = config.from_args(args, parser, registry=False)  # the data is --data, as prepared
    try:
        evaluate(cfg, args.model, args.data, args.out, args.hellaswag, progress.from_args(args))
    except (UserError, OSError) as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
