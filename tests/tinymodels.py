"""Small random models written as the train stage writes them, for the eval and harness tests."""

from __future__ import annotations

from pathlib import Path

from nanogptx import tokenizer


def random_gpt2_model(root: Path, n_layer: int, block_size: int, seed: int) -> tuple:
    """A random model in GPT-2 tokens written as the train stage writes one (root/model), its
    weights scaled up 8x so that its choices are far from ties: (model dir, params, config)."""
    import jax

    from nanogptx import checkpoint, config, model

    keys = {"n_layer": n_layer, "n_head": 2, "n_embd": 16, "block_size": block_size,
            "vocab_size": 50257}  # fmt: skip
    cfg = config.load(None, [f"model.{k}={v}" for k, v in keys.items()])
    params = model.init_params(cfg.model, 50257, jax.random.key(seed))
    params = jax.tree.map(lambda w: w * 8.0 if w.ndim >= 2 else w, params)
    checkpoint.save_model(root / "model", params, cfg, tokenizer.gpt2().identity(), 0)
    return root / "model", params, cfg.model
