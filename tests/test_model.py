"""The model: causality, jit, shapes, parameter counts against nanoGPT, init, dropout, dtypes;
the fast primitives against the reference ones, in the same architecture (no copy of it here),
for every variant; JAX's transformations through the reference set; the head's variants."""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nanogptx import kernels, model
from nanogptx.config import ModelConfig
from nanogptx.runtime import Runtime
from variants import VARIANTS, every_variant

TINY = ModelConfig(n_layer=2, n_head=4, n_embd=32, block_size=16, vocab_size=50, dropout=0.0)
V = 50


def tiny(**changes: object) -> ModelConfig:
    return dataclasses.replace(TINY, **changes)


def ids(B: int = 3, L: int = 16, seed: int = 0) -> jax.Array:
    return jax.random.randint(jax.random.key(seed), (B, L), 0, V)


def scalar_loss(
    params: model.Params,
    ids_BxL: jax.Array,
    targets_BxL: jax.Array,
    cfg: ModelConfig,
    *,
    rt: Runtime = model.DEFAULT,
    dropout_key: jax.Array | None = None,
    compute_dtype: object = jnp.float32,
) -> jax.Array:
    """model.loss_fn's loss alone."""
    kw = {"rt": rt, "dropout_key": dropout_key, "compute_dtype": compute_dtype}
    return model.loss_fn(params, ids_BxL, targets_BxL, cfg, **kw)[0]


# Jitted once per config: tests stay fast (eager JAX compiles every operation on its own).
forward = jax.jit(model.forward, static_argnames=("cfg", "rt", "compute_dtype"))
loss_and_grad = jax.jit(
    jax.value_and_grad(scalar_loss), static_argnames=("cfg", "rt", "compute_dtype")
)
REFERENCE = Runtime()  # plain jnp, JAX's own derivatives, einsum attention, rolled layer loop
# What runtime.choose gives on CPU, but with the loss over chunks of 16 positions (three per
# batch of these tests, whose logits the CPU's chunk would hold whole).
FAST = Runtime(kernels.FAST, "einsum", TINY.n_layer, loss_chunk=16 * V)
init = jax.jit(model.init_params, static_argnums=(0, 1))
terms = jax.jit(model.loss_fn, static_argnames=("cfg", "rt"))


@pytest.fixture(scope="module")
def params() -> model.Params:
    return init(TINY, V, jax.random.key(0))


def nanogpt_non_embedding(n_layer: int, d: int, vocab: int, bias: bool) -> int:
    """nanoGPT's GPT.get_num_params(): all parameters but the position embedding."""
    per_layer = 12 * d * d + 2 * d + (11 * d if bias else 0)  # 2 LNs, qkv, proj, fc, fc proj
    return n_layer * per_layer + vocab * d + d + (d if bias else 0)


def variant(name: str) -> ModelConfig:
    return tiny(**VARIANTS[name])


def spread(p: model.Params, seed: int = 9, scale: float = 0.05) -> model.Params:
    """Parameters moved off their init (gains off 1, biases off 0) so that every gradient path
    carries something."""
    return jax.tree.map(lambda a: a + scale * jax.random.normal(jax.random.key(seed), a.shape), p)


@pytest.mark.parametrize("name", every_variant())
def test_every_variant_is_causal(name: str) -> None:
    # Changing the token at position s changes the logits at s and after, never before.
    cfg = variant(name)
    p = spread(init(cfg, V, jax.random.key(0)), scale=0.5)
    x = ids(B=1)
    s = 9
    changed = x.at[0, s].set((x[0, s] + 1) % V)
    before, after = forward(p, x, cfg), forward(p, changed, cfg)
    np.testing.assert_array_equal(before[:, :s], after[:, :s])
    moved = np.abs(np.asarray(before - after)).max(-1)[0]
    assert np.all(moved[s:] > 0), moved


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


def test_variant_shapes_and_parameter_counts() -> None:
    def init(cfg: ModelConfig, V: int, key: jax.Array) -> model.Params:  # shapes only
        return jax.eval_shape(lambda: model.init_params(cfg, V, key))

    N, D, H, K = TINY.n_layer, TINY.n_embd, TINY.n_head, TINY.n_embd // TINY.n_head
    gpt2 = init(TINY, V, jax.random.key(0))
    rope = init(variant("rope"), V, jax.random.key(0))
    assert "wpe" not in rope and model.count_params(rope) == model.count_params(gpt2)
    gqa = init(variant("gqa"), V, jax.random.key(0))["blocks"]
    assert gqa["attn_w"].shape == (N, D, (H + 2 * 2) * K) and gqa["attn_b"].shape[-1] == 8 * K
    swiglu = variant("swiglu")
    F = model.mlp_width(swiglu)
    assert F % 64 == 0 and F >= 8 * D / 3 and F - 64 < 8 * D / 3
    assert model.mlp_width(tiny(n_embd=384, activation="swiglu")) == 1024  # 8 * 384 / 3
    assert model.mlp_width(tiny(activation="swiglu", mlp_width=96)) == 96
    b = init(swiglu, V, jax.random.key(0))["blocks"]
    assert b["fc_w"].shape == (N, D, 2 * F) and b["fc_proj_w"].shape == (N, F, D)
    untied = init(variant("untied"), V, jax.random.key(0))
    assert untied["head_w"].shape == (D, V)
    # The head is counted instead of the (lookup-only) token embedding.
    assert model.count_params(untied) == model.count_params(gpt2)
    assert model.count_params(untied, non_embedding=False) == (
        model.count_params(gpt2, non_embedding=False) + D * V
    )
    rms = init(tiny(norm="rmsnorm"), V, jax.random.key(0))  # RMSNorm has no bias
    assert "ln1_b" not in rms["blocks"] and "lnf_b" not in rms and "attn_b" in rms["blocks"]
    bare = init(variant("no-gain-no-bias"), V, jax.random.key(0))
    assert not [k for k in bare["blocks"] if k.endswith(("_g", "_b"))] and "lnf_g" not in bare
    qk = init(variant("qk-norm"), V, jax.random.key(0))["blocks"]
    assert qk["q_norm_g"].shape == qk["k_norm_g"].shape == (N, K)
    mask = model.decay_mask(untied | {"blocks": qk})
    assert mask["head_w"] and not mask["blocks"]["q_norm_g"]


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
    # By shape, as nanoGPT's p.dim() >= 2 (per layer in the stacked blocks): a new matrix
    # gets weight decay without being named anywhere, a new gain does not.
    N, D = TINY.n_layer, TINY.n_embd
    blocks = params["blocks"] | {"new_w": jnp.zeros((N, D, D)), "new_g": jnp.ones((N, D))}
    mask = model.decay_mask(params | {"blocks": blocks})
    assert mask["blocks"]["new_w"] and not mask["blocks"]["new_g"]
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
    for rt in (REFERENCE, FAST):  # the output layer's loss whole, and over chunks
        loss16, g16 = loss_and_grad(params, x, x, TINY, rt=rt, compute_dtype=jnp.bfloat16)
        assert loss16.dtype == jnp.float32 and abs(float(loss16 - loss32)) < 0.02
        assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(g16))
        cos = optax.tree_utils.tree_vdot(g16, g32) / (
            optax.tree_utils.tree_norm(g16) * optax.tree_utils.tree_norm(g32)
        )
        assert float(cos) > 0.99


def test_each_fast_primitive_matches_its_reference_value_and_gradient() -> None:
    ks = jax.random.split(jax.random.key(4), 4)
    x, dy = jax.random.normal(ks[0], (3, 5, 16)), jax.random.normal(ks[1], (3, 5, 16))
    w, g = jax.random.normal(ks[2], (16, 16)), 1 + jax.random.normal(ks[3], (16,))
    wide = jnp.linspace(-8.0, 8.0, 3 * 5 * 16).reshape(3, 5, 16)  # the activations' tails too
    args = {"matmul": (x, w), "layernorm": (x, g), "rmsnorm": (x, g)}
    names = [f.name for f in dataclasses.fields(kernels.Kernels) if f.name != "name"]
    assert {"matmul", "gelu", "layernorm", "rmsnorm", "relu2", "silu", "gelu_tanh"} <= set(names)
    names.remove("cross_entropy")  # a loss: the next test
    for name in names:
        fast, ref = getattr(kernels.FAST, name), getattr(kernels.REFERENCE, name)

        @jax.jit
        def both(args: tuple, dy: jax.Array, fast=fast, ref=ref) -> list:
            out = []
            for f in (fast, ref):
                y, vjp = jax.vjp(f, *args)
                out.append((y, *vjp(dy)))
            return out

        for a, c in zip(*both(args.get(name, (wide,)), dy), strict=True):
            np.testing.assert_allclose(a, c, atol=1e-4, rtol=1e-5, err_msg=name)


@pytest.mark.parametrize(
    "head",
    [
        kernels.Head(),
        kernels.Head(vocab=40),  # vocab_multiple's padding rows
        kernels.Head(softcap=2.0),
        kernels.Head(z_loss=1e-2),
        kernels.Head(softcap=2.0, z_loss=0.1, vocab=40),
    ],
    ids=["plain", "padded", "softcap", "z-loss", "all"],
)
def test_chunked_cross_entropy_equals_the_whole_logits_in_value_and_gradient(
    head: kernels.Head,
) -> None:
    # kernels.FAST's loss runs over chunks of positions and computes its gradients in the
    # forward; kernels.REFERENCE holds the whole logits. One chunk of all 48 positions, chunks
    # of 16 (three), of 32 (two, the last one padded), of one position.
    ks = jax.random.split(jax.random.key(7), 3)
    x, w = jax.random.normal(ks[0], (48, 16)), 0.5 * jax.random.normal(ks[1], (V, 16))
    targets = jax.random.randint(ks[2], (48,), 0, 40)

    @functools.partial(jax.jit, static_argnames=("f", "h"))
    def loss_and_grads(x: jax.Array, w: jax.Array, f=kernels.REFERENCE.cross_entropy, h=head):
        out, vjp = jax.vjp(lambda x, w: f(x, w, targets, h), x, w)
        return out, vjp((jnp.ones(()), *(jnp.zeros(()),) * 3))  # the loss alone has a gradient

    want, (dx_want, dw_want) = loss_and_grads(x, w)
    for positions in (64, 16, 32, 1):
        h = dataclasses.replace(head, chunk=positions * V)
        assert kernels.chunks(48, V, h.chunk)[0] == min(positions, 48)
        got, (dx, dw) = loss_and_grads(x, w, kernels.cross_entropy, h)
        for a, b in zip(got, want, strict=True):
            np.testing.assert_allclose(a, b, rtol=2e-6, err_msg=f"{positions} positions a chunk")
        np.testing.assert_allclose(dx, dx_want, atol=1e-7, rtol=1e-5)
        np.testing.assert_allclose(dw, dw_want, atol=1e-7, rtol=1e-5)
        assert np.abs(np.asarray(dw)[40:]).max() == 0 if head.vocab else True  # padding rows
    # The same values in a forward that is not differentiated (evaluation).
    plain = jax.jit(lambda x, w: kernels.cross_entropy(x, w, targets, head))(x, w)
    np.testing.assert_allclose(plain, want, rtol=2e-6)
    # FAST holds logits this few whole, and takes the chunks above kernels.WHOLE_LOGITS.
    for most in (48 * V, 48 * V - 1):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(kernels, "WHOLE_LOGITS", most)
            h = dataclasses.replace(head, chunk=64 * V)  # one chunk: whole, or not, by most
            got, (dx, dw) = loss_and_grads.__wrapped__(x, w, kernels.FAST.cross_entropy, h)
            jaxpr = jax.make_jaxpr(lambda x, w, h=h: kernels.FAST.cross_entropy(x, w, targets, h))
            whole = "scan" not in str(jaxpr(x, w))  # the chunks are a lax.scan
        assert whole == (most == 48 * V)
        for a, b in zip(got, want, strict=True):
            np.testing.assert_allclose(a, b, rtol=2e-6)
        np.testing.assert_allclose(dx, dx_want, atol=1e-7, rtol=1e-5)
        np.testing.assert_allclose(dw, dw_want, atol=1e-7, rtol=1e-5)


def test_attention_implementations_agree_in_value_and_gradient() -> None:
    q, k, v, do = (
        jax.random.normal(kk, (2, 16, 4, 8)) for kk in jax.random.split(jax.random.key(3), 4)
    )

    @jax.jit
    def both(q: jax.Array, k: jax.Array, v: jax.Array, do: jax.Array) -> list:
        out = []
        for impl in ("einsum", "xla"):
            rt = Runtime(attention=impl)
            o, vjp = jax.vjp(lambda q, k, v, rt=rt: model.attention(q, k, v, rt)[0], q, k, v)
            out.append((o, *vjp(do)))
        return out

    for a, b in zip(*both(q, k, v, do), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize(
    "name",
    [*every_variant(), "padded-vocab", pytest.param("gpt2-no-bias", marks=pytest.mark.slow)],
)
def test_fast_runtime_gives_the_reference_loss_and_every_gradient(name: str) -> None:
    # The same architecture under the two primitive sets (and both attention
    # implementations): the loss and the gradient of every parameter equal to float32 rounding.
    # padded-vocab: 45 tokens in 50 rows (model.vocab_multiple's padding, masked).
    special = {"gpt2-no-bias": tiny(bias=False), "padded-vocab": tiny(vocab_size=45)}
    cfg = special.get(name) or variant(name)
    x, y = ids(seed=1) % cfg.vocab_size, ids(seed=2) % cfg.vocab_size
    p = spread(init(cfg, V, jax.random.key(0)))
    l_ref, g_ref = loss_and_grad(p, x, y, cfg, rt=REFERENCE)
    # dot_product_attention sees only q, k and v: its runtime for the head layouts (MHA, GQA).
    xla = [Runtime(attention="xla")] if name in ("gpt2", "rope-gqa-swiglu", "gqa") else []
    for rt in (FAST, *xla):
        l_rt, g_rt = loss_and_grad(p, x, y, cfg, rt=rt)
        np.testing.assert_allclose(l_rt, l_ref, rtol=1e-6)
        flat_ref = dict(jax.tree_util.tree_leaves_with_path(g_ref))
        assert len(flat_ref) == len(jax.tree.leaves(p))
        for path, a in jax.tree_util.tree_leaves_with_path(g_rt):
            np.testing.assert_allclose(
                a, flat_ref[path], atol=1e-6, rtol=1e-4, err_msg=jax.tree_util.keystr(path)
            )
            assert np.abs(np.asarray(a)).max() > 0, jax.tree_util.keystr(path)  # on the path


@pytest.mark.parametrize("remat", ["block", "dots"])
def test_remat_recomputes_the_same_loss_and_gradients(remat: str) -> None:
    # model.remat says how the backward runs, not what it computes: with dropout (the same
    # masks recomputed), under both primitive sets, equal to float32 rounding (bit-identical
    # on this CPU for the fast set).
    cfg = tiny(dropout=0.1)
    p, x, key = spread(init(cfg, V, jax.random.key(0))), ids(seed=1), jax.random.key(3)
    for rt in (FAST, REFERENCE):
        loss, grads = loss_and_grad(p, x, x, cfg, rt=rt, dropout_key=key)
        loss_r, grads_r = loss_and_grad(
            p, x, x, cfg, rt=dataclasses.replace(rt, remat=remat), dropout_key=key
        )
        assert float(loss_r) == float(loss)
        for a, b in zip(jax.tree.leaves(grads_r), jax.tree.leaves(grads), strict=True):
            np.testing.assert_allclose(a, b, atol=1e-7, rtol=1e-6)

    # And it does recompute: the backward has more matmuls (block: all of the block's; dots:
    # the attention's, whose outputs have a batch dimension).
    def dots(remat: str) -> int:
        rt = dataclasses.replace(REFERENCE, remat=remat)
        grad = jax.grad(lambda p: scalar_loss(p, x, x, cfg, rt=rt))
        return str(jax.make_jaxpr(grad)(p)).count("dot_general")

    assert dots("none") < dots(remat) <= dots("block")


@pytest.mark.parametrize(
    "name", ["gpt2", "modern", pytest.param("rope-gqa-swiglu", marks=pytest.mark.slow)]
)
def test_forward_mode_and_second_order_autodiff_go_through_the_reference_set(name: str) -> None:
    cfg = variant(name)
    params = init(cfg, V, jax.random.key(0))
    x, y = ids(seed=1), ids(seed=2)
    tangent = jax.tree.map(lambda a: jax.random.normal(jax.random.key(5), a.shape), params)

    def loss(p: model.Params) -> jax.Array:
        return scalar_loss(p, x, y, cfg, rt=REFERENCE)

    # jax.jvp (forward mode) equals the directional derivative from the gradient.
    _, directional = jax.jit(lambda p, t: jax.jvp(loss, (p,), (t,)))(params, tangent)
    grad = jax.jit(jax.grad(loss))(params)
    np.testing.assert_allclose(directional, optax.tree_utils.tree_vdot(grad, tangent), rtol=1e-4)

    # jax.hessian, and forward-over-reverse Hessian-vector products, in the first norm's gains
    # (every layer's: second derivatives through every primitive of the blocks and the head).
    def of_gain(g_NxD: jax.Array) -> jax.Array:
        return loss(params | {"blocks": params["blocks"] | {"ln1_g": g_NxD}})

    g_NxD, v_NxD = params["blocks"]["ln1_g"], tangent["blocks"]["ln1_g"]
    n = g_NxD.size
    hessian = jax.jit(jax.hessian(of_gain))(g_NxD).reshape(n, n)
    hvp = jax.jit(lambda g, v: jax.jvp(jax.grad(of_gain), (g,), (v,))[1])(g_NxD, v_NxD)
    np.testing.assert_allclose(hvp.reshape(n), hessian @ v_NxD.reshape(n), atol=1e-6, rtol=1e-4)
    assert np.allclose(hessian, hessian.T, atol=1e-6) and np.abs(hessian).max() > 0
    with pytest.raises(TypeError, match="custom_vjp"):  # why the reference set exists
        jax.jvp(lambda p: scalar_loss(p, x, y, cfg, rt=FAST), (params,), (tangent,))


def test_train_steps_reduce_loss(params: model.Params) -> None:
    x = jnp.tile(jnp.arange(16) % 7, (4, 1))  # a repeating pattern a small model learns fast
    y = jnp.roll(x, -1, axis=1)
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(3e-3, mask=model.decay_mask))
    state = opt.init(params)

    @jax.jit
    def step(p: model.Params, s: optax.OptState) -> tuple:
        loss, g = jax.value_and_grad(scalar_loss)(p, x, y, TINY)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s, loss

    p, losses = params, []
    for _ in range(30):
        p, state, loss = step(p, state)
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("rt", [REFERENCE, FAST], ids=["whole logits", "chunked"])
def test_z_loss_is_the_mean_squared_log_z_and_reported_apart(rt: Runtime) -> None:
    cfg = variant("modern")
    p = spread(init(cfg, V, jax.random.key(0)), scale=0.5)
    x, y = ids(seed=1), ids(seed=2)
    loss, parts = terms(p, x, y, cfg, rt=rt)
    logits = np.asarray(forward(p, x, cfg), np.float64)
    log_z = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    ce = (log_z - np.take_along_axis(logits, np.asarray(y)[..., None], -1)[..., 0]).mean()
    np.testing.assert_allclose(parts["ce"], ce, rtol=1e-5)
    np.testing.assert_allclose(parts["z_loss"], 1e-2 * np.mean(log_z**2), rtol=1e-5)
    np.testing.assert_allclose(parts["log_z"], log_z.mean(), rtol=1e-5)
    np.testing.assert_allclose(loss, parts["ce"] + parts["z_loss"], rtol=1e-6)
    assert model.trunk(p, x, cfg, rt=rt, stats=True)[1].shape == (cfg.n_layer,)
    # Without z-loss the loss is the cross-entropy alone, and no z_loss part exists.
    plain_loss, plain = terms(p, x, y, TINY)
    assert "z_loss" not in plain and float(plain_loss) == float(plain["ce"])


@pytest.mark.slow
def test_z_loss_pulls_log_z_to_zero() -> None:
    # Training on the cross-entropy alone leaves log Z where it drifts; z-loss holds it near 0.
    x = jnp.tile(jnp.arange(16) % 7, (4, 1))
    y = jnp.roll(x, -1, axis=1)
    out, opt = {}, optax.adam(3e-3)
    for coef in (0.0, 1.0):
        cfg = tiny(z_loss=coef, tie_embeddings=False, n_layer=1)
        p = init(cfg, V, jax.random.key(0))
        p = p | {"head_w": p["head_w"] + 0.3}  # every logit shifted: log Z far from 0
        state = opt.init(p)

        @jax.jit
        def step(p: model.Params, s: optax.OptState, cfg: ModelConfig = cfg) -> tuple:
            g = jax.grad(scalar_loss)(p, x, y, cfg)
            u, s = opt.update(g, s, p)
            return optax.apply_updates(p, u), s

        for _ in range(60):
            p, state = step(p, state)
        out[coef] = terms(p, x, y, cfg)[1]
    assert abs(float(out[1.0]["log_z"])) < 0.5 < abs(float(out[0.0]["log_z"]))
    assert float(out[1.0]["ce"]) < 1.0  # it still learns the pattern


def test_logit_softcap_bounds_the_logits() -> None:
    cfg = variant("softcap")  # 5.0
    p = jax.tree.map(lambda a: 20 * a, init(cfg, V, jax.random.key(0)))
    logits = np.asarray(forward(p, ids(), cfg))
    uncapped = np.asarray(forward(p, ids(), TINY))
    assert np.abs(uncapped).max() > 5.0 >= np.abs(logits).max()
    np.testing.assert_allclose(logits, 5.0 * np.tanh(uncapped / 5.0), rtol=1e-4, atol=1e-5)


def test_rope_attends_to_relative_positions_only() -> None:
    # Shifting every position by the same offset leaves rotary attention scores unchanged.
    q, k = (jax.random.normal(kk, (1, 6, 2, 8)) for kk in jax.random.split(jax.random.key(2)))
    at = jnp.arange(6)

    def scores(offset: int) -> np.ndarray:
        rq, rk = model.rope(q, at + offset, 10_000.0), model.rope(k, at + offset, 10_000.0)
        return np.asarray(jnp.einsum("blhk,bmhk->bhlm", rq, rk))

    np.testing.assert_allclose(scores(0), scores(37), rtol=1e-4, atol=1e-4)
    plain = np.asarray(jnp.einsum("blhk,bmhk->bhlm", q, k))
    assert not np.allclose(scores(0), plain, atol=1e-2)  # it does rotate


@pytest.mark.parametrize("name", every_variant())
def test_every_variant_saves_and_reloads_as_a_model_directory(name: str, tmp_path: Path) -> None:
    from nanogptx import checkpoint, config, tokenizer

    cfg = config.Config(model=variant(name))
    params = jax.device_get(spread(init(cfg.model, V, jax.random.key(0))))
    tok = tokenizer.CharTokenizer("".join(map(chr, range(65, 65 + V)))).identity()
    checkpoint.save_model(tmp_path / "m", params, cfg, tok, step=7)
    loaded, cfg2, _ = checkpoint.load_model(tmp_path / "m")
    assert cfg2.model == dataclasses.replace(cfg.model, vocab_size=cfg2.model.vocab_size)
    assert jax.tree.structure(loaded) == jax.tree.structure(params)
    x = ids()
    np.testing.assert_array_equal(
        forward(loaded, x, cfg2.model, rt=REFERENCE), forward(params, x, cfg.model, rt=REFERENCE)
    )
