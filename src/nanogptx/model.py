"""GPT-2 in pure JAX: the architecture, written once and read top-down. Parameters, their
initialisation, embeddings, attention, the MLP, the block, the forward pass (for training, and
with a KV cache for sampling, through the same block) and the loss.

No I/O, no devices, no questions about the platform: the primitives (kernels.FAST or
kernels.REFERENCE), the attention implementation and the layer unrolling come in a
runtime.Runtime, chosen outside (runtime.choose). Dimension letters used in names:
    B batch, L positions, M key positions, D width (n_embd), H heads, K head width,
    F MLP width (4 D), V vocabulary, N layers, C 3 (q, k, v), T new tokens (sampling),
    I and O a matmul's input and output widths, G batch times heads (B H), W window (cache).
The numerics are nanoGPT's.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from nanogptx.config import ModelConfig
from nanogptx.runtime import Runtime

Params = dict[str, Any]
# Per layer, the keys and values of a window of W positions, batch and heads merged in front:
# (k_GxWxK, v_GxWxK). sample.init_cache makes it; attention writes into it.
Cache = tuple[jax.Array, jax.Array]
DEFAULT = Runtime()


# ---------------------------------------------------------------- parameters


def init_params(cfg: ModelConfig, vocab_size: int, key: jax.Array) -> Params:
    """GPT-2 initialisation: normal(0.02), residual projections scaled by 1/sqrt(2 N). Per-layer
    parameters are stacked on a leading layer axis under "blocks"."""
    N, D, L, V = cfg.n_layer, cfg.n_embd, cfg.block_size, vocab_size
    F = 4 * D
    std, proj_std = 0.02, 0.02 / math.sqrt(2 * N)
    names = ["wte", "wpe", "attn", "attn_proj", "fc", "fc_proj"]
    k = dict(zip(names, jax.random.split(key, 6), strict=True))

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
    """True for the leaves that get weight decay: every matrix (nanoGPT's p.dim() >= 2), per
    layer for the stacked blocks; False for gains and biases."""

    def is_matrix(path: tuple, x: Any) -> bool:
        per_layer = path[0].key == "blocks"
        return x.ndim - per_layer >= 2

    return jax.tree_util.tree_map_with_path(is_matrix, params)


def count_params(params: Params, non_embedding: bool = True) -> int:
    """Parameter count; nanoGPT leaves out the position embeddings (wte is tied to the head)."""
    n = sum(x.size for x in jax.tree.leaves(params))
    return n - params["wpe"].size if non_embedding else n


def flops_per_token(cfg: ModelConfig, n_params: int) -> float:
    """Training FLOPs per token, nanoGPT's estimate (PaLM appendix B): 6 N + 12 L H K T."""
    K = cfg.n_embd // cfg.n_head
    return 6 * n_params + 12 * cfg.n_layer * cfg.n_head * K * cfg.block_size


# ---------------------------------------------------------------- layers


def layer_norm(x_BxLxD: jax.Array, g_D: jax.Array, b_D: jax.Array | None, rt: Runtime) -> jax.Array:
    """LayerNorm in float32 whatever the compute dtype (eps 1e-5 as torch)."""
    y = rt.kernels.normalize(x_BxLxD.astype(jnp.float32), g_D.astype(jnp.float32))
    if b_D is not None:
        y = y + b_D
    return y.astype(x_BxLxD.dtype)


def linear(x: jax.Array, p: Params, name: str, dtype: Any, rt: Runtime) -> jax.Array:
    """x @ p[name_w] + p[name_b] (when the model has biases), in the compute dtype."""
    y = rt.kernels.matmul(x, p[f"{name}_w"].astype(dtype))
    return y + p[f"{name}_b"].astype(dtype) if f"{name}_b" in p else y


def dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


def embed(params: Params, ids_BxL: jax.Array, pos: jax.Array | int) -> jax.Array:
    """Token plus learned position embeddings of positions pos..pos+L-1."""
    L = ids_BxL.shape[1]
    return params["wte"][ids_BxL] + jax.lax.dynamic_slice_in_dim(params["wpe"], pos, L)


def attention(
    q_BxLxHxK: jax.Array,
    k_BxLxHxK: jax.Array,
    v_BxLxHxK: jax.Array,
    rt: Runtime,
    *,
    rate: float = 0.0,
    key: jax.Array | None = None,
    pos: jax.Array | int = 0,
    cache: Cache | None = None,
) -> tuple[jax.Array, Cache | None]:
    """Causal self-attention of L new positions pos..pos+L-1. Without a cache they attend to
    each other (training); with one, their keys and values are written into it at pos and
    they attend to every cached position up to their own (entries after a query are masked, so
    stale ones from an earlier window do no harm). Returns the output and the cache."""
    B, L, H, K = q_BxLxHxK.shape
    scale = 1.0 / math.sqrt(K)
    if cache is not None:
        # In the cache layout: batch and heads merged in front, so that each decoding step
        # updates the cache in place and the dots read it as it lies (XLA's CPU backend copies
        # a stacked or position-major cache whole on every step).
        def heads_first(t_BxLxHxK: jax.Array) -> jax.Array:
            return t_BxLxHxK.transpose(0, 2, 1, 3).reshape(B * H, L, K)

        k_GxWxK, v_GxWxK = cache
        k_GxWxK = jax.lax.dynamic_update_slice(k_GxWxK, heads_first(k_BxLxHxK), (0, pos, 0))
        v_GxWxK = jax.lax.dynamic_update_slice(v_GxWxK, heads_first(v_BxLxHxK), (0, pos, 0))
        W = k_GxWxK.shape[1]
        visible_LxW = jnp.arange(W)[None, :] <= pos + jnp.arange(L)[:, None]
        att_GxLxW = jnp.einsum("glk,gwk->glw", heads_first(q_BxLxHxK), k_GxWxK) * scale
        att_GxLxW = jax.nn.softmax(jnp.where(visible_LxW, att_GxLxW, -jnp.inf), axis=-1)
        y_GxLxK = jnp.einsum("glw,gwk->glk", att_GxLxW, v_GxWxK)
        return y_GxLxK.reshape(B, H, L, K).transpose(0, 2, 1, 3), (k_GxWxK, v_GxWxK)
    if rt.attention != "einsum" and (key is None or rate == 0.0):
        y = jax.nn.dot_product_attention(
            q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, is_causal=True, implementation=rt.attention
        )
        return y, None
    att_BxHxLxM = jnp.einsum("blhk,bmhk->bhlm", q_BxLxHxK, k_BxLxHxK) * scale
    causal_LxM = jnp.tril(jnp.ones((L, L), bool))
    att_BxHxLxM = jnp.where(causal_LxM, att_BxHxLxM.astype(jnp.float32), -jnp.inf)
    att_BxHxLxM = jax.nn.softmax(att_BxHxLxM, axis=-1).astype(q_BxLxHxK.dtype)
    att_BxHxLxM = dropout(att_BxHxLxM, rate, key)
    return jnp.einsum("bhlm,bmhk->blhk", att_BxHxLxM, v_BxLxHxK), None


def mlp(x_BxLxD: jax.Array, p: Params, dtype: Any, rt: Runtime) -> jax.Array:
    h_BxLxF = rt.kernels.gelu(linear(x_BxLxD, p, "fc", dtype, rt))
    return linear(h_BxLxF, p, "fc_proj", dtype, rt)


def block(
    x_BxLxD: jax.Array,
    p: Params,
    cfg: ModelConfig,
    rt: Runtime,
    key: jax.Array | None,
    dtype: Any,
    pos: jax.Array | int = 0,
    cache: Cache | None = None,
) -> tuple[jax.Array, Cache | None]:
    """One pre-LayerNorm transformer block; p holds one layer's slice of params["blocks"]."""
    B, L, D = x_BxLxD.shape
    H = cfg.n_head
    keys = [None] * 3 if key is None else list(jax.random.split(key, 3))

    h_BxLxD = layer_norm(x_BxLxD, p["ln1_g"], p.get("ln1_b"), rt)
    qkv_BxLx3D = linear(h_BxLxD, p, "attn", dtype, rt)
    q_BxLxHxK, k_BxLxHxK, v_BxLxHxK = (
        t.reshape(B, L, H, D // H) for t in jnp.split(qkv_BxLx3D, 3, axis=-1)
    )
    y_BxLxHxK, cache = attention(
        q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, rt, rate=cfg.dropout, key=keys[0], pos=pos, cache=cache
    )
    y_BxLxD = linear(y_BxLxHxK.reshape(B, L, D), p, "attn_proj", dtype, rt)
    x_BxLxD = x_BxLxD + dropout(y_BxLxD, cfg.dropout, keys[1])

    h_BxLxD = layer_norm(x_BxLxD, p["ln2_g"], p.get("ln2_b"), rt)
    y_BxLxD = mlp(h_BxLxD, p, dtype, rt)
    return x_BxLxD + dropout(y_BxLxD, cfg.dropout, keys[2]), cache


def head(params: Params, x_BxLxD: jax.Array, rt: Runtime) -> jax.Array:
    """Final LayerNorm and the head tied to wte, in float32 so logits and loss keep precision."""
    x_BxLxD = layer_norm(x_BxLxD, params["lnf_g"], params.get("lnf_b"), rt)
    return x_BxLxD.astype(jnp.float32) @ params["wte"].T


# ---------------------------------------------------------------- the model


def forward(
    params: Params,
    ids_BxL: jax.Array,
    cfg: ModelConfig,
    *,
    rt: Runtime = DEFAULT,
    dropout_key: jax.Array | None = None,
    compute_dtype: Any = jnp.float32,
) -> jax.Array:
    """Logits (float32) for every position; dropout only where a dropout_key is given."""
    keys = None if dropout_key is None else jax.random.split(dropout_key, cfg.n_layer + 1)
    x_BxLxD = embed(params, ids_BxL, 0)
    x_BxLxD = dropout(x_BxLxD, cfg.dropout, None if keys is None else keys[-1])
    x_BxLxD = x_BxLxD.astype(compute_dtype)

    def step(x_BxLxD: jax.Array, layer: tuple[Params, jax.Array | None]) -> tuple:
        p, key = layer
        return block(x_BxLxD, p, cfg, rt, key, compute_dtype)[0], None

    layer_keys = None if keys is None else keys[:-1]
    x_BxLxD, _ = jax.lax.scan(step, x_BxLxD, (params["blocks"], layer_keys), unroll=rt.unroll)
    return head(params, x_BxLxD, rt)


def forward_cached(
    params: Params,
    layers: list[Params],
    ids_BxL: jax.Array,
    pos: jax.Array | int,
    cache: list[Cache],
    cfg: ModelConfig,
    rt: Runtime = DEFAULT,
) -> tuple[jax.Array, list[Cache]]:
    """L new tokens at positions pos..pos+L-1 through the same blocks, against a KV cache per
    layer (layers: params["blocks"] sliced per layer once, outside a decoding loop). Returns the
    logits of the last token (float32) and the cache with their keys and values written in."""
    x_BxLxD = embed(params, ids_BxL, pos)
    new_cache = []
    for p, c in zip(layers, cache, strict=True):
        x_BxLxD, c = block(x_BxLxD, p, cfg, rt, None, jnp.float32, pos, c)
        new_cache.append(c)
    return head(params, x_BxLxD[:, -1], rt), new_cache


def loss_fn(
    params: Params,
    ids_BxL: jax.Array,
    targets_BxL: jax.Array,
    cfg: ModelConfig,
    *,
    rt: Runtime = DEFAULT,
    dropout_key: jax.Array | None = None,
    compute_dtype: Any = jnp.float32,
) -> jax.Array:
    """Mean next-token cross-entropy in float32."""
    logits_BxLxV = forward(
        params, ids_BxL, cfg, rt=rt, dropout_key=dropout_key, compute_dtype=compute_dtype
    )
    logp_BxLxV = jax.nn.log_softmax(logits_BxLxV, axis=-1)
    nll_BxL = -jnp.take_along_axis(logp_BxLxV, targets_BxL[..., None], axis=-1)[..., 0]
    return nll_BxL.mean()
