"""Optimizers and learning-rate schedules: the optax transformation the train stage steps with,
each optimizer and schedule described at the function that builds it:

    tx = optim.make(cfg.train)           # clipping, then train.optimizer with its schedule
    lr = optim.get_lr(step, cfg.train)   # the schedule as a Python float (logs)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from optax.contrib import MuonDimensionNumbers, scale_by_muon

from nanogptx import model, schema
from nanogptx.config import TrainConfig

# The train settings that only shape the schedule (role schedule): a resumed run may change them,
# and is told how the learning rate goes on.
SCHEDULE_KEYS = schema.keys_with("train", lambda r: r is schema.SCHEDULE)


def _lr(it: Any, t: TrainConfig, xp: Any) -> Any:
    """The learning rate at step `it`, written once for numpy (float64) and jnp (traced): linear
    warmup, then train.lr_schedule (wsd: a linear cooldown over the last cooldown_frac of
    lr_decay_iters), and min_lr past lr_decay_iters (but constant)."""
    lr, lo, warmup, end = t.learning_rate, t.min_lr, t.warmup_iters, t.lr_decay_iters
    if not t.decay_lr:  # nanoGPT's decay_lr = False: the peak from step 0, no warmup
        return xp.full((), lr, it.dtype)
    kind = t.lr_schedule
    warm = lr * (it + 1) / (warmup + 1)
    if kind == "constant":
        return xp.where(it < warmup, warm, lr)
    if kind == "cosine":
        ratio = xp.clip((it - warmup) / (end - warmup), 0.0, 1.0)
        decayed = lo + 0.5 * (1.0 + xp.cos(math.pi * ratio)) * (lr - lo)
    else:  # linear from the warmup's end, or (wsd) from the cooldown's start
        start = warmup if kind == "linear" else max(warmup, end - round(t.cooldown_frac * end))
        ratio = xp.clip((it - start) / max(end - start, 1), 0.0, 1.0)
        decayed = lr + ratio * (lo - lr)
    return xp.where(it < warmup, warm, xp.where(it > end, lo, decayed))


def get_lr(it: int, t: TrainConfig) -> float:
    """The schedule at step it as a float (nanoGPT's get_lr for the cosine schedule)."""
    return float(_lr(np.float64(it), t, np))


def schedule(t: TrainConfig) -> Callable[[jax.Array], jax.Array]:
    """The schedule on a traced step count (optax counts updates from 0, as nanoGPT's iter_num)."""
    return lambda count: _lr(count.astype(jnp.float32), t, jnp)


def _is_hidden_matrix(path: tuple, x: Any) -> bool:
    """A per-layer matrix x_I @ w_IxO of the stacked blocks (the layer axis 0 a batch axis)."""
    return path[0].key == "blocks" and x.ndim == 3


def _decayed(
    direction: optax.GradientTransformation, t: TrainConfig, peak: float
) -> optax.GradientTransformation:
    """direction, weight decay (of the matrices: model.decay_mask) and the scheduled learning
    rate (its peak scaled to `peak`). Decay decoupled is AdamW's, lr_t * weight_decay * p;
    independent is of the peak (Wortsman et al. 2023): (lr_t / learning_rate) * wd * p."""
    lr = schedule(t)
    if peak != t.learning_rate:
        lr = lambda count, lr=lr: lr(count) * (peak / t.learning_rate)  # noqa: E731
    decay = optax.add_decayed_weights(t.weight_decay, model.decay_mask)
    if t.weight_decay_mode == "decoupled":
        return optax.chain(direction, decay, optax.scale_by_learning_rate(lr))

    def fraction(count: jax.Array) -> jax.Array:  # of the peak, in [0, 1]
        return -schedule(t)(count) / t.learning_rate

    independent = optax.chain(decay, optax.scale_by_schedule(fraction))
    # The decay term sees the parameters, not the update: apply it beside the update.
    return optax.chain(
        direction,
        optax.scale_by_learning_rate(lr),
        _plus(independent),
    )


def _plus(extra: optax.GradientTransformation) -> optax.GradientTransformation:
    """updates + extra(zeros, params): adds a term that depends on the parameters alone."""

    def init(params: Any) -> Any:
        return extra.init(params)

    def update(updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        zeros = jax.tree.map(jnp.zeros_like, updates)
        term, state = extra.update(zeros, state, params)
        return jax.tree.map(jnp.add, updates, term), state

    return optax.GradientTransformation(init, update)


def _adam(t: TrainConfig) -> optax.GradientTransformation:
    return optax.scale_by_adam(b1=t.beta1, b2=t.beta2, eps=1e-8)  # eps as torch


def _direction(t: TrainConfig) -> optax.GradientTransformation:
    """adamw (eps 1e-8 as torch), lion, or adafactor (factored second moments, update clipping,
    steps relative to each matrix's RMS per layer: its learning_rate about 10x Adam's)."""
    if t.optimizer == "adamw":
        return _adam(t)
    if t.optimizer == "lion":
        return optax.scale_by_lion(b1=t.beta1, b2=t.beta2)
    if t.optimizer == "adafactor":
        # optax.adafactor's chain, with our decay and schedule after it, and its block RMS taken
        # per layer of the stacked blocks (optax's takes it over the whole array: N layers).
        rms = optax.scale_by_factored_rms()
        return optax.chain(rms, _clip_by_layer_rms(1.0), _scale_by_param_layer_rms(1e-3))
    raise ValueError(f"train.optimizer = {t.optimizer!r}")


def layer_rms(path: tuple, x: jax.Array, keepdims: bool = False) -> jax.Array:
    """The RMS of a parameter-shaped leaf: per layer (N values) for the stacked blocks, whose
    axis 0 is the layer, else one value over the whole leaf."""
    axes = tuple(range(1 if path[0].key == "blocks" else 0, x.ndim))
    return jnp.sqrt(jnp.mean(jnp.square(x.astype(jnp.float32)), axis=axes, keepdims=keepdims))


def _clip_by_layer_rms(threshold: float) -> optax.GradientTransformation:
    """Each layer's update divided by max(1, its RMS / threshold) (Adafactor's update clipping)."""

    def clip(path: tuple, u: jax.Array) -> jax.Array:
        return u / jnp.maximum(1.0, layer_rms(path, u, keepdims=True) / threshold)

    return optax.stateless(lambda u, _: jax.tree_util.tree_map_with_path(clip, u))


def _scale_by_param_layer_rms(min_scale: float) -> optax.GradientTransformation:
    """Each layer's update times max(its parameters' RMS, min_scale) (Adafactor's relative
    step)."""

    def scale(path: tuple, u: jax.Array, p: jax.Array) -> jax.Array:
        return u * jnp.maximum(layer_rms(path, p, keepdims=True), min_scale)

    return optax.stateless(lambda u, p: jax.tree_util.tree_map_with_path(scale, u, p))


def make(t: TrainConfig) -> optax.GradientTransformation:
    """Global-norm clipping, then train.optimizer with train.lr_schedule and weight decay."""
    clip = optax.clip_by_global_norm(t.grad_clip) if t.grad_clip > 0 else optax.identity()
    if t.optimizer != "muon":
        return optax.chain(clip, _decayed(_direction(t), t, t.learning_rate))

    def labels(params: model.Params) -> Any:
        return jax.tree_util.tree_map_with_path(
            lambda path, x: "muon" if _is_hidden_matrix(path, x) else "adamw", params
        )

    def dims(params: Any) -> Any:  # the muon group's tree; optax.partition masks the rest
        return jax.tree.map(lambda _: MuonDimensionNumbers(reduction_axis=1, output_axis=2), params)

    muon = optax.chain(
        scale_by_muon(beta=t.muon_momentum, weight_dimension_numbers=dims),
        optax.stateless(_width_scale),
    )
    groups = {
        "muon": _decayed(muon, t, t.muon_learning_rate),
        "adamw": _decayed(_adam(t), t, t.learning_rate),
    }
    return optax.chain(clip, optax.partition(groups, labels))


def _width_scale(updates: Any, params: Any = None) -> Any:
    """Muon's update of an I x O matrix times sqrt(max(1, O / I)), as modded-nanogpt and optax's
    muon do, so that wide matrices move as far per entry as square ones."""
    return jax.tree.map(lambda u: u * math.sqrt(max(1.0, u.shape[-1] / u.shape[-2])), updates)
