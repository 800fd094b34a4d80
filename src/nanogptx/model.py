"""GPT in pure JAX, written once and read top-down: parameters, layers, the block, and the
model's entry points: `forward` (logits), `loss_fn` (training), `forward_cached` (sampling,
the same blocks with a KV cache). GPT-2 with nanoGPT's numerics by default, each variant a
[model] key (config.ModelConfig). No I/O, no devices: primitives, attention implementation
and layer unrolling come in a runtime.Runtime, chosen outside (runtime.choose)."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from nanogptx import kernels
from nanogptx.config import ModelConfig
from nanogptx.runtime import Runtime

# Dimension letters in names: B batch, L positions, M key positions, D width (n_embd), H heads,
# J key/value heads, R query heads per key/value head (H / J), K head width, F MLP width,
# V vocabulary, N layers, T new tokens (sampling), I and O a matmul's input and output widths,
# G batch times key/value heads (B J), W window (cache), Q queries of a group (R L).

Params = dict[str, Any]
# Per layer, the keys and values of a window of W positions, batch and key/value heads merged in
# front: (k_GxWxK, v_GxWxK). Position p lies in slot p % W: with rope the window slides over
# the slots as a ring. sample.init_cache makes it; attention_cached writes into it.
Cache = tuple[jax.Array, jax.Array]
DEFAULT = Runtime()
# model.remat: what the backward of each block recomputes rather than keeps (jax.checkpoint's
# policy; "none" keeps everything). block: only the block's input is kept; dots: the outputs of
# the matmuls without batch dimensions (the linear layers) are kept, the rest recomputed.
REMAT = {
    "block": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


# ---------------------------------------------------------------- parameters


def kv_heads(cfg: ModelConfig) -> int:
    return cfg.n_kv_head or cfg.n_head


def vocab_rows(cfg: ModelConfig) -> int:
    """Embedding rows: model.vocab_size rounded up to model.vocab_multiple (padding rows, whose
    logits head masks)."""
    k = cfg.vocab_multiple or 1
    return -(-cfg.vocab_size // k) * k


def mlp_width(cfg: ModelConfig) -> int:
    """F: model.mlp_width, else 4 D, or for SwiGLU two thirds of that (its two input matrices
    then hold as many weights as GELU's one) rounded up to a multiple of 64."""
    if cfg.mlp_width:
        return cfg.mlp_width
    if cfg.activation == "swiglu":
        return -(-8 * cfg.n_embd // 3 // 64) * 64
    return 4 * cfg.n_embd


def init_params(cfg: ModelConfig, vocab_size: int, key: jax.Array) -> Params:
    """GPT-2 initialisation: normal(0.02), residual projections scaled by 1/sqrt(2 N); gains 1,
    biases 0. Per-layer parameters are stacked on a leading layer axis under "blocks"."""
    N, D, L, V = cfg.n_layer, cfg.n_embd, cfg.block_size, vocab_size
    H, J = cfg.n_head, kv_heads(cfg)
    K, F = D // H, mlp_width(cfg)
    F_in = 2 * F if cfg.activation == "swiglu" else F  # SwiGLU: gate and value side by side
    std, proj_std = 0.02, 0.02 / math.sqrt(2 * N)
    names = ["wte", "wpe", "attn", "attn_proj", "fc", "fc_proj", "head"]
    k = dict(zip(names, jax.random.split(key, len(names)), strict=True))

    def normal(key: jax.Array, shape: tuple[int, ...], s: float) -> jax.Array:
        return s * jax.random.normal(key, shape, jnp.float32)

    def norm(name: str, *shape: int) -> Params:
        """A norm's gain (ones) and, for LayerNorm with biases, its bias (zeros)."""
        out = {f"{name}_g": jnp.ones(shape)} if cfg.norm_gain else {}
        if cfg.bias and cfg.norm == "layernorm":
            out[f"{name}_b"] = jnp.zeros(shape)
        return out

    def linear(name: str, I: int, O: int, s: float) -> Params:
        out = {f"{name}_w": normal(k[name], (N, I, O), s)}
        return out | ({f"{name}_b": jnp.zeros((N, O))} if cfg.bias else {})

    blocks = {
        **norm("ln1", N, D),
        **linear("attn", D, (H + 2 * J) * K, std),  # q, k, v side by side
        **linear("attn_proj", D, D, proj_std),
        **norm("ln2", N, D),
        **linear("fc", D, F_in, std),
        **linear("fc_proj", F, D, proj_std),
    }
    if cfg.qk_norm:
        blocks |= norm("q_norm", N, K) | norm("k_norm", N, K)
    params = {"wte": normal(k["wte"], (V, D), std)}
    if cfg.position == "learned":
        params["wpe"] = normal(k["wpe"], (L, D), std)
    params |= {"blocks": blocks, **norm("lnf", D)}
    if not cfg.tie_embeddings:
        params["head_w"] = normal(k["head"], (D, V), std)
    return params


def decay_mask(params: Params) -> Params:
    """True for the leaves that get weight decay: every matrix (nanoGPT's p.dim() >= 2), per
    layer for the stacked blocks; False for gains and biases."""

    def is_matrix(path: tuple, x: Any) -> bool:
        per_layer = path[0].key == "blocks"
        return x.ndim - per_layer >= 2

    return jax.tree_util.tree_map_with_path(is_matrix, params)


def count_params(params: Params, non_embedding: bool = True) -> int:
    """Parameter count; nanoGPT's leaves out the position embeddings (wte, tied to the head,
    stays in). With an untied head, wte is a lookup only and is left out instead."""
    n = sum(x.size for x in jax.tree.leaves(params))
    if not non_embedding:
        return n
    embeddings = [params["wpe"]] if "wpe" in params else []
    if "head_w" in params:
        embeddings.append(params["wte"])
    return n - sum(x.size for x in embeddings)


def flops_per_token(cfg: ModelConfig, n_params: int) -> float:
    """Training FLOPs per token, nanoGPT's estimate (PaLM appendix B): 6 N + 12 L H K T."""
    K = cfg.n_embd // cfg.n_head
    return 6 * n_params + 12 * cfg.n_layer * cfg.n_head * K * cfg.block_size


# ---------------------------------------------------------------- layers


def norm(x: jax.Array, p: Params, name: str, cfg: ModelConfig, rt: Runtime) -> jax.Array:
    """model.norm over the last axis with p[name_g] and p[name_b] where the model has them, in
    float32 whatever the compute dtype (eps 1e-5 as torch)."""
    g = p.get(f"{name}_g")
    g = jnp.ones(x.shape[-1:], jnp.float32) if g is None else g.astype(jnp.float32)
    y = getattr(rt.kernels, cfg.norm)(x.astype(jnp.float32), g)
    if f"{name}_b" in p:
        y = y + p[f"{name}_b"]
    return y.astype(x.dtype)


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
    """Token embeddings, plus learned position embeddings of positions pos..pos+L-1."""
    x_BxLxD = params["wte"][ids_BxL]
    if "wpe" not in params:  # rotary positions enter in attention
        return x_BxLxD
    return x_BxLxD + jax.lax.dynamic_slice_in_dim(params["wpe"], pos, ids_BxL.shape[1])


def rope(x_BxLxHxK: jax.Array, positions_L: jax.Array, theta: float) -> jax.Array:
    """Rotary embedding: the pairs (x_i, x_{i+K/2}) rotated by position * theta^(-2i/K)
    (the half-split layout of GPT-NeoX and Llama), in float32."""
    K = x_BxLxHxK.shape[-1]
    inv_freq = theta ** (-jnp.arange(0, K, 2, dtype=jnp.float32) / K)
    angle_Lx1xK2 = (positions_L.astype(jnp.float32)[:, None] * inv_freq)[:, None, :]
    cos, sin = jnp.cos(angle_Lx1xK2), jnp.sin(angle_Lx1xK2)
    x1, x2 = jnp.split(x_BxLxHxK.astype(jnp.float32), 2, axis=-1)
    y = jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
    return y.astype(x_BxLxHxK.dtype)


def visible(offset_QxM: jax.Array, window: int | None = None) -> jax.Array:
    """The attention mask's one test: an offset from 0 up to `window` (no limit without one).
    Training passes how far back each key lies from its query (negative: after it); the cache,
    the position each slot holds (negative: never written)."""
    seen_QxM = offset_QxM >= 0
    return seen_QxM & (offset_QxM < window) if window is not None else seen_QxM


def attention(
    q_BxLxHxK: jax.Array,
    k_BxLxJxK: jax.Array,
    v_BxLxJxK: jax.Array,
    rt: Runtime,
    *,
    rate: float = 0.0,
    key: jax.Array | None = None,
    window: int | None = None,
    stats: bool = False,
) -> tuple[jax.Array, jax.Array | None]:
    """Causal self-attention among L positions, query head h attending with key/value head
    h // R to at most `window` positions back (default L). The runtime chooses the
    implementation; dropout (where a key is given), a window shorter than L and `stats` need
    the weights, which only the einsums hold. Returns the output and, with `stats`, the
    largest attention logit (else None)."""
    B, L, H, K = q_BxLxHxK.shape
    J = k_BxLxJxK.shape[2]
    scale = 1.0 / math.sqrt(K)
    window = L if window is None else window
    fused = rt.fused_attention(weights=stats or window < L or (key is not None and rate > 0.0))
    if fused:
        y = jax.nn.dot_product_attention(
            q_BxLxHxK, k_BxLxJxK, v_BxLxJxK, is_causal=True, implementation=fused
        )
        return y, None
    # The R query heads of a key/value head grouped (r); without GQA, the heads as they are
    # (written so, XLA sums the gradients in the order they always had: the same results).
    R = H // J
    q_, kv, att_ = ("bljrk", "bmjk", "bjrlm") if R > 1 else ("blhk", "bmhk", "bhlm")
    q = q_BxLxHxK.reshape(B, L, J, R, K) if R > 1 else q_BxLxHxK
    att = jnp.einsum(f"{q_},{kv}->{att_}", q, k_BxLxJxK) * scale
    att_BxHxLxM = att.reshape(B, H, L, L)
    back_LxM = jnp.arange(L)[:, None] - jnp.arange(L)[None, :]  # how far back key m lies
    visible_LxM = visible(back_LxM, window if window < L else None)
    att_BxHxLxM = jnp.where(visible_LxM, att_BxHxLxM.astype(jnp.float32), -jnp.inf)
    most = att_BxHxLxM.max() if stats else None
    att_BxHxLxM = jax.nn.softmax(att_BxHxLxM, axis=-1).astype(q_BxLxHxK.dtype)
    att = dropout(att_BxHxLxM, rate, key).reshape(att.shape)
    return jnp.einsum(f"{att_},{kv}->{q_}", att, v_BxLxJxK).reshape(B, L, H, K), most


def attention_cached(
    q_BxLxHxK: jax.Array,
    k_BxLxJxK: jax.Array,
    v_BxLxJxK: jax.Array,
    cache: Cache,
    pos: jax.Array | int,
) -> tuple[jax.Array, Cache]:
    """Attention of L new positions pos..pos+L-1 against a KV cache (sampling): their keys and
    values are written into it, and each query attends to every cached position up to its own
    (slots not yet written, or from before the window, are masked). Returns the output and
    the cache. A multi-token write (a prompt, a re-encoding) starts at pos < W and does not
    wrap."""
    B, L, H, K = q_BxLxHxK.shape
    J = k_BxLxJxK.shape[2]
    R = H // J
    scale = 1.0 / math.sqrt(K)
    k_GxWxK, v_GxWxK = cache
    W = k_GxWxK.shape[1]

    def heads_first(t_BxLxJxK: jax.Array) -> jax.Array:
        return t_BxLxJxK.transpose(0, 2, 1, 3).reshape(B * J, L, K)

    slot = pos % W
    k_GxWxK = jax.lax.dynamic_update_slice(k_GxWxK, heads_first(k_BxLxJxK), (0, slot, 0))
    v_GxWxK = jax.lax.dynamic_update_slice(v_GxWxK, heads_first(v_BxLxJxK), (0, slot, 0))
    # The queries of a group: its R heads' L positions each.
    q_GxQxK = q_BxLxHxK.reshape(B, L, J, R, K).transpose(0, 2, 3, 1, 4).reshape(B * J, R * L, K)
    at_Q = pos + jnp.tile(jnp.arange(L), R)
    # Slot w holds the newest position p <= the query's with p = w (mod W): seen once written.
    w_W = jnp.arange(W)
    visible_QxW = visible(at_Q[:, None] - (at_Q[:, None] - w_W[None, :]) % W)
    att_GxQxW = jnp.einsum("gqk,gwk->gqw", q_GxQxK, k_GxWxK) * scale
    att_GxQxW = jnp.where(visible_QxW, att_GxQxW, -jnp.inf)
    att_GxQxW = jax.nn.softmax(att_GxQxW, axis=-1)
    y_GxQxK = jnp.einsum("gqw,gwk->gqk", att_GxQxW, v_GxWxK)
    y_BxLxHxK = y_GxQxK.reshape(B, J, R, L, K).transpose(0, 3, 1, 2, 4).reshape(B, L, H, K)
    return y_BxLxHxK, (k_GxWxK, v_GxWxK)


def mlp(x_BxLxD: jax.Array, p: Params, cfg: ModelConfig, dtype: Any, rt: Runtime) -> jax.Array:
    h_BxLxF = linear(x_BxLxD, p, "fc", dtype, rt)
    if cfg.activation == "swiglu":
        gate_BxLxF, value_BxLxF = jnp.split(h_BxLxF, 2, axis=-1)
        h_BxLxF = rt.kernels.silu(gate_BxLxF) * value_BxLxF
    else:
        h_BxLxF = getattr(rt.kernels, cfg.activation)(h_BxLxF)
    return linear(h_BxLxF, p, "fc_proj", dtype, rt)


def qkv_heads(
    h_BxLxD: jax.Array, p: Params, cfg: ModelConfig, dtype: Any, rt: Runtime, pos: jax.Array | int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The queries, keys and values of positions pos..pos+L-1, in heads: q_BxLxHxK, k_BxLxJxK
    and v_BxLxJxK, QK-normed and rotated where the model says so."""
    B, L, D = h_BxLxD.shape
    H, J = cfg.n_head, kv_heads(cfg)
    K = D // H
    qkv = linear(h_BxLxD, p, "attn", dtype, rt)
    q_BxLxHxK = qkv[..., : H * K].reshape(B, L, H, K)
    k_BxLxJxK = qkv[..., H * K : (H + J) * K].reshape(B, L, J, K)
    v_BxLxJxK = qkv[..., (H + J) * K :].reshape(B, L, J, K)
    if cfg.qk_norm:
        q_BxLxHxK = norm(q_BxLxHxK, p, "q_norm", cfg, rt)
        k_BxLxJxK = norm(k_BxLxJxK, p, "k_norm", cfg, rt)
    if cfg.position == "rope":
        positions_L = pos + jnp.arange(L)
        q_BxLxHxK = rope(q_BxLxHxK, positions_L, cfg.rope_theta)
        k_BxLxJxK = rope(k_BxLxJxK, positions_L, cfg.rope_theta)
    return q_BxLxHxK, k_BxLxJxK, v_BxLxJxK


def block(
    x_BxLxD: jax.Array,
    p: Params,
    cfg: ModelConfig,
    rt: Runtime,
    key: jax.Array | None,
    dtype: Any,
    pos: jax.Array | int = 0,
    cache: Cache | None = None,
    stats: bool = False,
) -> tuple[jax.Array, Cache | None, jax.Array | None]:
    """One pre-norm transformer block; p holds one layer's slice of params["blocks"]. With a
    cache (sampling), the positions from pos attend through it. Returns the output, the
    cache, and with `stats` the largest attention logit."""
    B, L, D = x_BxLxD.shape
    keys = [None] * 3 if key is None else list(jax.random.split(key, 3))

    qkv = qkv_heads(norm(x_BxLxD, p, "ln1", cfg, rt), p, cfg, dtype, rt, pos)
    if cache is None:
        rate, window = cfg.dropout, cfg.block_size
        y_BxLxHxK, most = attention(*qkv, rt, rate=rate, key=keys[0], window=window, stats=stats)
    else:
        (y_BxLxHxK, cache), most = attention_cached(*qkv, cache, pos), None
    y_BxLxD = linear(y_BxLxHxK.reshape(B, L, D), p, "attn_proj", dtype, rt)
    x_BxLxD = x_BxLxD + dropout(y_BxLxD, cfg.dropout, keys[1])

    h_BxLxD = norm(x_BxLxD, p, "ln2", cfg, rt)
    y_BxLxD = mlp(h_BxLxD, p, cfg, dtype, rt)
    return x_BxLxD + dropout(y_BxLxD, cfg.dropout, keys[2]), cache, most


def head_spec(cfg: ModelConfig, rt: Runtime) -> kernels.Head:
    """What the output layer applies to its logits: model.logit_softcap, model.z_loss, the
    padding rows past model.vocab_size, and the runtime's chunk of logits for the loss."""
    return kernels.Head(cfg.logit_softcap, cfg.z_loss, cfg.vocab_size, rt.loss_chunk)


def head_weights(params: Params) -> jax.Array:
    """The output layer's V x D matrix: wte when tied, else head_w transposed."""
    return params["head_w"].T if "head_w" in params else params["wte"]


def final_norm(params: Params, x_BxLxD: jax.Array, cfg: ModelConfig, rt: Runtime) -> jax.Array:
    """The final norm, in float32 from here on so that logits and loss keep precision."""
    return norm(x_BxLxD, params, "lnf", cfg, rt).astype(jnp.float32)


def head(params: Params, x_BxLxD: jax.Array, cfg: ModelConfig, rt: Runtime) -> jax.Array:
    """Final norm and the output head (wte transposed when tied), in float32; soft-capped when
    model.logit_softcap is set. Rows past model.vocab_size (model.vocab_multiple's padding) get
    logit -inf: never any probability. The whole logits: for a loss, cross_entropy holds less."""
    x_BxLxD = final_norm(params, x_BxLxD, cfg, rt)
    return kernels.logits(x_BxLxD, head_weights(params), head_spec(cfg, rt))


def cross_entropy(
    params: Params, x_BxLxD: jax.Array, targets_BxL: jax.Array, cfg: ModelConfig, rt: Runtime
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """The final norm, the output head and the mean next-token loss from the residual stream,
    with the primitive of the runtime (FAST: chunks of positions, never the whole logits):
    (loss, cross-entropy, mean log Z^2, mean log Z); the loss is the cross-entropy plus
    model.z_loss * mean log Z^2, and the only output with a gradient."""
    B, L, D = x_BxLxD.shape
    x_TxD = final_norm(params, x_BxLxD, cfg, rt).reshape(B * L, D)
    return rt.kernels.cross_entropy(
        x_TxD, head_weights(params), targets_BxL.reshape(B * L), head_spec(cfg, rt)
    )


def token_nll(
    params: Params, x_BxLxD: jax.Array, targets_BxL: jax.Array, cfg: ModelConfig, rt: Runtime
) -> jax.Array:
    """The next-token nll at each position from the residual stream (final norm, head), over
    chunks of positions: for scoring (not differentiated), never the whole logits."""
    B, L, D = x_BxLxD.shape
    x_TxD = final_norm(params, x_BxLxD, cfg, rt).reshape(B * L, D)
    nll_T, _ = kernels.token_losses(
        x_TxD, head_weights(params), targets_BxL.reshape(B * L), head_spec(cfg, rt)
    )
    return nll_T.reshape(B, L)


# ---------------------------------------------------------------- the model


def trunk(
    params: Params,
    ids_BxL: jax.Array,
    cfg: ModelConfig,
    *,
    rt: Runtime = DEFAULT,
    dropout_key: jax.Array | None = None,
    compute_dtype: Any = jnp.float32,
    stats: bool = False,
) -> tuple[jax.Array, jax.Array | None]:
    """The residual stream after the last block (before the final norm), and with `stats` the
    largest attention logit of each layer (N, else None). Dropout only where a dropout_key is
    given; each block rematerialised in the backward as the runtime's remat says. With rope, a
    sequence longer than block_size attends block_size positions back (what sampling's sliding
    cache computes)."""
    keys = None if dropout_key is None else jax.random.split(dropout_key, cfg.n_layer + 1)
    x_BxLxD = embed(params, ids_BxL, 0)
    x_BxLxD = dropout(x_BxLxD, cfg.dropout, None if keys is None else keys[-1])
    x_BxLxD = x_BxLxD.astype(compute_dtype)

    def step(x_BxLxD: jax.Array, layer: tuple[Params, jax.Array | None]) -> tuple:
        p, key = layer
        x_BxLxD, _, most = block(x_BxLxD, p, cfg, rt, key, compute_dtype, stats=stats)
        return x_BxLxD, most

    if rt.remat != "none":
        # Unrolled layers (CPU) share one loop iteration, where XLA would merge the recomputed
        # forward with the first one (common subexpressions) and undo the remat.
        step = jax.checkpoint(step, policy=REMAT[rt.remat], prevent_cse=rt.unroll > 1)
    layer_keys = None if keys is None else keys[:-1]
    return jax.lax.scan(step, x_BxLxD, (params["blocks"], layer_keys), unroll=rt.unroll)


def forward(
    params: Params,
    ids_BxL: jax.Array,
    cfg: ModelConfig,
    *,
    rt: Runtime = DEFAULT,
    dropout_key: jax.Array | None = None,
    compute_dtype: Any = jnp.float32,
) -> jax.Array:
    """Logits (float32) for every position: the trunk, then the head. Dropout only where a
    dropout_key is given."""
    x_BxLxD, _ = trunk(
        params, ids_BxL, cfg, rt=rt, dropout_key=dropout_key, compute_dtype=compute_dtype
    )
    return head(params, x_BxLxD, cfg, rt)


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
        x_BxLxD, c, _ = block(x_BxLxD, p, cfg, rt, None, jnp.float32, pos, c)
        new_cache.append(c)
    return head(params, x_BxLxD[:, -1], cfg, rt), new_cache


def loss_fn(
    params: Params,
    ids_BxL: jax.Array,
    targets_BxL: jax.Array,
    cfg: ModelConfig,
    *,
    rt: Runtime = DEFAULT,
    dropout_key: jax.Array | None = None,
    compute_dtype: Any = jnp.float32,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The training loss (mean next-token cross-entropy in float32, plus model.z_loss *
    mean(log Z^2)) and its parts, for jax.value_and_grad(loss_fn, has_aux=True): "ce" (the
    cross-entropy), "log_z" (the mean log Z of the logits) and "z_loss" (the auxiliary term)
    where the model has one."""
    x_BxLxD, _ = trunk(
        params, ids_BxL, cfg, rt=rt, dropout_key=dropout_key, compute_dtype=compute_dtype
    )
    loss, ce, z2, log_z = cross_entropy(params, x_BxLxD, targets_BxL, cfg, rt)
    parts = {"ce": ce, "log_z": log_z}
    if cfg.z_loss:
        parts["z_loss"] = cfg.z_loss * z2
    return loss, parts
