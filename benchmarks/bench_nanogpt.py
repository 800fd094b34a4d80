"""ms/iter of nanoGPT's CPU recipes: ours against nanoGPT's own train.py (eager and with
torch.compile), each a subprocess, alternating in one run, best of --repeats; with the user and
system CPU time of each run.

    pip install torch==2.13.0   # any CPU build; not a dependency of nanogptx
    git clone https://github.com/karpathy/nanoGPT ~/nanoGPT
    python benchmarks/bench_nanogpt.py --nanogpt ~/nanoGPT [--recipes char,gpt2] [--repeats 3]
    python benchmarks/bench_nanogpt.py --nanogpt ~/nanoGPT --baseline ~/nanogptx-before/src

Two recipes, the same shapes and data on both sides:
  - char: nanoGPT's README CPU command (`train.py config/train_shakespeare_char.py
    --device=cpu --compile=False --eval_iters=20 --log_interval=1 --block_size=64
    --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --max_iters=N --lr_decay_iters=N+1
    --dropout=0.0`) on Tiny Shakespeare characters; ours: config/shakespeare-char.toml.
  - gpt2: the same command with `--dataset=shakespeare --block_size=128`: Tiny Shakespeare in
    GPT-2 tokens (nanoGPT's data/shakespeare), its vocabulary padded to 50,304 rows (nanoGPT
    does that without a meta.pkl); ours: config/shakespeare-gpt2.toml (vocab_multiple 64).
nanoGPT's data preparation (data/*/prepare.py) downloads only when input.txt is missing: this
copies ../shared/assets/tinyshakespeare/input.txt there first. Its GPT-2 prepare.py asks
tiktoken for the GPT-2 files; offline, TIKTOKEN_CACHE_DIR must hold them (docs/datasets.md,
"Offline use"): where it is unset this seeds a temporary one from ../shared/assets/tiktoken with
`nanogptx.tokenizer.seed_tiktoken_cache` and passes it to both sides. nanoGPT's prepare.py then
writes train.bin (301,966 tokens) and val.bin (36,059); our prepare stage tokenizes the same text
the same way (plus the end-of-text separator: 301,967 and 36,060).
Each side's figure is the median ms/iter of its steps after the first 10 (nanoGPT's printed
`time`, ours the train stage's). The CPU time of each run is that of its whole process (start,
compile, data, evaluation at step 0, the steps): user and system seconds, and the system share.
MFU is ours, against the float32 matmul peak the train stage measures in the same run. With
--baseline, another nanogptx source tree (a checkout of an earlier commit: its src/) runs as one
more side, so a change is measured against nanoGPT before and after in the same run.

Where the gpt2 recipe's time went (2026-12-07, 2-core AMD EPYC, jax 0.10.2; the machine shared
with other jobs, load average 7-9), from timing the step's parts in one process, CPU ms per call
(user + system):
  - before: the train step 1,520 (690 of it system time). The output layer and loss 1,425 (689
    system): XLA allocated the 309 MB of logits and as much for their gradient fresh every
    step, above glibc's mmap threshold, so each was page-faulted in anew. The eval step's
    forward 642 (415 system), the blocks' forward and backward 171 (100 system), AdamW over
    the 6.4M-row embedding 28 (21 system), the embedding gradient's scatter into 50,304 rows 46
    (44 system).
  - with kernels.cross_entropy (chunks of 128 positions, gradients computed in the forward):
    the train step 657 (80 system), the output layer and loss 535 (28 system), the eval step
    212 (13). The 80 ms left: a step's temporaries are one 182 MB block, which XLA's worker
    threads allocated from their own malloc arenas (at most 64 MiB each), so it was mapped anew
    every step (46,600 page faults).
  - with one malloc arena (runtime.keep_freed_memory): the train step 584 (3.6 system), the
    output layer and loss 501 (1.7), the blocks 72 (0), AdamW 11, the scatter 1.3, the eval
    step 206 (1.5). The output layer's three matmuls (19.8 GFLOP each, at 200 GFLOP/s about 300
    ms of the two cores) are now most of the step: what is left is compute.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT.parent / "shared" / "assets"
# recipe: (our config, nanoGPT's data directory, nanoGPT's overrides beyond the common ones,
# default steps)
RECIPES = {
    "char": ("shakespeare-char.toml", "shakespeare_char", ["--block_size=64"], 300),
    "gpt2": ("shakespeare-gpt2.toml", "shakespeare", ["--dataset=shakespeare",
                                                      "--block_size=128"], 100),
}  # fmt: skip


def timed(cmd: list[str], **kwargs: object) -> tuple[str, float, float]:
    """Run cmd; its stdout, and the user and system CPU seconds of it and its children."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    run = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if run.returncode:
        sys.exit(f"{' '.join(cmd)} failed ({run.returncode}):\n{run.stderr[-3000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return run.stdout, after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime


def nanogpt(
    checkout: Path, recipe: str, steps: int, compile: bool, out: Path
) -> tuple[float, float, float]:
    # lr_decay_iters past the last step: nanoGPT's get_lr divides by zero at step
    # warmup_iters (100) when lr_decay_iters is 100 too (the gpt2 recipe's 100 steps).
    cmd = [
        sys.executable, "train.py", "config/train_shakespeare_char.py", "--device=cpu",
        f"--compile={compile}", "--eval_iters=20", "--log_interval=1", "--batch_size=12",
        "--n_layer=4", "--n_head=4", "--n_embd=128", f"--max_iters={steps}",
        f"--lr_decay_iters={steps + 1}", "--dropout=0.0", f"--eval_interval={steps + 1}",
        f"--out_dir={out}", *RECIPES[recipe][2],
    ]  # fmt: skip
    out, user, system = timed(cmd, cwd=checkout)
    ms = [float(t) for i, t in re.findall(r"iter (\d+): loss [\d.]+, time ([\d.]+)ms", out)
          if int(i) >= 10]  # fmt: skip
    return statistics.median(ms), user, system


def ours(
    recipe: str, data: Path, steps: int, src: Path | None = None
) -> tuple[float, float, float, str]:
    """Our train stage through bench_train.py; with src, nanogptx from that source tree, run by
    that tree's own bench_train.py and recipe (today's may import modules it lacks)."""
    tree = ROOT if src is None else Path(src).resolve().parent
    cmd = [sys.executable, str(tree / "benchmarks" / "bench_train.py"), "--steps", str(steps),
           "--recipe", str(tree / "config" / RECIPES[recipe][0]), "--data", str(data),
           "--measure-peak", "logging.stats_interval=100"]  # fmt: skip
    env = None if src is None else {**os.environ, "PYTHONPATH": str(src)}
    # In its own tree, whose registries (config/datasets, config/tasks) its code can read.
    out, user, system = timed(cmd, env=env, cwd=tree)
    ms, mfu = re.search(r"median ([\d.]+) ms/iter, [\d,]+ tokens/s, (MFU [\d.]+%)", out).groups()
    peak = re.search(r"peak for MFU: (\d+) GFLOP/s", out).group(1)
    return float(ms), user, system, f"{mfu} of a measured {peak} GFLOP/s"


def prepare(checkout: Path, recipe: str, work: Path) -> Path:
    """nanoGPT's train.bin and val.bin for the recipe (made offline), and our prepared data;
    returns our prepared directory."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_train

    data = checkout / "data" / RECIPES[recipe][1]
    if not (data / "train.bin").exists():
        shutil.copy(ASSETS / "tinyshakespeare" / "input.txt", data / "input.txt")
        subprocess.run([sys.executable, "prepare.py"], cwd=data, check=True, capture_output=True)
    prepared = bench_train.prepare_recipe(ROOT / "config" / RECIPES[recipe][0])
    return Path(shutil.copytree(prepared, work / recipe))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nanogpt", type=Path, required=True, help="a nanoGPT checkout")
    parser.add_argument("--recipes", default="char,gpt2", help="comma-separated: char, gpt2")
    parser.add_argument("--steps", type=int, help="steps per run (default: char 300, gpt2 100)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument(
        "--baseline", type=Path,
        help="another nanogptx source tree (its src/), run as a side of its own: before/after",
    )  # fmt: skip
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="nanogptx-bench-nanogpt-"))
    if not os.environ.get("TIKTOKEN_CACHE_DIR"):
        from nanogptx import tokenizer

        os.environ["TIKTOKEN_CACHE_DIR"] = str(work / "tiktoken")
        tokenizer.seed_tiktoken_cache(ASSETS / "tiktoken", work / "tiktoken")
    recipes = args.recipes.split(",")
    data = {r: prepare(args.nanogpt, r, work) for r in recipes}
    sides = ["ours", *(["baseline"] if args.baseline else []), "nanoGPT eager"]
    sides += [] if args.no_compile else ["nanoGPT torch.compile"]
    for recipe in recipes:
        steps = args.steps or RECIPES[recipe][3]
        best: dict[str, tuple[float, float, float]] = {}
        mfu = ""
        for i in range(args.repeats):
            for side in sides:
                if side == "ours":
                    ms, user, system, how = ours(recipe, data[recipe], steps)
                    mfu = how if ms < best.get(side, (1e9,))[0] else mfu
                elif side == "baseline":
                    ms, user, system, _ = ours(recipe, data[recipe], steps, args.baseline)
                else:
                    compile = "compile" in side
                    out = work / "nanogpt-out"  # this run's own (another may run beside it)
                    ms, user, system = nanogpt(args.nanogpt, recipe, steps, compile, out)
                share = system / (user + system)
                print(f"{recipe} #{i} {side}: median {ms:.1f} ms/iter; CPU user {user:.1f} s, "
                      f"system {system:.1f} s ({100 * share:.0f}%)", flush=True)  # fmt: skip
                if ms < best.get(side, (1e9,))[0]:
                    best[side] = (ms, user, system)
        print(f"\n{recipe}: best of {args.repeats} (median ms/iter over {steps} steps):")
        for side, (ms, user, system) in best.items():
            print(f"  {side}: {ms:.1f} ms/iter, {ms / best['ours'][0]:.2f}x ours; that run's "
                  f"CPU: user {user:.1f} s, system {system:.1f} s "
                  f"({100 * system / (user + system):.0f}%)")  # fmt: skip
        print(f"  ours: {mfu}\n", flush=True)


if __name__ == "__main__":
    main()
