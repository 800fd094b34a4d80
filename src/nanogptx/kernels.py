"""The primitives the model is written with, in two sets: REFERENCE (plain jnp, JAX's own
derivatives: forward mode, jax.hessian and forward-over-reverse all work) and FAST (the same
values to float32 rounding, with hand-written gradients that XLA's CPU backend compiles without
large transposes or recomputation). runtime.choose picks one; a new primitive goes into
REFERENCE first and into FAST once someone has written and measured a faster one.

Measured with `python benchmarks/bench_model.py` (nanoGPT's CPU recipe, one train step, XLA CPU):
  - matmul: XLA's CPU dot library (YNNPACK) only reads [M,K]@[K,N] or [M,K]@[N,K]; for the
    weight gradient x^T dy it inserts a transposing copy, fused into the elementwise producer
    and recomputing it per element (4-6 ms per layer behind GELU). The hand-written weight
    gradient, a 2-D dot_general contracting the token axis, goes to Eigen, which reads the
    transposed operands in place: 24.5 -> 18.1 ms.
  - gelu: jax.nn.gelu(approximate=False) differentiates through erfc, slow on XLA CPU; the erf
    form with a one-pass gradient, and
  - layernorm: the textbook gradient from the saved normalised input, together
    18.1 -> 17.0 ms.
  - rmsnorm: the same for RMSNorm (no mean). gelu_tanh, relu2 and silu are the reference ones:
    no faster form has been measured yet.
"""

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


# ---------------------------------------------------------------- reference: plain jnp


def layernorm_reference(x_BxLxD: jax.Array, g_D: jax.Array) -> jax.Array:
    mean = x_BxLxD.mean(-1, keepdims=True)
    var = jnp.square(x_BxLxD - mean).mean(-1, keepdims=True)
    return (x_BxLxD - mean) * jax.lax.rsqrt(var + EPS) * g_D


def rmsnorm_reference(x_BxLxD: jax.Array, g_D: jax.Array) -> jax.Array:
    return x_BxLxD * jax.lax.rsqrt(jnp.square(x_BxLxD).mean(-1, keepdims=True) + EPS) * g_D


def relu2(x: jax.Array) -> jax.Array:
    return jnp.square(jax.nn.relu(x))


REFERENCE = Kernels(
    "reference",
    matmul=jnp.matmul,
    gelu=functools.partial(jax.nn.gelu, approximate=False),
    gelu_tanh=functools.partial(jax.nn.gelu, approximate=True),
    relu2=relu2,
    silu=jax.nn.silu,
    layernorm=layernorm_reference,
    rmsnorm=rmsnorm_reference,
)


# ---------------------------------------------------------------- fast: hand-written gradients


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


FAST = dataclasses.replace(
    REFERENCE, name="fast", matmul=matmul, gelu=gelu, layernorm=layernorm, rmsnorm=rmsnorm
)
BY_NAME = {k.name: k for k in (REFERENCE, FAST)}
