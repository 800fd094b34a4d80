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
  - normalize (LayerNorm): the textbook gradient from the saved normalised input, together
    18.1 -> 17.0 ms.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp

EPS = 1e-5  # LayerNorm's, as torch


@dataclass(frozen=True)
class Kernels:
    """A set of primitives: x_TxI @ w_IxO, exact (erf) GELU, LayerNorm without its bias."""

    name: str
    matmul: Callable[[jax.Array, jax.Array], jax.Array]
    gelu: Callable[[jax.Array], jax.Array]
    normalize: Callable[[jax.Array, jax.Array], jax.Array]


# ---------------------------------------------------------------- reference: plain jnp


def normalize_reference(x_BxLxD: jax.Array, g_D: jax.Array) -> jax.Array:
    mean = x_BxLxD.mean(-1, keepdims=True)
    var = jnp.square(x_BxLxD - mean).mean(-1, keepdims=True)
    return (x_BxLxD - mean) * jax.lax.rsqrt(var + EPS) * g_D


REFERENCE = Kernels(
    "reference",
    jnp.matmul,
    functools.partial(jax.nn.gelu, approximate=False),
    normalize_reference,
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


@jax.custom_vjp
def normalize(x_BxLxD: jax.Array, g_D: jax.Array) -> jax.Array:
    return _normalize_fwd(x_BxLxD, g_D)[0]


def _normalize_fwd(x: jax.Array, g: jax.Array) -> tuple[jax.Array, tuple]:
    xc = x - x.mean(-1, keepdims=True)
    rstd = jax.lax.rsqrt(jnp.square(xc).mean(-1, keepdims=True) + EPS)
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


normalize.defvjp(_normalize_fwd, _normalize_bwd)

FAST = Kernels("fast", matmul, gelu, normalize)
BY_NAME = {k.name: k for k in (REFERENCE, FAST)}
