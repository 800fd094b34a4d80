"""ms/iter of nanoGPT's CPU recipe: ours against nanoGPT's own train.py (eager and with
torch.compile), each a subprocess, alternating in one run, best of --repeats.

    pip install torch==2.13.0   # any CPU build; not a dependency of nanogptx
    git clone https://github.com/karpathy/nanoGPT ~/nanoGPT
    python benchmarks/bench_nanogpt.py --nanogpt ~/nanoGPT [--steps 300] [--repeats 3]

nanoGPT runs its README's CPU command (`train.py config/train_shakespeare_char.py --device=cpu
--compile=False --eval_iters=20 --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4
--n_head=4 --n_embd=128 --max_iters=N --lr_decay_iters=N --dropout=0.0`) on Tiny Shakespeare from
../shared/assets (its prepare.py downloads nothing when input.txt is there); ours runs
benchmarks/bench_train.py on config/shakespeare-char.toml, the same recipe. Each side's figure
is the median ms/iter of its steps after the first 10 (nanoGPT's printed `time`, ours the
train stage's). MFU is ours, against the float32 matmul peak the train stage measures in the
same run.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT.parent / "shared" / "assets"


def nanogpt(checkout: Path, steps: int, compile: bool) -> float:
    cmd = [
        sys.executable, "train.py", "config/train_shakespeare_char.py", "--device=cpu",
        f"--compile={compile}", "--eval_iters=20", "--log_interval=1", "--block_size=64",
        "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128", f"--max_iters={steps}",
        f"--lr_decay_iters={steps}", "--dropout=0.0", f"--eval_interval={steps + 1}",
        "--out_dir=/tmp/nanogptx-bench-nanogpt-out",
    ]  # fmt: skip
    out = subprocess.run(cmd, cwd=checkout, capture_output=True, text=True, check=True).stdout
    ms = [float(t) for i, t in re.findall(r"iter (\d+): loss [\d.]+, time ([\d.]+)ms", out)
          if int(i) >= 10]  # fmt: skip
    return statistics.median(ms)


def ours(steps: int) -> tuple[float, str]:
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_train.py"), "--steps", str(steps),
           "--measure-peak", "logging.stats_interval=100"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    ms, mfu = re.search(r"median ([\d.]+) ms/iter, [\d,]+ tokens/s, (MFU [\d.]+%)", out).groups()
    peak = re.search(r"peak for MFU: (\d+) GFLOP/s", out).group(1)
    return float(ms), f"{mfu} of a measured {peak} GFLOP/s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nanogpt", type=Path, required=True, help="a nanoGPT checkout")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    args = parser.parse_args()
    data = args.nanogpt / "data" / "shakespeare_char"
    if not (data / "train.bin").exists():
        shutil.copy(ASSETS / "tinyshakespeare" / "input.txt", data / "input.txt")
        subprocess.run([sys.executable, "prepare.py"], cwd=data, check=True, capture_output=True)
    sides = ["ours", "nanoGPT eager"] + ([] if args.no_compile else ["nanoGPT torch.compile"])
    best: dict[str, float] = {}
    mfu = ""
    for i in range(args.repeats):
        for side in sides:
            if side == "ours":
                ms, how = ours(args.steps)
                mfu = how if ms < best.get(side, 1e9) else mfu
            else:
                ms = nanogpt(args.nanogpt, args.steps, compile="compile" in side)
            print(f"#{i} {side}: median {ms:.1f} ms/iter", flush=True)
            best[side] = min(best.get(side, 1e9), ms)
    print(f"\nbest of {args.repeats} (median ms/iter over {args.steps} steps):")
    for side, ms in best.items():
        print(f"  {side}: {ms:.1f} ms/iter, {best[side] / best['ours']:.2f}x ours")
    print(f"  ours: {mfu}")


if __name__ == "__main__":
    main()
