"""The table (docs/gpus.md) of the shipped runs' memory plans: each run on one H100, on eight and on
one A6000, compiled without a GPU (the cuda extra: pip install -e ".[cuda]"), with the
micro-batch it runs with and the GiB per device of each program against the budget.

    python benchmarks/plan_table.py [RUN ...]     # default: every config/*.toml

Prints a Markdown table (python -m nanogptx.plan --config config/RUN.toml --target h100
--devices 8 gives one row's details). Sampling runs on one GPU whatever the training's count,
and the eval stage's figures are given for one, so the eight-H100 rows leave them out.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # compile-only GPUs: no GPU backend needed

ROOT = Path(__file__).resolve().parents[1]
CHAR_VOCAB = 65  # Tiny Shakespeare's characters
TARGETS = (("h100", 1, ("train", "sample", "eval")), ("h100", 8, ("train",)),
           ("a6000", 1, ("train", "sample", "eval")))  # fmt: skip
COLUMNS = ("train_step", "diagnostics_step", "eval_step", "sample_loop", "eval_val_loss")


def main() -> None:
    from nanogptx import config, memory, plan

    runs = sys.argv[1:] or sorted(p.stem for p in (ROOT / "config").glob("*.toml"))
    print("| run | GPUs | micro-batch | " + " | ".join(c.replace("_", " ") for c in COLUMNS)
          + " | budget |")  # fmt: skip
    print("|---" * (len(COLUMNS) + 4) + "|")
    t0 = time.perf_counter()
    for run in runs:
        cfg = config.load(ROOT / "config" / f"{run}.toml")
        vocab = CHAR_VOCAB if cfg.tokenizer.name == "char" and not cfg.model.vocab_size else None
        for target, n, stages in TARGETS:
            p = plan.plan_run(cfg, target, n, vocab, stages=stages)
            gpus = f"{n} x {target.upper()}"
            errors = [q.error for q in p.programs if q.error]
            if errors:
                micro = f"refused: {errors[0]}"
            else:
                auto = " (auto)" if cfg.train.batch_size == 0 else ""
                micro = f"{p.micro.batch_size} x {p.micro.micro_batches}{auto}"
            cells = []
            for name in COLUMNS:
                q = next((q for q in p.programs if q.name == name and q.usage), None)
                cells.append("" if q is None else memory.gib(q.usage.total)
                             + ("" if q.fits else " (does not fit)"))  # fmt: skip
            print(f"| {run} | {gpus} | {micro} | " + " | ".join(cells)
                  + f" | {memory.gib(p.budget.bytes)} |", flush=True)  # fmt: skip
    print(f"\n(GiB per device; micro-batch: rows x micro-batches per step; "
          f"{time.perf_counter() - t0:.0f} s)")  # fmt: skip


if __name__ == "__main__":
    main()
