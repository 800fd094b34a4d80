"""Ready for the first GPU: the checks only a GPU can make, printed as one table
(benchmarks/gpu_check.sh runs this; under 8 minutes on one H100 is the aim).

    bash benchmarks/gpu_check.sh [--mirror DIR]   # a machine with an NVIDIA GPU and the cuda extra
    bash benchmarks/gpu_check.sh --cpu            # what a CPU can run of it, smaller

Rows:
- workflow: the tiny run end to end through Snakemake's GPU profile (download from --mirror,
  prepare, train, sample, eval), and the device its training ran on.
- float32: a tiny model trained 20 steps in float32 on the GPU and on the CPU; the largest
  difference of the step losses must be at most 1e-5 (the GPU's float32 matmuls at full
  precision, JAX_DEFAULT_MATMUL_PRECISION=highest: by default XLA may use TF32 there).
- attention: cuDNN's attention against XLA's in bfloat16, one loss and its gradients on the
  same parameters and batch, each also against a float32 reference. bfloat16 keeps 8 bits of
  mantissa: a rounding moves a value by up to 2^-9 of itself, and the two implementations round
  at different places (cuDNN keeps its softmax in registers and rounds the probabilities once
  before P V; XLA rounds the logits, then the probabilities). So they may differ by about one
  bfloat16 step in each attention output, which the mean over tokens brings to at most
  2^-7 relative in the loss (limit: two steps); gradients, a sum of many such products, at most
  2^-5 relative L2 (four steps' worth, 3%); and cuDNN must be no further from float32 than
  twice XLA's distance.
- gpt2-124m: config/gpt2-124m-fineweb.toml as shipped, 50 steps on synthetic tokens at the
  automatic micro-batch: tokens/s and MFU against the card's bfloat16 peak (logbook.PEAK_FLOPS),
  and the peak memory the device measured (memory_stats' peak_bytes_in_use) against the plan's
  figure for the largest program (the micro-batch's record in provenance.json): at most 5%
  above it (the allocator's rounding, the next batch placed while a step runs), or the plan
  underestimates.
Exits 1 if a check fails. With --cpu, each row runs on this machine's CPU where it can, smaller
(a check of this script, not of a GPU): float32 compares CPU with CPU, attention XLA's with
einsum, gpt2-124m a two-layer model for 3 steps; cuDNN's rows say they need a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT.parent / "shared" / "assets"
FLOAT32_LIMIT = 1e-5
LOSS_LIMIT, GRAD_LIMIT = 2.0**-7, 2.0**-5  # bfloat16: two steps of 2^-8, four in the gradients
ROWS = ("workflow", "float32", "attention", "gpt2-124m")  # the table's, in order
PEAK_SLACK = 1.05  # measured peak memory against the plan's figure
TINY = ["train.max_iters=20", "train.eval_interval=1000", "train.eval_iters=1",
        "train.checkpoint_interval=0", "logging.log_interval=1", "logging.stats_interval=0",
        "train.warmup_iters=2", "train.lr_decay_iters=20"]  # fmt: skip


def run(cmd: list[str], cwd: Path | None = None, env: dict | None = None) -> str:
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=1800)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout[-3000:]}\n"
                           f"{r.stderr[-3000:]}")  # fmt: skip
    return r.stdout


def workflow(work: Path, mirror: Path | None, cpu: bool) -> tuple[bool, str]:
    """The tiny run through Snakemake (the GPU profile, or the default one with --cpu)."""
    for name in ("Snakefile", "workflow", "profiles", "config", "src"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, work / name)
    args = [sys.executable, "-m", "snakemake", "--config", "runs=tiny"]
    args += [f"mirror={mirror}"] if mirror else []
    args += ["--cores", "all"] if cpu else ["--profile", "profiles/gpu"]
    t0 = time.perf_counter()
    run(args, cwd=work)
    seconds = time.perf_counter() - t0
    prov = json.loads((work / "results/tiny/model/provenance.json").read_text())
    evals = json.loads((work / "results/tiny/eval/metrics.json").read_text())
    device = prov["devices"]  # provenance.devices(): platform, kind, count
    on = f"{device['count']} x {device['kind']} ({device['platform']})"
    ok = cpu or device["platform"] == "gpu"
    return ok, (
        f"download, prepare, train, sample, eval in {seconds:.0f} s; training on {on}, "
        f"runtime {prov['runtime']}; whole-split val loss {evals['val_loss']['loss']:.4f}"
    )


def losses(model_dir: Path) -> dict[int, float]:
    lines = (model_dir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines) if r["kind"] == "train"}


def float32(work: Path, data: Path, cpu: bool) -> tuple[bool, str]:
    """20 float32 steps on the GPU and on the CPU (two processes), step by step."""
    out = {}
    for side, platform in (("gpu", "cpu" if cpu else "cuda"), ("cpu", "cpu")):
        env = {**os.environ, "JAX_PLATFORMS": platform, "JAX_DEFAULT_MATMUL_PRECISION": "highest"}
        run([sys.executable, "-m", "nanogptx.train", "--config", str(ROOT / "config/tiny.toml"),
             *TINY, "--data", str(data), "--out", str(work / side), "--checkpoints",
             str(work / f"{side}-ckpt")], env=env)  # fmt: skip
        out[side] = losses(work / side)
    steps = sorted(out["cpu"])
    worst = max(abs(out["gpu"][s] - out["cpu"][s]) for s in steps)
    what = "CPU against CPU (--cpu: the comparison only)" if cpu else "GPU against CPU"
    return worst <= FLOAT32_LIMIT, (
        f"{what}, {len(steps)} steps: largest loss difference {worst:.2e} (limit "
        f"{FLOAT32_LIMIT:.0e}); step 19: {out['gpu'][steps[-1]]:.6f} / {out['cpu'][steps[-1]]:.6f}"
    )


def attention(cpu: bool) -> tuple[bool, str]:
    """One loss and its gradients with cuDNN's and XLA's attention in bfloat16 (with --cpu,
    XLA's and einsum), and a float32 reference."""
    import dataclasses

    import jax
    import jax.numpy as jnp
    import numpy as np

    from nanogptx import config, model, runtime

    cfg = config.load(None, ["model.n_layer=4", "model.n_head=4", "model.n_embd=256",
                             "model.block_size=256", "model.vocab_size=512"]).model  # fmt: skip
    params = model.init_params(cfg, 512, jax.random.key(0))
    ids = jax.random.randint(jax.random.key(1), (8, 257), 0, 512)
    x, y = ids[:, :-1], ids[:, 1:]
    base = runtime.choose(cfg, jax.default_backend(), "bfloat16",
                          runtime.capability_of(jax.devices()[0]))  # fmt: skip
    names = ("xla", "einsum") if cpu else ("cudnn", "xla")

    def loss_and_grads(attention: str, dtype: object) -> tuple[float, np.ndarray]:
        rt = dataclasses.replace(base, attention=attention)
        f = jax.jit(jax.value_and_grad(
            lambda p: model.loss_fn(p, x, y, cfg, rt=rt, compute_dtype=dtype)[0]))  # fmt: skip
        with jax.default_matmul_precision("highest"):
            loss, g = f(params)
        flat = np.concatenate([np.asarray(v, np.float64).ravel() for v in jax.tree.leaves(g)])
        return float(loss), flat

    (la, ga), (lb, gb) = (loss_and_grads(n, jnp.bfloat16) for n in names)
    l32, g32 = loss_and_grads("xla" if not cpu else "einsum", jnp.float32)

    def rel(u: np.ndarray, v: np.ndarray) -> float:
        return float(np.linalg.norm(u - v) / np.linalg.norm(v))

    dl, dg = abs(la - lb) / abs(lb), rel(ga, gb)
    ea, eb = rel(ga, g32), rel(gb, g32)
    ok = dl <= LOSS_LIMIT and dg <= GRAD_LIMIT and ea <= 2 * eb + 1e-6
    head = f"{names[0]} against {names[1]}" + (" (--cpu: cuDNN needs a GPU)" if cpu else "")
    return ok, (f"{head}, bfloat16: loss {dl:.1e} relative (limit {LOSS_LIMIT:.1e}), "
                f"gradients {dg:.1e} relative L2 (limit {GRAD_LIMIT:.1e}); gradients against "
                f"float32: {names[0]} {ea:.1e}, {names[1]} {eb:.1e}; loss {la:.5f} / {lb:.5f} / "
                f"float32 {l32:.5f}")  # fmt: skip


def gpt2(work: Path, cpu: bool) -> tuple[bool, str]:
    """The shipped GPT-2 124M recipe for 50 steps at its automatic micro-batch."""
    import jax
    from bench_train import synthetic_prepared

    from nanogptx import config, logbook, memory, train

    data = synthetic_prepared(work / "synthetic-gpt2", 50257)
    steps = 3 if cpu else 50
    overrides = [f"train.max_iters={steps}", "train.eval_interval=100000", "train.eval_iters=1",
                 "train.checkpoint_interval=0", "logging.log_interval=1"]  # fmt: skip
    if cpu:  # a stand-in small enough for a CPU
        overrides += ["model.n_layer=2", "model.n_embd=128", "model.n_head=2",
                      "model.block_size=128", "train.total_batch_tokens=8192",
                      "train.compute_dtype=float32"]  # fmt: skip
    cfg = config.load(ROOT / "config/gpt2-124m-fineweb.toml", overrides)
    out = work / "gpt2-model"
    summary = train.train(cfg, data, out, work / "gpt2-ckpt")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    timed = [r for r in records if r["kind"] == "train" and r["step"] >= min(10, steps - 1)]
    tok_s = statistics.median(r["tokens_per_s"] for r in timed)
    mfus = [r["mfu"] for r in timed if r["mfu"] is not None]
    prov = json.loads((out / "provenance.json").read_text())
    mb = prov["micro_batch"]
    planned = max(mb["memory_bytes"].values(), default=None)
    stats = jax.local_devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    # The plan must not underestimate: what the device measured stays within the largest
    # program's figure, plus 5% for the allocator's rounding and the next batch placed early.
    within = peak is not None and planned is not None and peak <= PEAK_SLACK * planned
    ok = summary["step"] == steps and (cpu or within)
    mfu = f"MFU {100 * statistics.median(mfus):.1f}%" if mfus else "no MFU (peak unknown)"
    peak_flops = logbook.peak_flops(cfg.train)[0]
    if peak_flops:
        mfu += f" of {peak_flops / 1e12:.0f} TFLOP/s"
    if peak is None or planned is None:
        measured = "peak memory: none measured (no memory_stats) or planned (no budget)"
    else:
        measured = (
            f"peak memory {memory.gib(peak)} GiB measured, plan {memory.gib(planned)} "
            f"GiB for its largest program ({peak / planned:.2f}x; limit {PEAK_SLACK}x)"
        )
    head = "stand-in (--cpu) " if cpu else ""
    return ok, (
        f"{head}micro-batch {mb['batch_size']} x {cfg.model.block_size}, "
        f"{mb['micro_batches']} per step; {tok_s:,.0f} tokens/s, {mfu}; {measured}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mirror", type=Path, default=ASSETS if ASSETS.is_dir() else None,
                        help="where the tiny run's dataset is downloaded from (default: "
                        "../shared/assets where it exists, else the internet)")  # fmt: skip
    parser.add_argument("--cpu", action="store_true", help="the parts a CPU can run, smaller")
    parser.add_argument("--only", help="comma-separated rows to run (workflow,float32,...)")
    args = parser.parse_args()
    chosen = args.only.split(",") if args.only else list(ROWS)
    if unknown := [name for name in chosen if name not in ROWS]:
        parser.error(f"--only {args.only}: no row {', '.join(unknown)}; the rows: "
                     f"{','.join(ROWS)}")  # fmt: skip
    if args.cpu:  # and its subprocesses: JAX's CUDA plugin, where installed, looks for no GPU
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    else:
        import jax

        if jax.default_backend() != "gpu":
            sys.exit(f"gpu_check: no GPU here (JAX's backend is {jax.default_backend()}): "
                     "install the cuda extra on a GPU machine, or pass --cpu")  # fmt: skip
    from bench_train import synthetic_prepared

    work = Path(tempfile.mkdtemp(prefix="nanogptx-gpu-check-"))
    rows = {
        "workflow": lambda: workflow(work / "workflow", args.mirror, args.cpu),
        "float32": lambda: float32(work, synthetic_prepared(work / "synthetic", 65), args.cpu),
        "attention": lambda: attention(args.cpu),
        "gpt2-124m": lambda: gpt2(work, args.cpu),
    }
    assert list(rows) == list(ROWS)
    (work / "workflow").mkdir()
    results = []
    for name in chosen:
        t0 = time.perf_counter()
        try:
            ok, text = rows[name]()
        except Exception as e:  # a failed row is a result; the others still run
            ok, text = False, f"{type(e).__name__}: {str(e).strip()[-1500:]}"
        results.append((name, "ok" if ok else "FAIL", f"{time.perf_counter() - t0:.0f} s", text))
        print(f"{name}: {results[-1][1]} ({results[-1][2]})", file=sys.stderr, flush=True)
    width = max(len(r[0]) for r in results)
    print(f"\n{'check'.ljust(width)}  result  time   figures")
    for name, status, seconds, text in results:
        print(f"{name.ljust(width)}  {status.ljust(6)}  {seconds.rjust(5)}  {text}")
    print(f"(work files in {work})")
    sys.exit(0 if all(r[1] == "ok" for r in results) else 1)


if __name__ == "__main__":
    main()
