"""The model: causality, jit, shapes, parameter counts against nanoGPT, init, dropout, dtypes,
and the hand-written gradients against JAX's own."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nanogptx import model
from nanogptx.config import ModelConfig

TINY = ModelConfig(n_layer=2, n_head=4, n_embd=32, block_size=16, vocab_size=50, dropout=0.0)
V = 50


def tiny(**changes: object) -> ModelConfig:
    return dataclasses.replace(TINY, **changes)


def ids(B: int = 3, L: int = 16, seed: int = 0) -> jax.Array:
    return jax.random.randint(jax.random.key(seed), (B, L), 0, V)


# Jitted once per config: tests stay fast (eager JAX compiles every operation on its own).
forward = jax.jit(model.forward, static_argnames=("cfg", "compute_dtype"))
loss_and_grad = jax.jit(jax.value_and_grad(model.loss_fn), static_argnames=("cfg", "compute_dtype"))
init = jax.jit(model.init_params, static_argnums=(0, 1))


@pytest.fixture(scope="module")
def params() -> model.Params:
    return init(TINY, V, jax.random.key(0))


def nanogpt_non_embedding(n_layer: int, d: int, vocab: int, bias: bool) -> int:
    """nanoGPT's GPT.get_num_params(): all parameters but the position embedding."""
    per_layer = 12 * d * d + 2 * d + (11 * d if bias else 0)  # 2 LNs, qkv, proj, fc, fc proj
    return n_layer * per_layer + vocab * d + d + (d if bias else 0)


def test_causal_by_gradient(params: model.Params) -> None:
    # The logits at position t depend on the position embedding of s <= t only.
    x = ids(B=2)

    positions = (0, 7, 15)

    @jax.jit
    def grads(wpe: jax.Array) -> list[jax.Array]:
        def logits_at(wpe: jax.Array, t: int) -> jax.Array:
            return model.forward(params | {"wpe": wpe}, x, TINY)[:, t].sum()

        return [jax.grad(logits_at)(wpe, t) for t in positions]

    for t, g_LxD in zip(positions, grads(params["wpe"]), strict=True):
        per_pos = np.abs(np.asarray(g_LxD)).sum(-1)
        assert np.all(per_pos[t + 1 :] == 0.0), t
        assert np.all(per_pos[: t + 1] > 0.0), t


def test_jit_matches_no_jit() -> None:
    cfg = tiny(n_layer=1, n_embd=16, block_size=8)
    p, x = init(cfg, V, jax.random.key(0)), ids(B=2, L=8)
    jitted = forward(p, x, cfg)
    with jax.disable_jit():
        eager = model.forward(p, x, cfg)
    np.testing.assert_allclose(jitted, eager, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bias", [True, False])
def test_shapes_with_and_without_bias(bias: bool) -> None:
    cfg = tiny(bias=bias)
    p = init(cfg, V, jax.random.key(0))
    N, D = cfg.n_layer, cfg.n_embd
    assert p["blocks"]["attn_w"].shape == (N, D, 3 * D)
    assert p["blocks"]["fc_proj_w"].shape == (N, 4 * D, D)
    assert ("lnf_b" in p) is bias
    assert ("attn_b" in p["blocks"]) is bias
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(p))
    logits = forward(p, ids(L=10), cfg)
    assert logits.shape == (3, 10, V) and logits.dtype == jnp.float32
    assert model.count_params(p) == nanogpt_non_embedding(N, D, V, bias)


@pytest.mark.parametrize(
    ("cfg", "vocab", "expected", "printed"),
    [
        # nanoGPT's shakespeare_char CPU recipe (bias False): "number of parameters: 0.80M"
        (ModelConfig(n_layer=4, n_head=4, n_embd=128, block_size=64, bias=False), 65,
         795_904, "0.80M"),
        # GPT-2 124M as nanoGPT trains it (vocab padded to 50304): "123.69M"
        (ModelConfig(n_layer=12, n_head=12, n_embd=768, block_size=1024, bias=True), 50304,
         123_689_472, "123.69M"),
    ],
)  # fmt: skip
def test_parameter_count_matches_nanogpt(
    cfg: ModelConfig, vocab: int, expected: int, printed: str
) -> None:
    shapes = jax.eval_shape(lambda k: model.init_params(cfg, vocab, k), jax.random.key(0))
    n = model.count_params(shapes)
    assert n == expected == nanogpt_non_embedding(cfg.n_layer, cfg.n_embd, vocab, cfg.bias)
    assert f"{n / 1e6:.2f}M" == printed
    assert model.count_params(shapes, non_embedding=False) == n + cfg.block_size * cfg.n_embd


def test_gpt2_total_parameters_with_openai_vocab() -> None:
    cfg = ModelConfig(n_layer=12, n_head=12, n_embd=768, block_size=1024, bias=True)
    shapes = jax.eval_shape(lambda k: model.init_params(cfg, 50257, k), jax.random.key(0))
    assert model.count_params(shapes, non_embedding=False) == 124_439_808  # GPT-2 small


def test_init_statistics() -> None:
    cfg = ModelConfig(n_layer=4, n_head=4, n_embd=128, block_size=64, bias=True)
    p = init(cfg, 65, jax.random.key(1))
    b = p["blocks"]
    for x in (p["wte"], p["wpe"], b["attn_w"], b["fc_w"]):
        assert abs(float(x.std()) - 0.02) < 0.02 * 0.03
        assert abs(float(x.mean())) < 1e-3
    proj_std = 0.02 / math.sqrt(2 * cfg.n_layer)
    for x in (b["attn_proj_w"], b["fc_proj_w"]):
        assert abs(float(x.std()) - proj_std) < proj_std * 0.03
    for name in ("ln1_g", "ln2_g"):
        assert np.all(b[name] == 1.0)
    assert np.all(p["lnf_g"] == 1.0) and np.all(p["lnf_b"] == 0.0)
    for name in ("ln1_b", "attn_b", "attn_proj_b", "ln2_b", "fc_b", "fc_proj_b"):
        assert np.all(b[name] == 0.0)
    # Layers get different draws.
    assert not np.allclose(b["attn_w"][0], b["attn_w"][1])


def test_decay_mask_only_matrices(params: model.Params) -> None:
    mask = model.decay_mask(params)
    flat = {
        ".".join(str(k.key) for k in path): v
        for path, v in jax.tree_util.tree_leaves_with_path(mask)
    }
    assert flat["wte"] and flat["wpe"] and flat["blocks.attn_w"] and flat["blocks.fc_proj_w"]
    assert not flat["lnf_g"] and not flat["blocks.ln1_g"] and not flat["blocks.fc_b"]


def test_flops_per_token_is_nanogpts_estimate() -> None:
    cfg = ModelConfig(n_layer=12, n_head=12, n_embd=768, block_size=1024)
    N = 123_689_472
    assert model.flops_per_token(cfg, N) == 6 * N + 12 * 12 * 12 * 64 * 1024


def test_dropout_only_with_a_key() -> None:
    cfg = tiny(dropout=0.2, n_layer=1)
    p = init(cfg, V, jax.random.key(0))
    x = ids()
    plain = forward(p, x, cfg)
    np.testing.assert_array_equal(plain, forward(p, x, cfg))
    np.testing.assert_allclose(plain, forward(p, x, tiny(n_layer=1)), atol=1e-6)
    k1 = forward(p, x, cfg, dropout_key=jax.random.key(1))
    k1_again = forward(p, x, cfg, dropout_key=jax.random.key(1))
    k2 = forward(p, x, cfg, dropout_key=jax.random.key(2))
    np.testing.assert_array_equal(k1, k1_again)
    assert not np.allclose(k1, plain, atol=1e-3)
    assert not np.allclose(k1, k2, atol=1e-3)
    # Gradients flow through the dropout path too.
    _, g = loss_and_grad(p, x, x, cfg, dropout_key=jax.random.key(1))
    assert all(bool(jnp.isfinite(v).all()) for v in jax.tree.leaves(g))


def test_bfloat16_compute_gives_float32_logits_close_to_float32(params: model.Params) -> None:
    x = ids()
    f32 = forward(params, x, TINY)
    bf16 = forward(params, x, TINY, compute_dtype=jnp.bfloat16)
    assert bf16.dtype == jnp.float32
    assert float(jnp.abs(bf16 - f32).max()) < 0.05
    loss32, g32 = loss_and_grad(params, x, x, TINY)
    loss16, g16 = loss_and_grad(params, x, x, TINY, compute_dtype=jnp.bfloat16)
    assert loss16.dtype == jnp.float32 and abs(float(loss16 - loss32)) < 0.02
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(g16))
    cos = optax.tree_utils.tree_vdot(g16, g32) / (
        optax.tree_utils.tree_norm(g16) * optax.tree_utils.tree_norm(g32)
    )
    assert float(cos) > 0.99


def test_gelu_matches_jax_exact_gelu() -> None:
    x = jnp.linspace(-8.0, 8.0, 1001)
    np.testing.assert_allclose(model.gelu(x), jax.nn.gelu(x, approximate=False), atol=1e-6)
    ours = jax.grad(lambda x: model.gelu(x).sum())(x)
    ref = jax.grad(lambda x: jax.nn.gelu(x, approximate=False).sum())(x)
    np.testing.assert_allclose(ours, ref, atol=1e-6)


def test_einsum_attention_matches_dot_product_attention() -> None:
    q, k, v, do = (
        jax.random.normal(kk, (2, 16, 4, 8)) for kk in jax.random.split(jax.random.key(3), 4)
    )

    def ours(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
        return model.attention(q, k, v, 0.0, None)

    def ref(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
        return jax.nn.dot_product_attention(q, k, v, is_causal=True)

    @jax.jit
    def both(q: jax.Array, k: jax.Array, v: jax.Array, do: jax.Array) -> list:
        out = []
        for f in (ours, ref):
            o, vjp = jax.vjp(f, q, k, v)
            out.append((o, *vjp(do)))
        return out

    for a, b in zip(*both(q, k, v, do), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_hand_written_gradients_match_autodiff() -> None:
    ks = jax.random.split(jax.random.key(4), 5)
    x, dy = jax.random.normal(ks[0], (3, 5, 16)), jax.random.normal(ks[1], (3, 5, 16))
    w, g, b = jax.random.normal(ks[2], (16, 16)), 1 + jax.random.normal(ks[3], (16,)), ks[4]
    b = jax.random.normal(b, (16,))

    def plain_ln(x: jax.Array, g: jax.Array, b: jax.Array) -> jax.Array:
        mean = x.mean(-1, keepdims=True)
        var = jnp.square(x - mean).mean(-1, keepdims=True)
        return (x - mean) * jax.lax.rsqrt(var + 1e-5) * g + b

    pairs = [
        (lambda x, w: model.matmul(x, w), lambda x, w: x @ w, (x, w)),
        (model.layer_norm, plain_ln, (x, g, b)),
    ]
    for ours, ref, args in pairs:

        @jax.jit
        def both(args: tuple, dy: jax.Array, ours=ours, ref=ref) -> list:
            out = []
            for f in (ours, ref):
                y, vjp = jax.vjp(f, *args)
                out.append((y, *vjp(dy)))
            return out

        for a, c in zip(*both(args, dy), strict=True):
            np.testing.assert_allclose(a, c, atol=1e-4, rtol=1e-5)


def test_loss_and_gradients_match_plain_autodiff_model(params: model.Params) -> None:
    # The same GPT written with JAX's own derivatives everywhere: equal to float32 rounding.
    x, y = ids(seed=1), ids(seed=2)
    cfg = TINY

    def plain_loss(p: model.Params) -> jax.Array:
        def ln(x: jax.Array, g: jax.Array) -> jax.Array:
            mean = x.mean(-1, keepdims=True)
            return (x - mean) * jax.lax.rsqrt(
                jnp.square(x - mean).mean(-1, keepdims=True) + 1e-5
            ) * g + 0

        h = p["wte"][x] + p["wpe"][: x.shape[1]]
        B, L, D = h.shape
        for i in range(cfg.n_layer):
            b = jax.tree.map(lambda a, i=i: a[i], p["blocks"])
            a = ln(h, b["ln1_g"]) + b["ln1_b"]
            qkv = a @ b["attn_w"] + b["attn_b"]
            q, k, v = (t.reshape(B, L, cfg.n_head, -1) for t in jnp.split(qkv, 3, -1))
            o = jax.nn.dot_product_attention(q, k, v, is_causal=True).reshape(B, L, D)
            h = h + o @ b["attn_proj_w"] + b["attn_proj_b"]
            a = ln(h, b["ln2_g"]) + b["ln2_b"]
            m = jax.nn.gelu(a @ b["fc_w"] + b["fc_b"], approximate=False)
            h = h + m @ b["fc_proj_w"] + b["fc_proj_b"]
        logits = (ln(h, p["lnf_g"]) + p["lnf_b"]) @ p["wte"].T
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    # Non-zero biases and gains so every gradient path is exercised.
    p = jax.tree.map(lambda a: a + 0.05 * jax.random.normal(jax.random.key(9), a.shape), params)
    l1, g1 = loss_and_grad(p, x, y, cfg)
    l2, g2 = jax.jit(jax.value_and_grad(plain_loss))(p)
    np.testing.assert_allclose(l1, l2, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-4)


def test_train_steps_reduce_loss(params: model.Params) -> None:
    x = jnp.tile(jnp.arange(16) % 7, (4, 1))  # a repeating pattern a small model learns fast
    y = jnp.roll(x, -1, axis=1)
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(3e-3, mask=model.decay_mask))
    state = opt.init(params)

    @jax.jit
    def step(p: model.Params, s: optax.OptState) -> tuple:
        loss, g = jax.value_and_grad(model.loss_fn)(p, x, y, TINY)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s, loss

    p, losses = params, []
    for _ in range(30):
        p, state, loss = step(p, state)
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0]
