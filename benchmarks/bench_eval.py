"""Scoring speed of the eval stage's kinds, where the time goes, and CORE's time on one H100.

    python benchmarks/bench_eval.py [--models cpu,gpt2] [--items 64] [--gpt2-items 12]
        [--batch 8] [--gpt2-batch 4] [--repeats 2] [--gpt2-repeats 1] [--mfu 0.3]
        [--parts speed,estimate]

speed: items/s of each kind through the eval stage's own code (items read, rendered, tokenized,
bucketed and scored by nanogptx.eval's and nanogptx.icl's scorers, rows on all local devices
as the stage puts them): HellaSwag as llm.c scores it (multiple_choice, style llm.c), CORE's
10-shot HellaSwag (multiple_choice, style core), WinoGrande (schema) and LAMBADA
(language_modeling, the greedy scorer). The models have random weights (speed does not depend
on them): cpu is config/shakespeare-gpt2.toml's shape (4 layers, 128 wide, block 128), gpt2 is
GPT-2 124M (config/gpt2-124m-fineweb.toml's, block 1024), both with GPT-2's vocabulary. Each
kind's first call of each bucket runs once more, untimed, to compile it; best of --repeats;
"model" is the time inside the
compiled scorer calls (blocked until ready), "host" the rest (reading, rendering and
tokenizing the items, batching the rows, placing them).

estimate: the 22 CORE tasks on GPT-2 124M (block 1024): each task's items rendered as the
stage renders them (few-shot, BOS, cut to the window) and bucketed as it buckets them, each
bucket's scorer compiled for this machine and its cost_analysis() FLOPs divided by the items
a full call holds; FLOPs per task = items x FLOPs per item; the suite's time on one H100 at
--mfu of its dense bf16 peak. An ESTIMATE: nothing ran on a GPU. Beside it the host's part at
this machine's measured rate: reading, rendering and tokenizing each task's items (the stage
does it before scoring, on one core), times the task's items.

The items are synthetic, not CORE's (the bundle cannot be fetched here): random common words
in each task's format, in its bundle layout (tests/corebundle.py's paths and baselines), of
the token lengths in LENGTHS (the typical lengths of the real items, as this file states them;
each item +-25%), so the buckets are of realistic sizes. The item counts are ITEMS. The GPT-2
tokenizer's files come from ../shared/assets/tiktoken when $TIKTOKEN_CACHE_DIR is unset.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import random
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np

from nanogptx import config, eval, evaltasks, icl, resume, runtime, spans, tokenizer
from nanogptx import model as nmodel

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT.parent / "shared" / "assets" / "tiktoken"
sys.path.insert(0, str(ROOT / "tests"))
import corebundle  # noqa: E402  (the bundle's layout: paths, kinds, shots, baselines)

H100_BF16 = 989.4e12  # FLOP/s: H100 SXM dense bfloat16 (NVIDIA's datasheet, no sparsity)
H100_TF32 = 494.7e12  # FLOP/s: its dense TF32 (float32 matmuls), what the float32 stage gets
MODELS = {"cpu": "shakespeare-gpt2", "gpt2": "gpt2-124m-fineweb"}
# The kinds measured for speed: (eval.tasks name, what it stands for).
KINDS = (
    ("hellaswag", "multiple_choice llm.c"),
    ("core-hellaswag", "multiple_choice core"),
    ("core-winogrande", "schema"),
    ("core-lambada_openai", "language_modeling"),
)
# Items per CORE task: the #datapoints column of DCLM's eval/eval_meta_data_v1.csv (the bundle
# itself cannot be fetched here), but ARC-Challenge's 1,172 (the CSV repeats ARC-Easy's 2,376):
# 91,037 in all, against the ~92,000 quoted.
ITEMS = {
    "hellaswag_zeroshot": 10042, "jeopardy": 2117, "bigbench_qa_wikidata": 20321,
    "arc_easy": 2376, "arc_challenge": 1172, "copa": 100, "commonsense_qa": 1221,
    "piqa": 1838, "openbook_qa": 500, "lambada_openai": 5153, "hellaswag": 10042,
    "winograd": 273, "winogrande": 1267, "bigbench_dyck_languages": 1000,
    "agi_eval_lsat_ar": 230, "bigbench_cs_algorithms": 1320, "bigbench_operators": 210,
    "bigbench_repeat_copy_logic": 32, "squad": 10570, "coqa": 7983, "boolq": 3270,
    "bigbench_language_identification": 10000,
}  # fmt: skip
# Typical GPT-2 tokens of a real item, per task: (context or query, each choice or
# continuation); a schema item's context is each of its options. Assumed, not measured.
LENGTHS = {
    "hellaswag_zeroshot": (40, 22), "jeopardy": (30, 3), "bigbench_qa_wikidata": (10, 3),
    "arc_easy": (25, 5), "arc_challenge": (30, 7), "copa": (10, 8), "commonsense_qa": (15, 2),
    "piqa": (12, 25), "openbook_qa": (12, 5), "lambada_openai": (75, 2), "hellaswag": (40, 22),
    "winograd": (15, 6), "winogrande": (18, 8), "bigbench_dyck_languages": (40, 5),
    "agi_eval_lsat_ar": (250, 20), "bigbench_cs_algorithms": (30, 2),
    "bigbench_operators": (20, 2), "bigbench_repeat_copy_logic": (25, 20), "squad": (160, 4),
    "coqa": (400, 3), "boolq": (130, 1), "bigbench_language_identification": (30, 3),
}  # fmt: skip
# Common words GPT-2 encodes as one token each after a space: k words, about k tokens.
WORDS = (
    "the of and to in is was for that with as on by at from his her they which this are "
    "had have not but one were all we when there can an been has more who will no if out "
    "so said what up its about than into them only other new some could time these two may "
    "then first any like now my such make over our even most me state after also made many "
    "did must before back see through way where get much go well your know should down work "
    "year because come people just say each those take day good how long little own great "
    "man world life still public same house both old last right while high under"
).split()


def words(rng: random.Random, mean: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(max(1, round(mean * rng.uniform(0.75, 1.25)))))


def core_items(label: str, n: int) -> list[dict]:
    """n synthetic items of a CORE task in its kind's format, of LENGTHS[label] tokens, with
    the most choices (contexts) its registry file allows (ARC's 5, where most real items have
    4: an upper bound there)."""
    t = next(t for t in corebundle.TASKS if t.label == label)
    t = dataclasses.replace(t, choices=evaltasks.get(f"core-{label}").options.get("choices", 0))
    ctx, ans = LENGTHS[label]
    rng = random.Random(label)
    out = []
    for _ in range(n):
        if t.kind == corebundle.MC:
            choices = [words(rng, ans) for _ in range(t.choices)]
            out.append({"query": words(rng, ctx), "choices": choices, "gold": 0})
        elif t.kind == corebundle.SCHEMA:
            options = [words(rng, ctx) for _ in range(t.choices)]
            out.append({"context_options": options, "continuation": words(rng, ans), "gold": 1})
        else:
            out.append({"context": words(rng, ctx), "continuation": words(rng, ans)})
    return out


def hellaswag_items(n: int) -> list[dict]:
    """n items in HellaSwag's own format (llm.c's task), of its lengths."""
    rng = random.Random("hellaswag-llm.c")
    ctx, ans = LENGTHS["hellaswag_zeroshot"]
    return [{"ctx": words(rng, ctx), "endings": [words(rng, ans) for _ in range(4)], "label": 0}
            for _ in range(n)]  # fmt: skip


def write_tasks(root: Path, n: int, labels: list[str]) -> None:
    """The bundle's layout under root (eval_bundle/...) with n items for each label, and
    HellaSwag's own file (hellaswag_val.jsonl)."""
    for label in labels:
        t = next(t for t in corebundle.TASKS if t.label == label)
        path = root / corebundle.ROOT / "eval_data" / t.uri
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(it) + "\n" for it in core_items(label, n)))
    (root / corebundle.ROOT / "eval_meta_data.csv").write_text(corebundle.meta_csv())
    hs = evaltasks.get("hellaswag").options["file"]
    (root / hs).write_text("".join(json.dumps(it) + "\n" for it in hellaswag_items(n)))


def model_config(name: str) -> config.ModelConfig:
    cfg = config.load(ROOT / "config" / f"{MODELS[name]}.toml", [], registry=False)
    return resume.resolve_vocab(cfg, 50257).model


def setting(m: config.ModelConfig, root: Path, batch: int, tok: Any) -> eval.Setting:
    e = dataclasses.replace(config.EvalConfig(), batch_size=batch)
    datasets = {"eval-bundle": root, "hellaswag": root}
    return eval.Setting(e, m, tok, tok.identity(), root, None, datasets)


class Timed:
    """A scorer whose calls are timed, each blocked until its outputs are ready. The first call
    of each shape runs twice: once to compile (its time kept apart, in warming), then timed."""

    def __init__(self, scorer: Any) -> None:
        self.scorer, self.seconds, self.warming, self.shapes = scorer, 0.0, 0.0, set()

    def __call__(self, *args: Any) -> Any:
        shape = tuple(a.shape for a in args[1:])
        if shape not in self.shapes:
            self.shapes.add(shape)
            t0 = time.perf_counter()
            jax.block_until_ready(self.scorer(*args))
            self.warming += time.perf_counter() - t0
        t0 = time.perf_counter()
        out = jax.block_until_ready(self.scorer(*args))
        self.seconds += time.perf_counter() - t0
        return out


def speed(name: str, n: int, batch: int, repeats: int, tok: Any) -> list[str]:
    """Items/s of each kind on model `name`, and the share of the time in the model."""
    m = model_config(name)
    devices = jax.local_devices()
    rt = runtime.choose_for(m, devices[0])
    timed = {g: Timed(eval.make_scorer(m, rt, greedy=g)) for g in (False, True)}
    scorers = {g: eval.on_devices(t, devices) for g, t in timed.items()}
    params = nmodel.init_params(m, nmodel.vocab_rows(m), jax.random.key(0))
    params = jax.device_put(jax.tree.map(np.asarray, params), scorers[False][1])
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        write_tasks(Path(tmp), n, ["hellaswag", "winogrande", "lambada_openai"])
        s = setting(m, Path(tmp), batch, tok)
        for task_name, kind in KINDS:
            task = evaltasks.get(task_name)
            greedy = task.kind == "language_modeling"
            scorer, t = scorers[greedy][0], timed[greedy]
            best = None
            for _ in range(repeats):
                t.seconds = t.warming = 0.0
                t0 = time.perf_counter()  # reading, rendering, tokenizing, then scoring
                with quiet():
                    r = eval.SCORERS[task.kind](task, s).score(params, scorer, None)
                total = time.perf_counter() - t0 - t.warming  # compiling left out
                if best is None or total < best[0]:
                    best = (total, t.seconds, r["buckets"])
            total, inside, groups = best  # type: ignore[misc]
            lines.append(
                f"{name:4} {kind:22} {task_name:20} {n / total:9.3g} items/s  model "
                f"{100 * inside / total:5.1f}%  host {1000 * (total - inside) / n:6.2f} ms/item"
                f"  buckets {groups}"
            )
            print(lines[-1], flush=True)
    return lines


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """The scorers' own log lines (a task's rate, the progress meter) kept off the table."""
    saved = eval.log, icl.log
    eval.log = icl.log = lambda msg: None
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        eval.log, icl.log = saved


def estimate(n: int, batch: int, mfu: float, tok: Any) -> list[str]:
    """CORE's FLOPs on GPT-2 124M per task (compiled scorers' cost_analysis() at the buckets
    of n rendered synthetic items a task), and the suite's time on one H100 at mfu."""
    m = model_config("gpt2")
    rt = runtime.choose_for(m, jax.devices()[0])
    params = jax.eval_shape(lambda: nmodel.init_params(m, nmodel.vocab_rows(m), jax.random.key(0)))
    scorers = {g: eval.make_scorer(m, rt, greedy=g) for g in (False, True)}
    flops_of: dict[tuple, float] = {}  # (greedy, rows, width, E): FLOPs of one call
    lines, total_flops, total_items, t_compile, host = [], 0.0, 0, 0.0, 0.0
    labels = [t.label for t in corebundle.TASKS]
    with tempfile.TemporaryDirectory() as tmp:
        write_tasks(Path(tmp), n, labels)
        s = setting(m, Path(tmp), batch, tok)
        for label in labels:
            task = evaltasks.get(f"core-{label}")
            t0 = time.perf_counter()
            job = icl.InContext(task, s)  # read, rendered, tokenized
            host_item = (time.perf_counter() - t0) / n
            rows = [r for r in job.rows if r is not None]
            capacity = batch * eval.rows_per_item(task)
            lengths = [(max(len(r) for r, _ in it), max(len(r) - st for r, st in it))
                       for it in rows]  # fmt: skip
            per_item = []
            for (width, E), members in spans.buckets(lengths, m.block_size).items():
                key = (job.greedy, capacity, width, E)
                if key not in flops_of:
                    args = (jax.ShapeDtypeStruct((capacity, width), np.int32),
                            jax.ShapeDtypeStruct((capacity, E), np.int32),
                            jax.ShapeDtypeStruct((capacity, E), np.float32))  # fmt: skip
                    t0 = time.perf_counter()
                    compiled = scorers[job.greedy].lower(params, *args).compile()
                    t_compile += time.perf_counter() - t0
                    cost = compiled.cost_analysis()
                    cost = cost[0] if isinstance(cost, list) else cost
                    flops_of[key] = float(cost["flops"])
                per_item += [flops_of[key] / batch] * len(members)
            f_item, count = float(np.mean(per_item)), ITEMS[label]
            tokens = np.mean([max(len(r) for r, _ in it) for it in rows])
            total_flops += f_item * count
            total_items += count
            host += host_item * count
            lines.append(
                f"  {label:33} {task.kind:17} {task.options['shots']:2}-shot "
                f"{tokens:6.0f} tokens/row {f_item / 1e9:8.1f} GFLOP/item x {count:6,} items "
                f"= {f_item * count / 1e15:6.2f} PFLOP; host {1000 * host_item:5.2f} ms/item"
            )
            print(lines[-1], flush=True)
    seconds = total_flops / (H100_BF16 * mfu)
    lines += [
        f"CORE on GPT-2 124M: {total_items:,} items, {total_flops / 1e15:.1f} PFLOP "
        f"({len(flops_of)} bucket shapes compiled in {t_compile:.0f} s, batch {batch} items)",
        f"ESTIMATE, nothing ran on a GPU: one H100 at {mfu:.0%} MFU of its dense bf16 peak "
        f"({H100_BF16 / 1e12:.0f} TFLOP/s): {seconds:,.0f} s ({seconds / 60:.1f} min) of "
        f"model time; the stage computes in float32 (TF32 peak {H100_TF32 / 1e12:.0f} TFLOP/s): "
        f"{total_flops / (H100_TF32 * mfu):,.0f} s at the same MFU",
        f"host (measured here): reading, rendering and tokenizing the {total_items:,} items "
        f"{host:,.0f} s on one core (the stage does it before each task's scoring, not beside)",
    ]
    print("\n".join(lines[-3:]), flush=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="cpu,gpt2", help="of cpu, gpt2 (speed)")
    parser.add_argument("--items", type=int, default=64, help="items per kind (cpu model)")
    parser.add_argument("--gpt2-items", type=int, default=12, help="items per kind (gpt2)")
    parser.add_argument("--batch", type=int, default=8, help="eval.batch_size (items)")
    parser.add_argument("--gpt2-batch", type=int, default=4, help="eval.batch_size (gpt2)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--gpt2-repeats", type=int, default=1)
    parser.add_argument("--mfu", type=float, default=0.3, help="assumed for the H100 estimate")
    parser.add_argument("--estimate-items", type=int, default=24, help="items per CORE task")
    parser.add_argument("--parts", default="speed,estimate")
    args = parser.parse_args()
    if "TIKTOKEN_CACHE_DIR" not in os.environ and ASSETS.is_dir():
        cache = Path(tempfile.mkdtemp(prefix="tiktoken-"))
        tokenizer.seed_tiktoken_cache(ASSETS, cache)
        os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)
    tok = tokenizer.gpt2()
    parts = args.parts.split(",")
    devices = jax.local_devices()
    print(f"{len(devices)} x {devices[0].device_kind}, load average {os.getloadavg()[0]:.2f}")
    if "speed" in parts:
        for name in args.models.split(","):
            n = args.gpt2_items if name == "gpt2" else args.items
            batch = args.gpt2_batch if name == "gpt2" else args.batch
            speed(name, n, batch, args.gpt2_repeats if name == "gpt2" else args.repeats, tok)
    if "estimate" in parts:
        estimate(args.estimate_items, args.batch, args.mfu, tok)
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
