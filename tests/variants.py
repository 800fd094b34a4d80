"""Test helper: the [model] variants (config.ModelConfig), each a set of changes from GPT-2,
for tests that must hold for every architecture the model can be.

COMBINED: GPT-2 and three combinations that between them hold every variant; the default run
tests these. VARIANTS: also each variant alone, which `pytest -m slow` tests (every param()
of the single ones carries the slow mark)."""

from __future__ import annotations

import pytest

COMBINED: dict[str, dict[str, object]] = {
    "gpt2": {},
    # config/shakespeare-char-modern.toml's architecture, with z-loss
    "modern": {
        "position": "rope", "norm": "rmsnorm", "qk_norm": True, "activation": "relu2",
        "tie_embeddings": False, "bias": False, "z_loss": 1e-2,
    },
    "learned-mqa-softcap": {
        "norm_gain": False, "qk_norm": True, "activation": "gelu_tanh", "n_kv_head": 1,
        "logit_softcap": 5.0,
    },
    "rope-gqa-swiglu": {"position": "rope", "activation": "swiglu", "n_kv_head": 2},
}  # fmt: skip
SINGLE: dict[str, dict[str, object]] = {
    "rope": {"position": "rope"},
    "rmsnorm": {"norm": "rmsnorm"},
    "no-gain-no-bias": {"norm_gain": False, "bias": False},
    "qk-norm": {"qk_norm": True},
    "gelu-tanh": {"activation": "gelu_tanh"},
    "relu2": {"activation": "relu2"},
    "swiglu": {"activation": "swiglu"},
    "gqa": {"n_kv_head": 2},
    "mqa": {"n_kv_head": 1},
    "untied": {"tie_embeddings": False},
    "softcap": {"logit_softcap": 5.0},
    "z-loss": {"z_loss": 1e-2},
}
VARIANTS = COMBINED | SINGLE


def every_variant() -> list:
    """pytest.param per variant: the combined ones in the default run, the single ones slow."""
    return [*COMBINED, *(pytest.param(n, marks=pytest.mark.slow) for n in SINGLE)]


# Every variant key is exercised by the default run.
_KEYS = {k for changes in SINGLE.values() for k in changes}
assert _KEYS <= {k for changes in COMBINED.values() for k in changes}, _KEYS
