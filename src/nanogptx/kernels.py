"""The primitives the model is written with, in two sets: REFERENCE (plain jnp, JAX's own
derivatives: forward mode, jax.hessian and forward-over-reverse work) and FAST (the same values
to float32 rounding, hand-written gradients that XLA's CPU backend runs faster: measured in
benchmarks/bench_model.py). runtime.choose picks one; a new primitive goes into REFERENCE
first, into FAST once a faster form is written and measured."""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp

EPS = 1e-5  # the norms', as torch's LayerNorm

Unary = Callable[[jax.Array], jax.Array]
Binary = Callable[[jax.Array, jax.Array], jax.Array]
# (x_TxD, w_VxD, targets_T, Head) -> (loss, ce, mean log Z^2, mean log Z), see cross_entropy.
Loss = Callable[..., tuple[jax.Array, jax.Array, jax.Array, jax.Array]]


@dataclass(frozen=True)
class Head:
    """What the output layer and its loss apply to the logits (model.py passes them from the
    config): soft-capping (0: none), the z-loss coefficient (0: none), how many of the V rows are
    real tokens (the rest, vocab_multiple's padding, get logit -inf; 0: all), and how many
    logits one chunk of positions may hold (the runtime's loss_chunk)."""

    softcap: float = 0.0
    z_loss: float = 0.0
    vocab: int = 0
    chunk: int = 1 << 23


@dataclass(frozen=True)
class Kernels:
    """A set of primitives. The norms take x_...xD and a gain g_D and normalise over the last
    axis (no bias: the model adds it); the activations are elementwise."""

    name: str
    matmul: Binary  # x_TxI @ w_IxO
    gelu: Unary  # exact (erf), torch.nn.GELU()
    gelu_tanh: Unary  # the tanh approximation, HF GPT-2's gelu_new
    relu2: Unary  # relu(x)^2 (modded-nanogpt)
    silu: Unary  # x sigmoid(x), SwiGLU's gate
    layernorm: Binary
    rmsnorm: Binary
    # (x_TxD, w_VxD, targets_T, head) -> (loss, ce, mean log Z^2, mean log Z): the output layer
    # and the mean next-token loss (cross-entropy + z_loss * mean log Z^2); only the first
    # output is differentiated.
    cross_entropy: Loss


# ---------------------------------------------------------------- reference: plain jnp


def layernorm_reference(x_BxLxD: jax.Array, g_D: jax.Array) -> jax.Array:
    mean = x_BxLxD.mean(-1, keepdims=True)
    var = jnp.square(x_BxLxD - mean).mean(-1, keepdims=True)
    return (x_BxLxD - mean) * jax.lax.rsqrt(var + EPS) * g_D


def rmsnorm_reference(x_BxLxD: jax.Array, g_D: jax.Array) -> jax.Array:
    return x_BxLxD * jax.lax.rsqrt(jnp.square(x_BxLxD).mean(-1, keepdims=True) + EPS) * g_D


def relu2(x: jax.Array) -> jax.Array:
    return jnp.square(jax.nn.relu(x))


def capped(logits_TxV: jax.Array, head: Head) -> jax.Array:
    """cap * tanh(logits / cap) where the head soft-caps."""
    return head.softcap * jnp.tanh(logits_TxV / head.softcap) if head.softcap else logits_TxV


def masked(logits_TxV: jax.Array, head: Head) -> jax.Array:
    """The padding rows (past head.vocab) at -inf: never any probability."""
    V = logits_TxV.shape[-1]
    if 0 < head.vocab < V:
        return jnp.where(jnp.arange(V) < head.vocab, logits_TxV, -jnp.inf)
    return logits_TxV


def logits(x_TxD: jax.Array, w_VxD: jax.Array, head: Head) -> jax.Array:
    """The output logits x @ w^T (any leading axes of x), soft-capped, the padding rows at -inf."""
    return masked(capped(x_TxD @ w_VxD.T, head), head)


def cross_entropy_reference(
    x_TxD: jax.Array, w_VxD: jax.Array, targets_T: jax.Array, head: Head
) -> tuple[jax.Array, ...]:
    """The whole T x V logits at once, and JAX's own derivatives through them."""
    logits_TxV = logits(x_TxD, w_VxD, head)
    logp_TxV = jax.nn.log_softmax(logits_TxV, axis=-1)
    ce = -jnp.take_along_axis(logp_TxV, targets_T[:, None], axis=-1).mean()
    log_z_T = jax.nn.logsumexp(logits_TxV, axis=-1)
    z2 = jnp.square(log_z_T).mean()
    return ce + head.z_loss * z2 if head.z_loss else ce, ce, z2, log_z_T.mean()


REFERENCE = Kernels(
    "reference",
    matmul=jnp.matmul,
    gelu=functools.partial(jax.nn.gelu, approximate=False),
    gelu_tanh=functools.partial(jax.nn.gelu, approximate=True),
    relu2=relu2,
    silu=jax.nn.silu,
    layernorm=layernorm_reference,
    rmsnorm=rmsnorm_reference,
    cross_entropy=cross_entropy_reference,
)


# ---------------------------------------------------------------- fast: hand-written gradients


@jax.custom_vjp
def matmul(x_TxI: jax.Array, w_IxO: jax.Array) -> jax.Array:
    """x @ w over the last axis of x; its weight gradient is one plain 2-D dot. (XLA's CPU dot
    library, YNNPACK, reads only [M,K]@[K,N] or [M,K]@[N,K]: for x^T dy it inserts a transposed
    copy, fused into the elementwise producer and recomputing it per element; the 2-D dot goes
    to Eigen, which reads the transposed operands in place.)"""
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
    whose gradient goes through erfc."""
    return 0.5 * x * (1.0 + jax.lax.erf(x * (1.0 / math.sqrt(2.0))))


def _gelu_fwd(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    return gelu(x), x


def _gelu_bwd(x: jax.Array, dy: jax.Array) -> tuple[jax.Array]:
    cdf = 0.5 * (1.0 + jax.lax.erf(x * (1.0 / math.sqrt(2.0))))
    pdf = jnp.exp(-0.5 * x * x) * (1.0 / math.sqrt(2.0 * math.pi))
    return ((dy * (cdf + x * pdf)).astype(x.dtype),)


gelu.defvjp(_gelu_fwd, _gelu_bwd)


def _norm_fwd(x: jax.Array, g: jax.Array, centre: bool) -> tuple[jax.Array, tuple]:
    xc = x - x.mean(-1, keepdims=True) if centre else x
    rstd = jax.lax.rsqrt(jnp.square(xc).mean(-1, keepdims=True) + EPS)
    xhat = xc * rstd
    return xhat * g, (xhat, rstd, g)


def _norm_bwd(centre: bool, res: tuple, dy: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The textbook gradient from the saved normalised input (LayerNorm also removes the
    mean of dxhat, which the centring takes out)."""
    xhat, rstd, g = res
    dxhat = dy * g
    if centre:
        dxhat_c = dxhat - dxhat.mean(-1, keepdims=True)
    else:
        dxhat_c = dxhat
    dx = rstd * (dxhat_c - xhat * (dxhat * xhat).mean(-1, keepdims=True))
    dg = (dy * xhat).reshape(-1, xhat.shape[-1]).sum(0)
    return dx, dg


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _norm(x_BxLxD: jax.Array, g_D: jax.Array, centre: bool) -> jax.Array:
    return _norm_fwd(x_BxLxD, g_D, centre)[0]


_norm.defvjp(_norm_fwd, _norm_bwd)


def layernorm(x_BxLxD: jax.Array, g_D: jax.Array) -> jax.Array:
    return _norm(x_BxLxD, g_D, True)


def rmsnorm(x_BxLxD: jax.Array, g_D: jax.Array) -> jax.Array:
    return _norm(x_BxLxD, g_D, False)


def chunks(T: int, V: int, most: int) -> tuple[int, int]:
    """(C, n): n chunks of C positions, C a power of two with C x V at most `most` logits (at
    least one position, at most T); the last chunk may run past T (padding)."""
    C = 1 << max(0, (max(1, most // V)).bit_length() - 1)
    C = min(C, T)
    return C, -(-T // C)


def _in_chunks(x_TxD: jax.Array, targets_T: jax.Array, C: int, n: int) -> tuple:
    """x, the targets and which positions are real, as n chunks of C (the last padded)."""
    T, D = x_TxD.shape
    pad = n * C - T
    x_NxCxD = jnp.pad(x_TxD, ((0, pad), (0, 0))).reshape(n, C, D)
    t_NxC = jnp.pad(targets_T, (0, pad)).reshape(n, C)
    return x_NxCxD, t_NxC, (jnp.arange(n * C) < T).reshape(n, C)


def _chunk_losses(x_CxD: jax.Array, w_VxD: jax.Array, t_C: jax.Array, head: Head) -> tuple:
    """One chunk's nll and log Z per position, and what its gradient is made from: the capped
    logits, exp(logits - max) and its sum."""
    capped_CxV = capped(x_CxD @ w_VxD.T, head)
    logits_CxV = masked(capped_CxV, head)
    most_C = logits_CxV.max(-1)
    e_CxV = jnp.exp(logits_CxV - most_C[:, None])
    sum_C = e_CxV.sum(-1)
    log_z_C = jnp.log(sum_C) + most_C
    picked_C = jnp.take_along_axis(logits_CxV, t_C[:, None], axis=-1)[:, 0]
    return log_z_C - picked_C, log_z_C, (capped_CxV, e_CxV, sum_C)


def token_losses(
    x_TxD: jax.Array, w_VxD: jax.Array, targets_T: jax.Array, head: Head
) -> tuple[jax.Array, jax.Array]:
    """The nll and log Z of each position, over chunks of positions (forward only: scoring)."""
    T = x_TxD.shape[0]
    C, n = chunks(T, w_VxD.shape[0], head.chunk)
    x_NxCxD, t_NxC, _ = _in_chunks(x_TxD, targets_T, C, n)
    nll_NxC, log_z_NxC = jax.lax.map(
        lambda xs: _chunk_losses(xs[0], w_VxD, xs[1], head)[:2], (x_NxCxD, t_NxC)
    )
    return nll_NxC.reshape(n * C)[:T], log_z_NxC.reshape(n * C)[:T]


def _chunked(
    x_TxD: jax.Array, w_VxD: jax.Array, targets_T: jax.Array, head: Head, grads: bool
) -> tuple:
    """The loss's outputs from sums over positions, chunk by chunk (lax.scan), and with `grads`
    the gradients of the loss (mean nll + z_loss mean log Z^2) for x and w."""
    T, D = x_TxD.shape
    V = w_VxD.shape[0]
    C, n = chunks(T, V, head.chunk)

    def chunk(carry: tuple, xs: tuple) -> tuple:
        sums, dw_VxD = carry
        x_CxD, t_C, valid_C = xs
        nll_C, log_z_C, (capped_CxV, e_CxV, sum_C) = _chunk_losses(x_CxD, w_VxD, t_C, head)
        nll_C, log_z_C = jnp.where(valid_C, nll_C, 0.0), jnp.where(valid_C, log_z_C, 0.0)
        terms = (nll_C, jnp.square(log_z_C), log_z_C)
        sums = tuple(a + b.sum() for a, b in zip(sums, terms, strict=True))
        if not grads:
            return (sums, dw_VxD), None
        # d loss / d logits: (softmax - one-hot) / T, and z_loss 2 log Z softmax / T.
        scale_C = jnp.where(valid_C, 1.0 / T, 0.0)
        p_scale_C = scale_C * (1.0 + 2.0 * head.z_loss * log_z_C) if head.z_loss else scale_C
        dlogits_CxV = e_CxV * (p_scale_C / sum_C)[:, None]
        dlogits_CxV = dlogits_CxV - jax.nn.one_hot(t_C, V, dtype=e_CxV.dtype) * scale_C[:, None]
        if head.softcap:
            dlogits_CxV = dlogits_CxV * (1.0 - jnp.square(capped_CxV / head.softcap))
        dx_CxD = dlogits_CxV @ w_VxD
        # Contract the chunk's positions of two 2-D arrays (no transposed copy; see matmul).
        dw_VxD = dw_VxD + jax.lax.dot_general(dlogits_CxV, x_CxD, (((0,), (0,)), ((), ())))
        return (sums, dw_VxD), dx_CxD

    zero = jnp.zeros((), jnp.float32)
    dw_VxD = jnp.zeros_like(w_VxD) if grads else zero
    (sums, dw_VxD), dx_NxCxD = jax.lax.scan(
        chunk, ((zero, zero, zero), dw_VxD), _in_chunks(x_TxD, targets_T, C, n)
    )
    ce, z2, log_z = (s / T for s in sums)
    out = (ce + head.z_loss * z2 if head.z_loss else ce, ce, z2, log_z)
    if not grads:
        return out
    return out, (dx_NxCxD.reshape(n * C, D)[:T], dw_VxD)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def cross_entropy(
    x_TxD: jax.Array, w_VxD: jax.Array, targets_T: jax.Array, head: Head
) -> tuple[jax.Array, ...]:
    """The loss over chunks of positions, never the whole logits. Differentiated, the forward
    computes the loss and both gradients in one pass (softmax minus one-hot, then p @ w and an
    accumulated p^T x: three matmuls, no recompute), which the backward only scales. Only the
    first output (the loss) has a gradient. A primitive rather than model code because it has
    two forms: the whole logits (REFERENCE) are the definition, with every JAX transformation;
    the chunks are what training runs."""
    return _chunked(x_TxD, w_VxD, targets_T, head, grads=False)


def _cross_entropy_fwd(
    x_TxD: jax.Array, w_VxD: jax.Array, targets_T: jax.Array, head: Head
) -> tuple:
    out, (dx_TxD, dw_VxD) = _chunked(x_TxD, w_VxD, targets_T, head, grads=True)
    return out, (dx_TxD.astype(x_TxD.dtype), dw_VxD.astype(w_VxD.dtype))


def _cross_entropy_bwd(head: Head, res: tuple, g: tuple) -> tuple:
    dx_TxD, dw_VxD = res
    return g[0] * dx_TxD, g[0] * dw_VxD, None


cross_entropy.defvjp(_cross_entropy_fwd, _cross_entropy_bwd)

# Logits below which FAST's loss holds them whole: there JAX's own derivatives beat the chunked
# primitive's (1.3x on the character recipe's value_and_grad), which wins 1.9x at GPT-2's
# vocabulary (benchmarks/bench_loss.py measures both).
WHOLE_LOGITS = 1 << 20


def cross_entropy_fast(
    x_TxD: jax.Array, w_VxD: jax.Array, targets_T: jax.Array, head: Head
) -> tuple[jax.Array, ...]:
    """FAST's loss: the whole logits where they are few (WHOLE_LOGITS, and at most one chunk),
    else the chunked primitive."""
    T, V = x_TxD.shape[0], w_VxD.shape[0]
    if T * V <= min(WHOLE_LOGITS, head.chunk):
        return cross_entropy_reference(x_TxD, w_VxD, targets_T, head)
    return cross_entropy(x_TxD, w_VxD, targets_T, head)


FAST = dataclasses.replace(
    REFERENCE,
    name="fast",
    matmul=matmul,
    gelu=gelu,
    layernorm=layernorm,
    rmsnorm=rmsnorm,
    cross_entropy=cross_entropy_fast,
)
BY_NAME = {k.name: k for k in (REFERENCE, FAST)}
