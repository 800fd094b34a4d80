"""The tiny run trained by 1 process and by 2 processes joined by jax.distributed (gloo on CPU,
1 device each, the same global batch): both loss curves side by side, and how far apart they are;
also against 1 process with 2 (virtual) devices, which sums the gradient in the same order.

    python benchmarks/bench_multiprocess.py [--steps 300] [--srun] [--out multiprocess.svg]

2 processes: on 127.0.0.1 through JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/JAX_PROCESS_ID, or
with --srun as one SLURM job step of 2 tasks (bash tests/slurm/cluster.sh up starts a cluster).
Data: Tiny Shakespeare from ../shared/assets, downloaded (as a mirror) and prepared by the stages.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT.parent / "shared" / "assets"
RUN = ROOT / "config" / "tiny.toml"


def prepare_tiny(work: Path) -> Path:
    from nanogptx import config, download, prepare

    cfg = config.load(RUN)
    raw, out = work / "raw" / "tinyshakespeare", work / "prepared" / config.data_id(cfg)
    download.download(cfg, raw, mirror=str(ASSETS))
    prepare.prepare(cfg, raw, out, 2)
    return out


def launch(
    args: list[str], n: int, devices: int, use_srun: bool, log: Path
) -> list[subprocess.Popen]:
    """n training processes of one job (n = 1: a plain process with `devices` CPU devices)."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "WANDB_MODE": "disabled"}
    if n == 1:
        flags = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"
        env["XLA_FLAGS"] = flags.strip()
        return [subprocess.Popen(args, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT)]
    if use_srun:
        srun = ["srun", f"--ntasks={n}", "--cpus-per-task=1", "--kill-on-bad-exit=1"]
        return [
            subprocess.Popen(srun + args, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
        ]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    job = {"JAX_COORDINATOR_ADDRESS": address, "JAX_NUM_PROCESSES": str(n)}
    return [
        subprocess.Popen(
            args,
            env={**env, **job, "JAX_PROCESS_ID": str(i)},
            stdout=open(log.with_suffix(f".{i}.log"), "wb"),
            stderr=subprocess.STDOUT,
        )
        for i in range(n)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="train steps (the tiny run: 300)")
    parser.add_argument("--srun", action="store_true", help="2 processes as 2 SLURM tasks")
    parser.add_argument("--out", type=Path, default=Path("multiprocess.svg"), help="SVG figure")
    parser.add_argument("--data", type=Path, help="prepared data directory (default: make one)")
    args = parser.parse_args()

    from nanogptx import report

    work = Path(tempfile.mkdtemp(prefix="nanogptx-bench-mp-"))
    data = args.data or prepare_tiny(work)
    overrides = [
        f"train.max_iters={args.steps}", f"train.lr_decay_iters={args.steps}",
        "train.checkpoint_interval=0", "logging.log_interval=5",
    ]  # fmt: skip
    records, walls = {}, {}
    runs = {"1 process": (1, 1), "2 processes": (2, 1), "1 process, 2 devices": (1, 2)}
    for name, (n, devices) in runs.items():
        run = work / f"p{n}d{devices}"
        cmd = [
            sys.executable, "-m", "nanogptx.train", "--config", str(RUN), *overrides,
            "--data", str(data), "--out", str(run / "model"), "--checkpoints", str(run / "ckpt"),
        ]  # fmt: skip
        t0 = time.perf_counter()
        procs = launch(cmd, n, devices, args.srun, run.with_suffix(".log"))
        if any(p.wait() != 0 for p in procs):
            sys.exit(f"{name} failed: see the logs in {work}")
        walls[name] = time.perf_counter() - t0
        records[name] = report.read_metrics(run / "model" / "metrics.jsonl")

    how = "srun --ntasks=2" if args.srun else "127.0.0.1"
    title = f"tiny run, {args.steps} steps: 1 process vs 2 processes ({how}, gloo, 1 CPU each)"
    args.out.write_text(report.curves_svg({k: records[k] for k in list(runs)[:2]}, title))
    for a, b in (("1 process", "2 processes"), ("1 process, 2 devices", "2 processes")):
        for kind, key in (("train", "loss"), ("eval", "val_loss")):
            x, y = ({r["step"]: r[key] for r in records[k] if r["kind"] == kind} for k in (a, b))
            assert sorted(x) == sorted(y), (kind, sorted(x), sorted(y))
            s = max(x, key=lambda s: abs(x[s] - y[s]))
            print(
                f"{key} at {len(x)} steps: max |{a} - {b}| = {abs(x[s] - y[s]):.2e} "
                f"(step {s}: {x[s]:.6f} vs {y[s]:.6f}, relative {abs(x[s] - y[s]) / x[s]:.1e})"
            )
    for name, seconds in walls.items():
        ms = [r["ms_per_iter"] for r in records[name] if r["kind"] == "train"][1:]
        print(f"{name}: {seconds:.1f} s wall, median {sorted(ms)[len(ms) // 2]:.1f} ms/iter")
    print(f"figure: {args.out}")


if __name__ == "__main__":
    main()
