"""Speed of a recipe through the real train loop (by default nanoGPT's shakespeare-char CPU
recipe); with --full, the validation loss at the end (nanoGPT: 1.8857 at step 2000 on these
machines for the CPU recipe; target <= 1.89).

    python benchmarks/bench_train.py [--steps 300] [--peak 200e9 | --measure-peak] [--data DIR]
    python benchmarks/bench_train.py --full [--seeds 1337,1,2,3,4,5,6,7,8]
    python benchmarks/bench_train.py --recipe config/shakespeare-char-gpu.toml --full   # a GPU
    python benchmarks/bench_train.py --recipe config/gpt2-124m-fineweb.toml --synthetic --steps 30
    python benchmarks/bench_train.py --steps 500 --against logging.stats_interval=0 --repeats 3

Prints median ms/iter, tokens/s and MFU (against --peak FLOP/s, by default the ~200 GFLOP/s of a
float32 2048x2048 matmul measured on these 2-core CPUs; --measure-peak measures it here; on a GPU
in the table of logbook.PEAK_FLOPS, --peak 0 uses the table). With --full, also the evaluations
and the loss over the whole validation split at the end (every non-overlapping window, as
against the estimate of eval_iters batches); with --seeds, one full run per seed and the spread
of both figures across seeds. The data is the recipe's dataset, downloaded from --mirror (by
default ../shared/assets) and prepared by the real stages into a temporary directory, unless
--data names a prepared directory, or --synthetic asks for uniformly random tokens of the
recipe's vocabulary (speed alone: no download, no tokenizer). With --against OVERRIDES, runs
alternate between the recipe as given and the recipe with those overrides (--repeats times
each), and the best training seconds of each (the train steps' own time, diagnostics steps
included) are compared as a ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT.parent / "shared" / "assets"
RECIPE = ROOT / "config" / "shakespeare-char.toml"
NANOGPT_VAL_LOSS = 1.8857
# nanoGPT's final validation loss for the recipes it has, and the target where there is one.
REFERENCES = {"shakespeare-char": (NANOGPT_VAL_LOSS, 1.89), "shakespeare-char-gpu": (1.4697, None)}


def prepare_recipe(recipe: Path = RECIPE, mirror: Path = ASSETS) -> Path:
    """The recipe's dataset, downloaded (from the mirror) and prepared by the real stages into a
    temporary directory; returns the prepared directory."""
    from nanogptx import config, download, prepare

    cfg = config.load(recipe)
    work = Path(tempfile.mkdtemp(prefix="nanogptx-bench-data-"))
    raw, out = work / "raw" / cfg.data.dataset, work / "prepared" / config.data_id(cfg)
    download.download(cfg, raw, mirror=str(mirror))
    prepare.prepare(cfg, raw, out, os.cpu_count() or 1)
    return out


def synthetic_prepared(out: Path, vocab_size: int, n_tokens: int = 1 << 22, seed: int = 0) -> Path:
    """A prepared directory of uniformly random token ids (train, and a tenth as many for val),
    with a manifest and its record (provenance.json) as the prepare stage writes them."""
    from nanogptx import provenance
    from nanogptx.shards import FORMAT, token_dtype

    rng = np.random.default_rng(seed)
    dtype = token_dtype(vocab_size)
    out.mkdir(parents=True)
    shards, splits = [], {}
    for split, n in (("train", n_tokens), ("val", n_tokens // 10)):
        name = f"{split}_000000.npy"
        np.save(out / name, rng.integers(0, vocab_size, n, dtype=dtype))
        sha = provenance.sha256_file(out / name)
        shards.append({"file": name, "split": split, "tokens": n, "sha256": sha})
        splits[split] = {"tokens": n, "documents": 1, "shards": 1}
    manifest = {
        "format": FORMAT, "dataset": "synthetic", "data_config": {},
        "tokenizer": {"name": "synthetic", "vocab_size": vocab_size}, "sources": [],
        "shard_format": "npy", "dtype": dtype.name, "splits": splits, "shards": shards,
    }  # fmt: skip
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    # Training checks the manifest against prepare's record of it.
    outputs = [provenance.file_entry(out / s["file"], s["sha256"]) for s in shards]
    outputs.append(provenance.file_entry(out / "manifest.json"))
    provenance.Record.start("prepare", {}).finish(out, inputs=[], outputs=outputs)
    return out


def whole_split_loss(params, model_cfg, data, split: str = "val", batch: int = 64) -> float:
    """Mean next-token loss over every non-overlapping block_size window of a split of `data`
    (a loader.Prepared)."""
    import jax

    from nanogptx import loader, model, runtime

    L = model_cfg.block_size
    starts = np.arange((data.split(split).n_tokens - 1) // L) * L
    rt = runtime.choose(model_cfg, jax.default_backend())
    loss = jax.jit(lambda p, x, y: model.loss_fn(p, x, y, model_cfg, rt=rt)[0])
    total = 0.0
    for i in range(0, len(starts), batch):
        part = starts[i : i + batch]
        total += float(loss(params, *loader.windows(data, split, part, L))) * len(part)
    return total / len(starts)


def train_seconds(records: list[dict]) -> list[tuple[float, float | None]]:
    """(seconds spent in train steps so far, val loss) at each evaluation, and last (seconds in
    all, None): ms_per_iter times the steps each train record covers."""
    out, seconds, last = [], 0.0, -1
    for r in records:
        if r["kind"] == "train":
            seconds, last = seconds + r["ms_per_iter"] / 1e3 * (r["step"] - last), r["step"]
        elif r["kind"] == "eval":
            out.append((seconds, r["val_loss"]))
    return [*out, (seconds, None)]


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def run(cfg, data: Path, work: Path, full: bool, recipe: str) -> dict:
    """Train once; print speed (and with full, the evaluations); return the figures."""
    from nanogptx import checkpoint, loader, train

    out = work / f"model-{cfg.train.seed}"
    t0 = time.perf_counter()
    summary = train.train(cfg, data, out, work / f"checkpoints-{cfg.train.seed}")
    wall = time.perf_counter() - t0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["kind"] == "train" and r["step"] >= 10] or [
        r for r in records if r["kind"] == "train"
    ]  # warmed up, where there are enough steps
    ms = statistics.median(r["ms_per_iter"] for r in steps)
    # On a shared machine the fastest decile tells what the step costs when it has the cores.
    p10 = min(r["ms_per_iter"] for r in steps) if len(steps) < 2 else statistics.quantiles(
        [r["ms_per_iter"] for r in steps], n=10)[0]  # fmt: skip
    tokens = statistics.median(r["tokens_per_s"] for r in steps)
    mfus = [r["mfu"] for r in steps if r["mfu"] is not None]
    mfu = f"MFU {100 * statistics.median(mfus):.1f}%" if mfus else "no MFU (peak unknown)"
    seconds = train_seconds(records)[-1][0]
    print(f"\n{recipe}, {cfg.train.max_iters} steps, {wall:.0f} s wall in all, "
          f"{seconds:.2f} s in train steps")  # fmt: skip
    print(f"median {ms:.1f} ms/iter, {tokens:,.0f} tokens/s, {mfu}")
    print(f"fastest decile: {p10:.1f} ms/iter or less (load average now {load_average()})")
    if not full:
        return {"seconds": seconds, "ms": ms}
    for r in records:
        if r["kind"] == "eval":
            print(f"  step {r['step']}: train {r['train_loss']:.4f}, val {r['val_loss']:.4f}")
    params, model_cfg = checkpoint.load_model(out)[:2]
    whole = whole_split_loss(params, model_cfg.model, loader.open_prepared(data))
    nanogpt, target = REFERENCES.get(recipe, (None, None))
    compared = [] if nanogpt is None else [f"nanoGPT {nanogpt}"]
    if target is not None:
        compared.append("ok" if summary["val_loss"] <= target else f"ABOVE the {target} target")
    print(
        f"seed {cfg.train.seed}: val loss at step {summary['step']}: {summary['val_loss']:.4f}"
        + (f" ({'; '.join(compared)})" if compared else "")
        + f"; whole val split {whole:.4f}"
    )
    curve = [(s, v) for s, v in train_seconds(records) if v is not None]
    wall_curve = [(r["wall_s"], r["val_loss"]) for r in records if r["kind"] == "eval"]
    return {"estimate": summary["val_loss"], "whole": whole, "seconds": seconds, "ms": ms,
            "curve": curve, "wall_curve": wall_curve, "steps": summary["step"],
            "wall": wall}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", type=Path, default=RECIPE, help="run config (a TOML file)")
    parser.add_argument("--steps", type=int, default=300, help="steps timed (speed mode)")
    parser.add_argument("--full", action="store_true", help="train the recipe; print val loss")
    parser.add_argument("--seeds", help="comma-separated seeds, one full run each (implies --full)")
    parser.add_argument(
        "--peak", type=float,
        help="peak FLOP/s for MFU (default: 200e9 on CPU; elsewhere 0, the device table)",
    )  # fmt: skip
    parser.add_argument("--measure-peak", action="store_true", help="measure the peak here")
    parser.add_argument("--data", type=Path, help="prepared data directory (default: make one)")
    parser.add_argument("--mirror", type=Path, default=ASSETS, help="where the dataset is read")
    parser.add_argument(
        "--synthetic", action="store_true", help="random tokens of the recipe's vocabulary"
    )
    parser.add_argument(
        "--against", help="comma-separated overrides: alternate runs with and without them"
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs of each side (--against)")
    parser.add_argument("overrides", nargs="*", help="extra section.key=value overrides")
    args = parser.parse_args()
    full = args.full or bool(args.seeds)

    import jax

    from nanogptx import config, logbook, runtime

    # Before JAX runs anything here (the peak's matmul), as train does.
    runtime.keep_freed_memory(config.load(args.recipe, args.overrides).tokenizer.name)
    recipe = args.recipe.stem
    work = Path(tempfile.mkdtemp(prefix="nanogptx-bench-"))
    if args.data:
        data = args.data
    elif args.synthetic:
        cfg = config.load(args.recipe, args.overrides)
        vocab = 50257 if cfg.tokenizer.name == "gpt2" else cfg.model.vocab_size or 256
        data = synthetic_prepared(work / "synthetic", vocab)
        recipe += f" on synthetic tokens (vocabulary {vocab})"
    else:
        data = prepare_recipe(args.recipe, args.mirror)
    if args.measure_peak:
        peak, how = logbook.measure_flops(), "measured, float32"
    elif args.peak is not None:
        peak, how = args.peak, "given"
    else:
        cpu = jax.default_backend() == "cpu"
        peak, how = (200e9, "these CPUs' float32 matmul rate") if cpu else (0.0, "the table")
    print(f"peak for MFU: {peak / 1e9:.0f} GFLOP/s ({how})" if peak else f"peak for MFU: {how}")
    overrides = [f"train.peak_flops={peak}"]
    if full:
        overrides += ["logging.log_interval=50", "train.checkpoint_interval=0"]
    else:
        overrides += [
            f"train.max_iters={args.steps}", "train.eval_interval=100000",
            "train.checkpoint_interval=0", "logging.log_interval=1",
        ]  # fmt: skip
    if args.against:
        sides = {"as given": [], args.against: args.against.split(",")}
        best = {}
        for i in range(args.repeats):
            for side, extra in sides.items():
                cfg = config.load(args.recipe, overrides + args.overrides + extra)
                r = run(cfg, data, work / f"{i}-{len(extra)}", False, f"{recipe} ({side})")
                if side not in best or r["seconds"] < best[side]["seconds"]:
                    best[side] = r
        (a, ra), (b, rb) = best.items()
        print(f"\nbest of {args.repeats}: {a}: {ra['seconds']:.2f} s in train steps (median "
              f"{ra['ms']:.1f} ms/iter); {b}: {rb['seconds']:.2f} s ({rb['ms']:.1f} ms/iter); "
              f"ratio {ra['seconds'] / rb['seconds']:.3f}")  # fmt: skip
        return
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else [None]
    results = {}
    for seed in seeds:
        extra = [] if seed is None else [f"train.seed={seed}"]
        cfg = config.load(args.recipe, overrides + args.overrides + extra)
        results[cfg.train.seed] = run(cfg, data, work, full, recipe)
    if len(results) > 1:
        n, nanogpt = len(results), REFERENCES.get(recipe, ("none",))[0]
        print(f"\nval loss at the last step over {n} seeds (nanoGPT {nanogpt}):")
        print("  seed  estimate  whole val split")
        for seed, r in results.items():
            print(f"  {seed:4d}  {r['estimate']:8.4f}  {r['whole']:15.4f}")
        for key in ("estimate", "whole"):
            v = np.array([r[key] for r in results.values()])
            below = int((v <= 1.89).sum())
            print(f"  {key}: mean {v.mean():.4f}, std {v.std(ddof=1):.4f}, min {v.min():.4f}, "
                  f"max {v.max():.4f}; {below} of {len(v)} at or below 1.89")  # fmt: skip


if __name__ == "__main__":
    main()
