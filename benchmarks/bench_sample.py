"""Sampling speed: nanogptx's KV-cache loop against recomputing the whole window every token.

    python benchmarks/bench_sample.py [--tokens 500] [--repeats 3] [--batches 1,10]

For nanoGPT's baby shakespeare-char model (4 layers, 4 heads, 128 wide, block 64) and its
6-layer, 6-head, 384-wide model at block 256 (vocabulary 65, random weights: speed does not
depend on them), prints tokens/s of
  - recompute: what nanoGPT's generate does (crop to the last block_size tokens, run the whole
    window, sample from the last position), here with our jitted forward and one jitted call
    per token from a Python loop;
  - kv-cache: nanogptx.sample.generate, one compiled loop for the whole generation, with its
    default window_shift (block_size // 4) and with window_shift = 1 (nanoGPT's exact crop).
nanoGPT's own generate runs 598 and 27 tokens/s on these 2-core CPUs (one sample).
Both run after a warm-up (compiled); the best of --repeats runs (fewer for slow ones) is
reported.

Measured 2026-11-21 on the shared 2-core machine under load (load average 3-6), tokens/s:
                          recompute   kv-cache   kv-cache, exact crop   nanoGPT
  baby, 1 sample                998      11339                   1577       598
  baby, 10 samples             2058      21613                   2208
  6x384, 1 sample                21        577                     45        27
  6x384, 10 samples              17       1434                     31
With one sample the 6x384 model streams its 42 MB of float32 weights from memory for every
token (~20 GB/s here), which bounds it near 500-600 tokens/s; a batch shares that read.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from nanogptx import model, runtime, sample
from nanogptx.config import ModelConfig, SampleConfig

MODELS = {
    "baby 4x128 block 64": ModelConfig(
        n_layer=4, n_head=4, n_embd=128, block_size=64, vocab_size=65, bias=False
    ),
    "6x384 block 256": ModelConfig(
        n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=65, bias=False
    ),
}
NANOGPT_TOKENS_PER_S = {"baby 4x128 block 64": 598.0, "6x384 block 256": 27.0}


@functools.partial(jax.jit, static_argnames=("cfg", "s"))
def _next_token(
    params: model.Params, window_BxW: jax.Array, n: jax.Array, key: jax.Array, *,
    cfg: ModelConfig, s: SampleConfig,
) -> jax.Array:  # fmt: skip
    # The window holds the last n tokens at positions 0..n-1 (padding after them is causally
    # invisible), so one compiled forward serves every context length.
    logits_BxWxV = model.forward(params, window_BxW, cfg, rt=runtime.choose(cfg, "cpu"))
    logits_BxV = jax.lax.dynamic_index_in_dim(logits_BxWxV, n - 1, axis=1, keepdims=False)
    logits_BxV = sample.filter_logits(logits_BxV, s.temperature, s.top_k, s.top_p)
    return jax.random.categorical(key, logits_BxV).astype(jnp.int32)


def generate_recompute(
    params: model.Params, prompt: list[int], cfg: ModelConfig, s: SampleConfig
) -> np.ndarray:
    """nanoGPT's generate: every token from a forward pass over the last block_size tokens."""
    W, B = cfg.block_size, s.num_samples
    tokens_BxU = np.zeros((B, len(prompt) + s.max_new_tokens), np.int32)
    tokens_BxU[:, : len(prompt)] = prompt
    key = jax.random.key(s.seed)
    for i in range(s.max_new_tokens):
        end = len(prompt) + i
        n = min(end, W)
        window_BxW = np.zeros((B, W), np.int32)
        window_BxW[:, :n] = tokens_BxU[:, end - n : end]
        tok_B = _next_token(
            params, window_BxW, jnp.int32(n), jax.random.fold_in(key, i), cfg=cfg, s=s
        )
        tokens_BxU[:, end] = np.asarray(tok_B)
    return tokens_BxU[:, len(prompt) :]


def best_seconds(fn: functools.partial, repeats: int, budget_s: float = 20.0) -> float:
    """Best of `repeats` timed runs after a warm-up; fewer when the runs are slow."""
    fn()  # compile
    times: list[float] = []
    while len(times) < repeats and sum(times) < budget_s:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=500, help="new tokens per sample")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", default="1,10", help="samples per batch, comma-separated")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated names")
    args = parser.parse_args()
    runtime.keep_freed_memory("char")  # its models have the character vocabulary (65 rows)
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}; {args.tokens} new tokens")
    print(f"{'model':22s} {'batch':>5s} {'method':24s} {'tokens/s':>10s} {'vs nanoGPT':>10s}")
    for name in args.models.split(","):
        cfg = MODELS[name]
        params = model.init_params(cfg, cfg.vocab_size, jax.random.key(0))
        rt = runtime.choose(cfg, jax.default_backend())
        prompt = [0]  # "\n", nanoGPT's default start
        for B in map(int, args.batches.split(",")):
            s = SampleConfig(num_samples=B, max_new_tokens=args.tokens, top_k=200)
            runs = {
                "recompute (nanoGPT way)": functools.partial(
                    generate_recompute, params, prompt, cfg, s
                ),
                "kv-cache": functools.partial(sample.generate, params, prompt, cfg, s, rt),
                "kv-cache, exact crop": functools.partial(
                    sample.generate,
                    params,
                    prompt,
                    cfg,
                    dataclasses.replace(s, window_shift=1),
                    rt,
                ),
            }
            for method, fn in runs.items():
                tps = B * args.tokens / best_seconds(fn, args.repeats)
                ratio = tps / NANOGPT_TOKENS_PER_S[name]
                print(f"{name:22s} {B:5d} {method:24s} {tps:10.0f} {ratio:9.1f}x", flush=True)


if __name__ == "__main__":
    main()
