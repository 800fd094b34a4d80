"""The training's compiled programs: its processes, device mesh and state shardings, the train,
diagnostics and eval steps (the one builder of each, which training runs and nanogptx.plan
measures), compiled ahead of time, and the batches they take on the mesh."""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from nanogptx import config, loader, model, optim, runtime
from nanogptx.config import Config, TrainConfig
from nanogptx.errors import UserError

State = dict[str, Any]
# Rows of the step's first micro-batch whose forward gives the diagnostics' attention logits.
STATS_ROWS = 8
# The training stage's compiled programs: the train step, the train step that also records
# diagnostics (logging.stats_interval > 0) and the eval step.
PROGRAMS = ("train_step", "diagnostics_step", "eval_step")
# jax.distributed: seconds to wait for every process to join, and after which a process that
# stopped sending heartbeats (crashed, node lost) fails the others (JAX's default is 100 s).
JOIN_TIMEOUT_S, HEARTBEAT_TIMEOUT_S = 300, 30


class TrainError(UserError, RuntimeError):
    """An expected failure (inconsistent config and data, NaN loss, incompatible checkpoint)."""


# ---------------------------------------------------------------- processes, mesh and sharding


def initialize_distributed() -> None:
    """Join the other processes of a multi-process job: under `srun` with several tasks (SLURM is
    detected by JAX) or where JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID are set."""
    env = os.environ
    slurm = int(env.get("SLURM_STEP_NUM_TASKS", "1")) > 1 and "SLURM_STEP_NODELIST" in env
    if (not slurm and "JAX_COORDINATOR_ADDRESS" not in env) or jax.distributed.is_initialized():
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU runs; no-op on GPU
    timeouts = dict(
        initialization_timeout=JOIN_TIMEOUT_S, heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_S
    )
    if slurm:
        jax.distributed.initialize(**timeouts)
    else:
        jax.distributed.initialize(
            num_processes=int(env["JAX_NUM_PROCESSES"]),
            process_id=int(env["JAX_PROCESS_ID"]),
            **timeouts,
        )


def leave(code: int) -> NoReturn:
    """Exit with code; a process of a multi-process job leaves at once, since jax.distributed's
    shutdown barrier would wait for a failed peer until the heartbeat timeout."""
    if jax.distributed.is_initialized():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def make_mesh() -> Mesh:
    """One axis "data" over every device of every process (Auto axes: XLA places collectives)."""
    return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(AxisType.Auto,))


def leaf_spec(shape: tuple[int, ...], n_devices: int, mode: str) -> P:
    """dp: replicated. fsdp: the largest axis divisible by the device count is sharded (ties go
    to the later axis, so a stacked layer axis stays whole); scalars and leaves with no such
    axis are replicated."""
    axes = [i for i, d in enumerate(shape) if d % n_devices == 0]
    if mode == "dp" or n_devices == 1 or not axes:
        return P()
    axis = max(axes, key=lambda i: (shape[i], i))
    return P(*("data" if i == axis else None for i in range(len(shape))))


def tree_shardings(abstract: Any, mesh: Mesh, mode: str) -> Any:
    return jax.tree.map(
        lambda x: NamedSharding(mesh, leaf_spec(x.shape, mesh.size, mode)), abstract
    )


def bytes_per_device(abstract: Any, shardings: Any) -> int:
    sizes = jax.tree.map(
        lambda x, s: math.prod(s.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize,
        abstract,
        shardings,
    )
    return int(sum(jax.tree.leaves(sizes)))


def to_host(tree: Any) -> Any:
    """Numpy copies of (possibly sharded, possibly multi-process) arrays, whole on every host."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return multihost_utils.process_allgather(tree, tiled=True)
    return jax.device_get(tree)


def place(host_tree: Any, shardings: Any) -> Any:
    return jax.tree.map(
        lambda a, s: jax.make_array_from_callback(a.shape, s, lambda i: a[i]), host_tree, shardings
    )


def plan_state(cfg: Config, V: int, mesh: Mesh) -> tuple[State, Any]:
    """Shapes of the train state (jax.eval_shape: nothing allocated) and its shardings."""
    params_abs = jax.eval_shape(lambda: model.init_params(cfg.model, V, jax.random.key(0)))
    state_abs = {
        "params": params_abs,
        "opt": jax.eval_shape(optim.make(cfg.train).init, params_abs),
    }
    return state_abs, tree_shardings(state_abs, mesh, cfg.train.sharding)


# ---------------------------------------------------------------- the steps


def make_runtime(cfg: Config, device: Any = None) -> runtime.Runtime:
    """The model's runtime on a device (default: this process's first; a compile-only device of
    a GPU target for the plan), from its platform and compute capability (runtime.choose); an
    impossible choice is a TrainError naming the setting."""
    try:
        return runtime.choose_for(
            cfg.model, device or jax.local_devices()[0], cfg.train.compute_dtype
        )
    except runtime.Unsupported as e:
        raise TrainError(str(e)) from None


def make_train_step(
    cfg: Config,
    optimizer: optax.GradientTransformation,
    diagnostics: bool = False,
    rt: runtime.Runtime | None = None,
) -> Callable:
    """(state, x_AxBxL, y_AxBxL, step, key) -> (state, stats): gradients averaged over the A
    micro-batches (lax.scan), then one optimizer update. stats: "loss" (the cross-entropy),
    "grad_norm", and "z_loss" where the model has it. With `diagnostics`, also "diag"
    (diagnose: the same step otherwise). rt: the runtime (default: make_runtime's on this
    process's devices)."""
    dtype = jnp.dtype(cfg.train.compute_dtype)
    rt = rt or make_runtime(cfg)
    rt_stats = runtime.for_diagnostics(rt)
    dropout = cfg.model.dropout > 0

    def train_step(
        state: State, x_AxBxL: jax.Array, y_AxBxL: jax.Array, step: jax.Array, key: jax.Array
    ) -> tuple[State, dict[str, Any]]:
        params = state["params"]
        grad_fn = jax.value_and_grad(model.loss_fn, has_aux=True)

        def micro(grads: Any, batch: tuple) -> tuple[Any, dict[str, jax.Array]]:
            x_BxL, y_BxL, m = batch
            k = jax.random.fold_in(jax.random.fold_in(key, step), m) if dropout else None
            (_, parts), g = grad_fn(
                params, x_BxL, y_BxL, cfg.model, rt=rt, dropout_key=k, compute_dtype=dtype
            )
            return jax.tree.map(jnp.add, grads, g), parts

        A = x_AxBxL.shape[0]
        zeros = jax.tree.map(jnp.zeros_like, params)
        if A == 1:
            grads, parts = micro(zeros, (x_AxBxL[0], y_AxBxL[0], 0))
        else:
            grads, parts_A = jax.lax.scan(micro, zeros, (x_AxBxL, y_AxBxL, jnp.arange(A)))
            grads = jax.tree.map(lambda g: g / A, grads)
            parts = jax.tree.map(lambda v: v.mean(0), parts_A)
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = optimizer.update(grads, state["opt"], params)
        stats = {"loss": parts["ce"], "grad_norm": grad_norm}
        if "z_loss" in parts:
            stats["z_loss"] = parts["z_loss"]
        if diagnostics:
            rows_KxL = x_AxBxL[0, :STATS_ROWS]
            stats["diag"] = diagnose(cfg, rt_stats, params, grads, updates, rows_KxL, parts)
        params = optax.apply_updates(params, updates)
        return {"params": params, "opt": opt_state}, stats

    return train_step


def diagnose(
    cfg: Config,
    rt_stats: runtime.Runtime,
    params: model.Params,
    grads: Any,
    updates: Any,
    rows_KxL: jax.Array,
    parts: dict[str, jax.Array],
) -> dict[str, Any]:
    """layer_rms of the parameters, gradients and update, the mean log Z of the step's logits,
    and the largest attention logit per layer from a forward of the first micro-batch's first
    STATS_ROWS rows with einsum attention (the one implementation whose logits the model reads;
    on the whole step it would hold B x H x L x L of them per layer for the backward)."""
    dtype = jnp.dtype(cfg.train.compute_dtype)
    _, most_N = model.trunk(
        params, rows_KxL, cfg.model, rt=rt_stats, compute_dtype=dtype, stats=True
    )
    return {
        "param_rms": layer_rms(params),
        "grad_rms": layer_rms(grads),
        "update_rms": layer_rms(updates),
        "attn_logit_max": most_N,
        "log_z": parts["log_z"],
    }


def layer_rms(tree: model.Params) -> dict[str, jax.Array]:
    """The RMS of each parameter-shaped leaf, per layer for the stacked blocks (N values), one
    value for the others; keyed "blocks.attn_w", "wte", ..."""
    return {
        ".".join(str(k.key) for k in path): optim.layer_rms(path, x).reshape(-1)
        for path, x in jax.tree_util.tree_leaves_with_path(tree)
    }


def make_eval_step(cfg: Config, rt: runtime.Runtime | None = None) -> Callable:
    dtype = jnp.dtype(cfg.train.compute_dtype)
    rt = rt or make_runtime(cfg)

    def eval_step(params: Any, x_BxL: jax.Array, y_BxL: jax.Array) -> jax.Array:
        parts = model.loss_fn(params, x_BxL, y_BxL, cfg.model, rt=rt, compute_dtype=dtype)[1]
        return parts["ce"]

    return eval_step


# ---------------------------------------------------------------- compiled programs


def with_batch(cfg: Config, batch_size: int) -> Config:
    """cfg with train.batch_size set (auto's resolved): the programs' shapes."""
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, batch_size=batch_size))


def trace_program(cfg: Config, V: int, A: int, mesh: Mesh, name: str) -> jax.stages.Traced:
    """One of the training stage's PROGRAMS, traced for the devices of mesh (this process's, or
    a GPU target's compile-only ones) with every sharding fixed and the state donated: the one
    builder of each, which training compiles and runs and nanogptx.plan measures. The batch
    shapes are train.batch_size's (resolved: with_batch)."""
    m, t = cfg.model, cfg.train
    device = mesh.devices.flat[0]
    rt = make_runtime(cfg, device)
    state_abs, state_sh = plan_state(cfg, V, mesh)
    replicated = NamedSharding(mesh, P())
    if name == "eval_step":
        eval_sh = NamedSharding(mesh, P("data", None))
        e_abs = jax.ShapeDtypeStruct((t.batch_size, m.block_size), jnp.int32)
        jitted = jax.jit(
            make_eval_step(cfg, rt),
            in_shardings=(state_sh["params"], eval_sh, eval_sh),
            out_shardings=replicated,
        )
        args = (state_abs["params"], e_abs, e_abs)
    elif name in ("train_step", "diagnostics_step"):
        batch_sh = NamedSharding(mesh, P(None, "data", None))
        x_abs = jax.ShapeDtypeStruct((A, t.batch_size, m.block_size), jnp.int32)
        jitted = jax.jit(
            make_train_step(cfg, optim.make(t), name == "diagnostics_step", rt),
            in_shardings=(state_sh, batch_sh, batch_sh, replicated, replicated),
            out_shardings=(state_sh, replicated),
            donate_argnums=(0,),
        )
        step_abs = jax.ShapeDtypeStruct((), jnp.int32)
        args = (state_abs, x_abs, x_abs, step_abs, jax.eval_shape(lambda: jax.random.key(0)))
    else:
        raise ValueError(f"program {name!r}: expected one of {PROGRAMS}")
    with runtime.cudnn_capability(runtime.capability_of(device)):
        return jitted.trace(*args)


def compile_program(cfg: Config, V: int, A: int, mesh: Mesh, name: str) -> Any:
    """trace_program, lowered and compiled (for a GPU target's devices too: the platform comes
    from the shardings); compiled once per process for settings that give the same program
    (the plan's choice of a micro-batch and the training that follows share them, and tests
    call train() many times)."""
    return _compile_program(config.program_config(cfg), V, A, mesh, name)


@functools.lru_cache(maxsize=16)
def _compile_program(cfg: Config, V: int, A: int, mesh: Mesh, name: str) -> Any:
    options = runtime.compiler_options(mesh.devices.flat[0])
    return trace_program(cfg, V, A, mesh, name).lower().compile(options)


def programs_of(cfg: Config) -> tuple[str, ...]:
    """The PROGRAMS a training with cfg compiles."""
    return tuple(p for p in PROGRAMS if p != "diagnostics_step" or cfg.logging.stats_interval > 0)


@dataclass(frozen=True)
class Programs:
    """A training's compiled steps: train, eval and (logging.stats_interval > 0) diagnostics."""

    train_step: Any
    eval_step: Any
    diagnostics_step: Any
    stats_interval: int

    def run(
        self, state: State, step: int, x: jax.Array, y: jax.Array, key: jax.Array
    ) -> tuple[State, dict[str, Any]]:
        """One optimizer step; every stats_interval steps the diagnostics step ("diag")."""
        if self.diagnostics_step is not None and step % self.stats_interval == 0:
            return self.diagnostics_step(state, x, y, np.int32(step), key)
        return self.train_step(state, x, y, np.int32(step), key)


def compile_steps(cfg: Config, V: int, A: int, mesh: Mesh) -> Programs:
    """The train and eval steps, and the train step with diagnostics (None when
    logging.stats_interval is 0), compiled ahead of time (compile_program)."""
    names = programs_of(cfg)
    steps = {name: compile_program(cfg, V, A, mesh, name) for name in names}
    return Programs(
        steps["train_step"],
        steps["eval_step"],
        steps.get("diagnostics_step"),
        cfg.logging.stats_interval,
    )


# ---------------------------------------------------------------- the run's layout and batches


@dataclass(frozen=True)
class Layout:
    """Where and in what shapes a training runs: the mesh, the embedding rows V, micro-batches
    of B rows (A per step) of L positions, the train state's shapes and shardings, the model's
    runtime (and the diagnostics' where they run), the batch schedule provenance records, and the
    model's size and FLOPs per token."""

    mesh: Mesh
    V: int
    B: int
    A: int
    L: int
    state_abs: State
    state_sh: Any
    rt: runtime.Runtime
    rt_stats: runtime.Runtime | None
    schedule: dict[str, Any]
    n_params: int
    flops_per_token: float  # of a training step, model.flops_per_token (nanoGPT's estimate)

    @property
    def tokens_per_step(self) -> int:
        return self.A * self.B * self.L

    @property
    def param_bytes(self) -> int:
        return bytes_per_device(self.state_abs["params"], self.state_sh["params"])

    @property
    def opt_bytes(self) -> int:
        return bytes_per_device(self.state_abs["opt"], self.state_sh["opt"])


def train_batch(data: loader.Prepared, t: TrainConfig, lay: Layout, step: int) -> tuple:
    """Step's A micro-batches on the mesh (each process loads only its rows)."""
    A, spec = lay.A, loader.BatchSpec("train", t.seed, lay.B, lay.L, t.batch_order)

    def load(rows: slice) -> tuple[np.ndarray, np.ndarray]:
        xy = [loader.batch(data, spec, step * A + i, rows) for i in range(A)]
        return np.stack([x for x, _ in xy]), np.stack([y for _, y in xy])

    batch_sh = NamedSharding(lay.mesh, P(None, "data", None))
    return loader.device_batch(batch_sh, (A, lay.B, lay.L), 1, load)


def eval_batch(data: loader.Prepared, t: TrainConfig, lay: Layout, split: str, k: int) -> tuple:
    """Evaluation batch k of split on the mesh."""

    spec = loader.BatchSpec(split, t.seed, lay.B, lay.L, stream="eval")

    def load(rows: slice) -> tuple[np.ndarray, np.ndarray]:
        return loader.batch(data, spec, k, rows)

    return loader.device_batch(NamedSharding(lay.mesh, P("data", None)), (lay.B, lay.L), 0, load)
