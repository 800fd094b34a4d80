"""HellaSwag scoring speed of the eval stage: items per second, the compiled, bucketed path.

    python benchmarks/bench_eval.py [--model tiny|gpt2] [--items 400] [--batch 8] [--repeats 2]

Items in HellaSwag's format with its lengths (a context of about 40 GPT-2 tokens, endings of
about 20), random weights (speed does not depend on them): tiny is 2 layers, 4 heads, 64 wide,
vocabulary 50257, block 1024; gpt2 is GPT-2 124M. Prints items/s of eval.MultipleChoice after a
warm-up run that compiles each length bucket, best of --repeats, and what the 10,042 items of
the validation split would take at that rate. The GPT-2 tokenizer's files come from
../shared/assets/tiktoken when $TIKTOKEN_CACHE_DIR is unset and they are there.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from nanogptx import eval, evaltasks, model, runtime, tokenizer
from nanogptx.config import EvalConfig, ModelConfig

ASSETS = Path(__file__).resolve().parents[2] / "shared" / "assets" / "tiktoken"
WORDS = (
    "the man woman dog sits stands walks into a kitchen then picks up the guitar and plays "
    "slowly while people watch from behind camera shows close shot of his hands"
).split()


def items(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)

    def text(k: int) -> str:
        return " ".join(rng.choice(WORDS, k))

    return [
        {"ctx": text(int(rng.integers(25, 55))), "label": int(rng.integers(4)),
         "endings": [text(int(rng.integers(10, 30))) for _ in range(4)]}
        for _ in range(n)
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("tiny", "gpt2"), default="tiny")
    parser.add_argument("--items", type=int, default=400)
    parser.add_argument("--batch", type=int, default=8, help="eval.batch_size (items)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    if "TIKTOKEN_CACHE_DIR" not in os.environ and ASSETS.is_dir():
        cache = Path(tempfile.mkdtemp(prefix="tiktoken-"))
        tokenizer.seed_tiktoken_cache(ASSETS, cache)
        os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)
    shape = dict(n_layer=2, n_head=4, n_embd=64) if args.model == "tiny" else {}
    m = ModelConfig(**shape, vocab_size=50257, activation="gelu_tanh")
    params = model.init_params(m, 50257, jax.random.key(0))
    rt = runtime.choose(m, jax.default_backend())
    scorer = eval.make_scorer(m, rt)
    tok = tokenizer.gpt2()
    task = evaltasks.get("hellaswag")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / task.options["file"]
        path.write_text("".join(json.dumps(it) + "\n" for it in items(args.items)))
        e = dataclasses.replace(EvalConfig(), batch_size=args.batch)
        s = eval.Setting(e, m, tok, tok.identity(), Path(tmp), None, {"hellaswag": Path(tmp)})
        params = jax.tree.map(jnp.asarray, params)
        eval.MultipleChoice(task, s).score(params, scorer, None)  # warm-up: compiles each bucket
        best = 0.0
        for _ in range(args.repeats):
            t0 = time.perf_counter()  # reading and tokenizing the items, then scoring them
            eval.MultipleChoice(task, s).score(params, scorer, None)
            best = max(best, args.items / (time.perf_counter() - t0))
    print(
        f"{args.model} on {jax.devices()[0].device_kind}: {best:,.1f} HellaSwag items/s (batch "
        f"{args.batch} items); the 10,042 items would take {10_042 / best:,.0f} s"
    )


if __name__ == "__main__":
    main()
