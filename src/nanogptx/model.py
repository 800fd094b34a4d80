"""GPT-2 in pure JAX: a parameter pytree, its initialisation, the forward pass and the loss.

No I/O and no devices here. Dimension letters used in names:
    B batch, L positions, M key positions, D width (n_embd), H heads, K head width,
    F MLP width (4 D), V vocabulary, N layers, C 3 (q, k, v), T all tokens of a batch (B L),
    I and O a matmul's input and output widths, G batch times heads (B H), W window (cache).
Speed notes (XLA's CPU backend; measured in benchmarks/bench_model.py): matmuls, GELU and
LayerNorm carry hand-written gradients that XLA compiles without large transposes or
recomputation, and the layers are unrolled on CPU. The numerics are nanoGPT's.
"""

from __future__ import annotations

import ctypes
import math
import sys
from typing import Any

import jax
import jax.numpy as jnp

from nanogptx.config import ModelConfig

Params = dict[str, Any]

# Matrices get weight decay (nanoGPT: every parameter with two or more dimensions, per layer).
MATRICES = ("wte", "wpe", "attn_w", "attn_proj_w", "fc_w", "fc_proj_w")


def init_params(cfg: ModelConfig, vocab_size: int, key: jax.Array) -> Params:
    """GPT-2 initialisation: normal(0.02), residual projections scaled by 1/sqrt(2 N)."""
    N, D, L, V = cfg.n_layer, cfg.n_embd, cfg.block_size, vocab_size
    F = 4 * D
    std, proj_std = 0.02, 0.02 / math.sqrt(2 * N)
    k = dict(
        zip(
            ["wte", "wpe", "attn", "attn_proj", "fc", "fc_proj"],
            jax.random.split(key, 6),
            strict=True,
        )
    )

    def normal(key: jax.Array, shape: tuple[int, ...], s: float) -> jax.Array:
        return s * jax.random.normal(key, shape, jnp.float32)

    blocks = {
        "ln1_g": jnp.ones((N, D)),
        "attn_w": normal(k["attn"], (N, D, 3 * D), std),
        "attn_proj_w": normal(k["attn_proj"], (N, D, D), proj_std),
        "ln2_g": jnp.ones((N, D)),
        "fc_w": normal(k["fc"], (N, D, F), std),
        "fc_proj_w": normal(k["fc_proj"], (N, F, D), proj_std),
    }
    params = {
        "wte": normal(k["wte"], (V, D), std),
        "wpe": normal(k["wpe"], (L, D), std),
        "blocks": blocks,
        "lnf_g": jnp.ones((D,)),
    }
    if cfg.bias:
        blocks |= {
            "ln1_b": jnp.zeros((N, D)),
            "attn_b": jnp.zeros((N, 3 * D)),
            "attn_proj_b": jnp.zeros((N, D)),
            "ln2_b": jnp.zeros((N, D)),
            "fc_b": jnp.zeros((N, F)),
            "fc_proj_b": jnp.zeros((N, D)),
        }
        params["lnf_b"] = jnp.zeros((D,))
    return params


def decay_mask(params: Params) -> Params:
    """True for the leaves that get weight decay (the matrices), False for gains and biases."""
    return {
        name: decay_mask(v) if isinstance(v, dict) else name in MATRICES
        for name, v in params.items()
    }


def count_params(params: Params, non_embedding: bool = True) -> int:
    """Parameter count; nanoGPT leaves out the position embeddings (wte is tied to the head)."""
    n = sum(x.size for x in jax.tree.leaves(params))
    return n - params["wpe"].size if non_embedding else n


def flops_per_token(cfg: ModelConfig, n_params: int) -> float:
    """Training FLOPs per token, nanoGPT's estimate (PaLM appendix B): 6 N + 12 L H K T."""
    K = cfg.n_embd // cfg.n_head
    return 6 * n_params + 12 * cfg.n_layer * cfg.n_head * K * cfg.block_size


def keep_freed_memory() -> None:
    """Make glibc keep freed memory in the process. XLA's CPU runtime allocates every step's
    buffers anew, and glibc's defaults hand large freed blocks back to the kernel, so each
    step page-faults them in again: 30-45% of a small model's CPU train step. Call once per
    process before running steps; a no-op outside Linux/glibc."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # another C library (musl)
        return
    libc.mallopt(-3, 64 << 20)  # M_MMAP_THRESHOLD: blocks up to 64 MiB come from the heap
    libc.mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD: keep up to 256 MiB free at the heap top


# Hand-written gradients. JAX's own derivatives of these are correct, but XLA's CPU backend
# fuses them into transposing loops that recompute whole chains of elementwise work per
# element (see benchmarks/bench_model.py); these give the same values to float32 rounding.


@jax.custom_vjp
def matmul(x_TxI: jax.Array, w_IxO: jax.Array) -> jax.Array:
    """x @ w over the last axis of x; its weight gradient is one plain 2-D dot."""
    return x_TxI @ w_IxO


def _matmul_fwd(x: jax.Array, w: jax.Array) -> tuple[jax.Array, tuple]:
    return x @ w, (x, w)


def _matmul_bwd(res: tuple, dy: jax.Array) -> tuple[jax.Array, jax.Array]:
    x, w = res
    dx = dy @ w.T
    # Contract the token axis of two 2-D arrays: a dot that XLA runs without copying a
    # transpose of either operand (a 3-D einsum gets a transposed copy here instead).
    x_TxI, dy_TxO = x.reshape(-1, x.shape[-1]), dy.reshape(-1, dy.shape[-1])
    dw = jax.lax.dot_general(x_TxI, dy_TxO, (((0,), (0,)), ((), ())))
    return dx, dw.astype(w.dtype)


matmul.defvjp(_matmul_fwd, _matmul_bwd)


@jax.custom_vjp
def gelu(x: jax.Array) -> jax.Array:
    """Exact (erf) GELU, as torch.nn.GELU(); same values as jax.nn.gelu(approximate=False),
    whose gradient goes through erfc, which XLA's CPU backend computes slowly."""
    return 0.5 * x * (1.0 + jax.lax.erf(x * (1.0 / math.sqrt(2.0))))


def _gelu_fwd(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    return gelu(x), x


def _gelu_bwd(x: jax.Array, dy: jax.Array) -> tuple[jax.Array]:
    cdf = 0.5 * (1.0 + jax.lax.erf(x * (1.0 / math.sqrt(2.0))))
    pdf = jnp.exp(-0.5 * x * x) * (1.0 / math.sqrt(2.0 * math.pi))
    return ((dy * (cdf + x * pdf)).astype(x.dtype),)


gelu.defvjp(_gelu_fwd, _gelu_bwd)


@jax.custom_vjp
def _normalize(x_BxLxD: jax.Array, g_D: jax.Array) -> jax.Array:
    return _normalize_fwd(x_BxLxD, g_D)[0]


def _normalize_fwd(x: jax.Array, g: jax.Array) -> tuple[jax.Array, tuple]:
    xc = x - x.mean(-1, keepdims=True)
    rstd = jax.lax.rsqrt(jnp.square(xc).mean(-1, keepdims=True) + 1e-5)
    xhat = xc * rstd
    return xhat * g, (xhat, rstd, g)


def _normalize_bwd(res: tuple, dy: jax.Array) -> tuple[jax.Array, jax.Array]:
    xhat, rstd, g = res
    dxhat = dy * g
    dx = rstd * (
        dxhat - dxhat.mean(-1, keepdims=True) - xhat * (dxhat * xhat).mean(-1, keepdims=True)
    )
    dg = (dy * xhat).reshape(-1, xhat.shape[-1]).sum(0)
    return dx, dg


_normalize.defvjp(_normalize_fwd, _normalize_bwd)


def layer_norm(x_BxLxD: jax.Array, g_D: jax.Array, b_D: jax.Array | None) -> jax.Array:
    """LayerNorm in float32 whatever the compute dtype (eps 1e-5 as torch)."""
    y = _normalize(x_BxLxD.astype(jnp.float32), g_D.astype(jnp.float32))
    if b_D is not None:
        y = y + b_D
    return y.astype(x_BxLxD.dtype)


def dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


def attention(
    q_BxLxHxK: jax.Array,
    k_BxMxHxK: jax.Array,
    v_BxMxHxK: jax.Array,
    rate: float,
    key: jax.Array | None,
) -> jax.Array:
    """Causal attention (queries are the last L of the M key positions). On GPU
    jax.nn.dot_product_attention (cuDNN flash attention in 16-bit dtypes); elsewhere, and
    for dropout on the attention weights, explicit einsums, which XLA's CPU backend
    differentiates about twice as fast as dot_product_attention's XLA implementation."""
    L, M = q_BxLxHxK.shape[1], k_BxMxHxK.shape[1]
    if (key is None or rate == 0.0) and L == M and jax.default_backend() == "gpu":
        cudnn = q_BxLxHxK.dtype in (jnp.bfloat16, jnp.float16)
        return jax.nn.dot_product_attention(
            q_BxLxHxK, k_BxMxHxK, v_BxMxHxK, is_causal=True,
            implementation="cudnn" if cudnn else None,
        )  # fmt: skip
    K = q_BxLxHxK.shape[-1]
    att_BxHxLxM = jnp.einsum("blhk,bmhk->bhlm", q_BxLxHxK, k_BxMxHxK) * (1.0 / math.sqrt(K))
    causal_LxM = jnp.tril(jnp.ones((L, M), bool), k=M - L)
    att_BxHxLxM = jnp.where(causal_LxM, att_BxHxLxM.astype(jnp.float32), -jnp.inf)
    att_BxHxLxM = jax.nn.softmax(att_BxHxLxM, axis=-1).astype(q_BxLxHxK.dtype)
    att_BxHxLxM = dropout(att_BxHxLxM, rate, key)
    return jnp.einsum("bhlm,bmhk->blhk", att_BxHxLxM, v_BxMxHxK)


def linear(x: jax.Array, p: Params, name: str, dtype: Any) -> jax.Array:
    """x @ p[name_w] + p[name_b] (when the model has biases), in the compute dtype."""
    y = matmul(x, p[f"{name}_w"].astype(dtype))
    return y + p[f"{name}_b"].astype(dtype) if f"{name}_b" in p else y


def block(
    x_BxLxD: jax.Array, p: Params, cfg: ModelConfig, key: jax.Array | None, dtype: Any
) -> jax.Array:
    """One pre-LayerNorm transformer block; p holds one layer's slice of params["blocks"]."""
    B, L, D = x_BxLxD.shape
    H = cfg.n_head
    keys = [None] * 3 if key is None else list(jax.random.split(key, 3))

    h_BxLxD = layer_norm(x_BxLxD, p["ln1_g"], p.get("ln1_b"))
    qkv_BxLx3D = linear(h_BxLxD, p, "attn", dtype)
    q_BxLxHxK, k_BxLxHxK, v_BxLxHxK = (
        t.reshape(B, L, H, D // H) for t in jnp.split(qkv_BxLx3D, 3, axis=-1)
    )
    y_BxLxHxK = attention(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, cfg.dropout, keys[0])
    y_BxLxD = linear(y_BxLxHxK.reshape(B, L, D), p, "attn_proj", dtype)
    x_BxLxD = x_BxLxD + dropout(y_BxLxD, cfg.dropout, keys[1])

    h_BxLxD = layer_norm(x_BxLxD, p["ln2_g"], p.get("ln2_b"))
    h_BxLxF = gelu(linear(h_BxLxD, p, "fc", dtype))
    y_BxLxD = linear(h_BxLxF, p, "fc_proj", dtype)
    return x_BxLxD + dropout(y_BxLxD, cfg.dropout, keys[2])


def scan_unroll(cfg: ModelConfig) -> int:
    """Layers per lax.scan iteration: all of them on CPU, where XLA cannot fuse or schedule
    across a while loop's iterations and pays for stacking every saved activation (a 4-layer
    model trains about 1.5x faster unrolled); one elsewhere, to keep compiles short."""
    return cfg.n_layer if jax.default_backend() == "cpu" else 1


def forward(
    params: Params,
    ids_BxL: jax.Array,
    cfg: ModelConfig,
    *,
    dropout_key: jax.Array | None = None,
    compute_dtype: Any = jnp.float32,
) -> jax.Array:
    """Logits (float32) for every position; dropout only where a dropout_key is given."""
    B, L = ids_BxL.shape
    x_BxLxD = params["wte"][ids_BxL] + params["wpe"][:L]
    keys = None if dropout_key is None else jax.random.split(dropout_key, cfg.n_layer + 1)
    x_BxLxD = dropout(x_BxLxD, cfg.dropout, None if keys is None else keys[-1])
    x_BxLxD = x_BxLxD.astype(compute_dtype)

    def step(x_BxLxD: jax.Array, layer: tuple[Params, jax.Array | None]) -> tuple:
        p, key = layer
        return block(x_BxLxD, p, cfg, key, compute_dtype), None

    layer_keys = None if keys is None else keys[:-1]
    x_BxLxD, _ = jax.lax.scan(
        step, x_BxLxD, (params["blocks"], layer_keys), unroll=scan_unroll(cfg)
    )
    x_BxLxD = layer_norm(x_BxLxD, params["lnf_g"], params.get("lnf_b"))
    # Tied head, in float32 so logits and loss keep full precision.
    return x_BxLxD.astype(jnp.float32) @ params["wte"].T


def loss_fn(
    params: Params,
    ids_BxL: jax.Array,
    targets_BxL: jax.Array,
    cfg: ModelConfig,
    *,
    dropout_key: jax.Array | None = None,
    compute_dtype: Any = jnp.float32,
) -> jax.Array:
    """Mean next-token cross-entropy in float32."""
    logits_BxLxV = forward(
        params, ids_BxL, cfg, dropout_key=dropout_key, compute_dtype=compute_dtype
    )
    logp_BxLxV = jax.nn.log_softmax(logits_BxLxV, axis=-1)
    nll_BxL = -jnp.take_along_axis(logp_BxLxV, targets_BxL[..., None], axis=-1)[..., 0]
    return nll_BxL.mean()
