"""Train a GPT: one device mesh, a jitted step, evaluation, checkpoints, logs; the optimizer
(train.optimizer: adamw, muon, lion, adafactor) and its learning-rate schedule after a warmup
(train.lr_schedule: cosine, wsd, linear, constant) are settings.

    python -m nanogptx.train --config config/shakespeare-char.toml --data data/prepared/<data_id> \
        --out results/<run>/model --checkpoints results/<run>/checkpoints

Resumes from the latest checkpoint under --checkpoints; writes the final model into --out.
With a pretrained model.init_from, a fresh start loads its weights (--init: the downloaded
checkpoint's directory; a directory init_from is its own default): that is fine-tuning.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import math
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from nanogptx import (
    checkpoint,
    config,
    hf,
    loader,
    memory,
    model,
    optim,
    progress,
    provenance,
    runtime,
)
from nanogptx.config import Config, TrainConfig

# Peak dense bfloat16 FLOP/s of one device, by device kind, for MFU when train.peak_flops = 0.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "V100": 125e12}
State = dict[str, Any]
# Rows of the step's first micro-batch whose forward gives the diagnostics' attention logits.
STATS_ROWS = 8
# The training stage's compiled programs: the train step, the train step that also records
# diagnostics (logging.stats_interval > 0) and the eval step.
PROGRAMS = ("train_step", "diagnostics_step", "eval_step")
# train.batch_size = 0 on a device with no memory limit known (a CPU): micro-batches of at most
# this many tokens per device.
CPU_AUTO_TOKENS = 8192
# A plan longer than this at the devices' peak gets a warning before anything compiles; a plan
# that is shorter even at SLOWEST_FLOPS per device needs no peak measured to say so.
LONG_PLAN_S, SLOWEST_FLOPS = 3600.0, 1e9
# jax.distributed: seconds to wait for every process to join, and after which a process that
# stopped sending heartbeats (crashed, node lost) fails the others (JAX's default is 100 s).
JOIN_TIMEOUT_S, HEARTBEAT_TIMEOUT_S = 300, 30


class TrainError(RuntimeError):
    """An expected failure (inconsistent config and data, NaN loss, incompatible checkpoint)."""


def log(msg: str) -> None:
    if jax.process_index() == 0:
        print(msg, flush=True)


class Progress:
    """Where training stands, for a person watching: on a terminal (stderr a TTY) a tqdm bar of
    steps with loss and tokens/s; with a progress channel (--progress-fd: the workflow passes
    the terminal of `snakemake` this way while the full log goes to a file) a line every 10 s:
    step / max_iters, loss, tokens/s, ETA and the log's path. Otherwise nothing: the log has it.
    """

    def __init__(self, total: int, start: int, channel: progress.Channel | None) -> None:
        self.total, self.bar, self.channel = total, None, None
        if jax.process_index() != 0:
            return
        if channel is not None:
            self.channel = channel
        elif sys.stderr.isatty():
            from tqdm import tqdm  # the bar: well-kept, and plain text where no terminal is

            self.bar = tqdm(total=total, initial=start, desc="train", unit="step", leave=True)

    def update(self, step: int, loss: float, tok_s: float, s_per_step: float) -> None:
        done = step + 1
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
            self.bar.set_postfix_str(f"loss {loss:.4f}, {tok_s:,.0f} tok/s", refresh=False)
        elif self.channel is not None and (self.channel.due() or done == self.total):
            eta = progress.duration((self.total - done) * s_per_step)
            self.channel.say(f"step {done}/{self.total}, loss {loss:.4f}, {tok_s:,.0f} tok/s, "
                             f"ETA {eta}")  # fmt: skip

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


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


# ---------------------------------------------------------------- optimizer and steps


def make_runtime(cfg: Config, device: Any = None) -> runtime.Runtime:
    """The model's runtime on a device (default: this process's first; a compile-only device of
    a GPU target for the plan), from its platform and compute capability (runtime.choose); an
    impossible choice is a TrainError naming the setting."""
    try:
        return runtime.choose_for(cfg.model, device or jax.local_devices()[0],
                                  cfg.train.compute_dtype)  # fmt: skip
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
    "grad_norm", and "z_loss" where the model has it. With `diagnostics`, also "diag":
    layer_rms of the parameters, gradients and update and the mean log Z of the step's
    logits (the same step otherwise), and the largest attention logit per layer from a forward
    of the first micro-batch's first STATS_ROWS rows with einsum attention (the one
    implementation whose logits the model reads; on the whole step it would hold B x H x L x L
    of them per layer for the backward). rt: the runtime (default: make_runtime's on this
    process's devices)."""
    dtype = jnp.dtype(cfg.train.compute_dtype)
    rt = rt or make_runtime(cfg)
    rt_stats = runtime.for_diagnostics(rt)
    dropout = cfg.model.dropout > 0

    def train_step(
        state: State, x_AxBxL: jax.Array, y_AxBxL: jax.Array, step: jax.Array, key: jax.Array
    ) -> tuple[State, dict[str, Any]]:
        params = state["params"]
        grad_fn = jax.value_and_grad(model.loss_terms, has_aux=True)

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
            most_N = model.trunk(
                params, rows_KxL, cfg.model, rt=rt_stats, compute_dtype=dtype, stats=True
            )[1]
            stats["diag"] = {
                "param_rms": layer_rms(params),
                "grad_rms": layer_rms(grads),
                "update_rms": layer_rms(updates),
                "attn_logit_max": most_N,
                "log_z": parts["log_z"],
            }
        params = optax.apply_updates(params, updates)
        return {"params": params, "opt": opt_state}, stats

    return train_step


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
        parts = model.loss_terms(params, x_BxL, y_BxL, cfg.model, rt=rt, compute_dtype=dtype)[1]
        return parts["ce"]

    return eval_step


def measure_flops(dtype: Any = jnp.float32, n: int = 2048, seconds: float = 1.0) -> float:
    """FLOP/s of an n x n matmul on the default device: the best of as many runs as fit in
    `seconds` (at least 5), so that a moment of load on a shared machine does not set it."""
    a_NxN = jax.random.normal(jax.random.key(0), (n, n), dtype)
    f = jax.jit(lambda x: x @ x)
    f(a_NxN).block_until_ready()
    best, start, runs = math.inf, time.perf_counter(), 0
    while runs < 5 or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        f(a_NxN).block_until_ready()
        best, runs = min(best, time.perf_counter() - t0), runs + 1
    return 2 * n**3 / best


def peak_flops(t: TrainConfig) -> tuple[float | None, str]:
    """Peak FLOP/s of one device, and where it came from: train.peak_flops, else the table by
    device kind, else measured (train.measure_peak) in the compute dtype, else none."""
    if t.peak_flops > 0:
        return t.peak_flops, "train.peak_flops"
    kind = jax.devices()[0].device_kind
    known = next((v for k, v in PEAK_FLOPS.items() if k in kind), None)
    if known is not None:
        return known, f"the table's {kind}"
    if t.measure_peak:
        return measure_flops(jnp.dtype(t.compute_dtype)), f"measured, {t.compute_dtype} matmul"
    return None, f"unknown for {kind}: set train.peak_flops or train.measure_peak"


def plan_peak(t: TrainConfig, flops: float, n_dev: int) -> tuple[float | None, str]:
    """peak_flops, measured where no setting or table gives it but the plan of `flops` could
    take longer than LONG_PLAN_S (a second spent to tell the user, and then MFU)."""
    peak, source = peak_flops(t)
    if peak is None and flops / (SLOWEST_FLOPS * n_dev) > LONG_PLAN_S:
        dtype = jnp.dtype(t.compute_dtype)
        peak, source = measure_flops(dtype), f"measured, {dtype} matmul, for the plan's estimate"
    return peak, source


def long_plan(cfg: Config, steps: int, flops: float, peak: float, n_dev: int, source: str) -> str:
    """A warning for a training of `flops` that would take more than LONG_PLAN_S on these
    devices even at their peak (empty: it would not), with the estimate."""
    at_peak = flops / (peak * n_dev)
    if at_peak <= LONG_PLAN_S:
        return ""
    m = cfg.model
    return (
        f"warning: the {steps:,} steps planned (train.max_iters = {cfg.train.max_iters:,}) are "
        f"{flops:.3g} FLOPs: at least {progress.duration(at_peak)} on "
        f"{progress.plural(n_dev, 'device')} at their peak ({peak / 1e12:.3g} TFLOP/s, {source}), "
        f"about {progress.duration(at_peak / 0.4)} at a typical 40% MFU, for a model of "
        f"{progress.plural(m.n_layer, 'layer')} {m.n_embd} wide. Is this the run you meant? A "
        "run's file holds only what differs from the defaults (GPT-2 124M, 600,000 steps): "
        "start it from a recipe in config/ (README: Adding a dataset)"
    )


def plan_state(cfg: Config, V: int, mesh: Mesh) -> tuple[State, Any]:
    """Shapes of the train state (jax.eval_shape: nothing allocated) and its shardings."""
    params_abs = jax.eval_shape(lambda: model.init_params(cfg.model, V, jax.random.key(0)))
    state_abs = {
        "params": params_abs,
        "opt": jax.eval_shape(optim.make(cfg.train).init, params_abs),
    }
    return state_abs, tree_shardings(state_abs, mesh, cfg.train.sharding)


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


def compile_steps(cfg: Config, V: int, A: int, mesh: Mesh) -> tuple[Any, Any, Any]:
    """The train and eval steps, and the train step with diagnostics (None when
    logging.stats_interval is 0), compiled ahead of time (compile_program)."""
    names = programs_of(cfg)
    steps = {name: compile_program(cfg, V, A, mesh, name) for name in names}
    return steps["train_step"], steps["eval_step"], steps.get("diagnostics_step")


# ---------------------------------------------------------------- the micro-batch that fits


def with_batch(cfg: Config, batch_size: int) -> Config:
    """cfg with train.batch_size set (auto's resolved): the programs' shapes."""
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, batch_size=batch_size))


@dataclass(frozen=True)
class MicroBatch:
    """The micro-batch a training runs with, how it was chosen, and its programs' memory per
    device against the budget (memory is empty where no budget is known: nothing measured)."""

    batch_size: int  # rows per micro-batch, over all devices
    micro_batches: int  # per optimizer step (gradient accumulation)
    how: str
    budget: memory.Budget
    memory: dict[str, memory.Usage] = field(default_factory=dict)

    @property
    def misfit(self) -> str | None:
        """The first program that does not fit the budget, or None."""
        return next((n for n, u in self.memory.items() if not self.budget.fits(u)), None)

    def describe(self) -> dict[str, Any]:
        return {
            "batch_size": self.batch_size, "micro_batches": self.micro_batches, "how": self.how,
            "budget_bytes": self.budget.bytes, "budget_rule": self.budget.rule,
            "memory_bytes": {n: u.total for n, u in self.memory.items()},
        }  # fmt: skip


def measure_programs(
    cfg: Config,
    V: int,
    mesh: Mesh,
    batch_size: int,
    budget: memory.Budget,
    names: tuple[str, ...] | None = None,
    stop: bool = False,
) -> dict[str, memory.Usage]:
    """Each training program's memory per device at a micro-batch (compile_program; while an
    evaluation runs, the optimizer state stays allocated: resident). stop: end at the first
    that does not fit the budget (the largest first: the diagnostics step)."""
    A = config.micro_batches(cfg, batch_size)
    program = with_batch(cfg, batch_size)
    state_abs, state_sh = plan_state(program, V, mesh)
    opt_bytes = bytes_per_device(state_abs["opt"], state_sh["opt"])
    out = {}
    for name in names or programs_of(cfg):
        compiled = compile_program(program, V, A, mesh, name)
        out[name] = memory.usage(compiled, resident=opt_bytes if name == "eval_step" else 0)
        if stop and not budget.fits(out[name]):
            break
    return out


def fit_micro_batch(cfg: Config, V: int, mesh: Mesh, budget: memory.Budget) -> MicroBatch:
    """The micro-batch of a training on mesh's devices: train.batch_size, or with 0 (auto) the
    largest that divides the rows of a step, is a multiple of the device count and whose
    programs all fit the budget (compiled: the same for the same device kind and count); where
    no budget is known (a CPU), the largest of at most CPU_AUTO_TOKENS tokens per device. With
    a budget, the programs are measured at the micro-batch (MicroBatch.misfit names one that
    does not fit). A micro-batch the devices do not divide is a TrainError."""
    m, t = cfg.model, cfg.train
    n, rows = mesh.size, config.step_rows(cfg)
    # The largest first: a micro-batch too large is refused after one compile.
    largest_first = ("diagnostics_step", "train_step", "eval_step")
    order = tuple(p for p in largest_first if p in programs_of(cfg))

    def measured(b: int, how: str, names: tuple[str, ...] = order) -> MicroBatch:
        usage = {} if budget.bytes is None else measure_programs(cfg, V, mesh, b, budget, names)
        return MicroBatch(b, config.micro_batches(cfg, b), how, budget, usage)

    if t.batch_size:
        if t.batch_size % n:
            raise TrainError(f"train.batch_size = {t.batch_size} is not divisible by the {n} "
                             "devices (0: auto picks one that is)")  # fmt: skip
        return measured(t.batch_size, "train.batch_size")
    candidates = [b for b in range(n, rows + 1, n) if rows % b == 0]
    if not candidates:
        raise TrainError(f"train.total_batch_tokens / model.block_size = {rows} rows per "
                         f"step cannot be split over the {n} devices: make it a multiple of "
                         f"{n}")  # fmt: skip
    rule = f"auto: the largest divisor of the step's {rows} rows, a multiple of the {n} devices"
    if budget.bytes is None:
        small = [b for b in candidates if b * m.block_size <= CPU_AUTO_TOKENS * n]
        how = f"{rule}, of at most {CPU_AUTO_TOKENS} tokens per device ({budget.rule})"
        return measured(small[-1] if small else candidates[0], how)

    def need(b: int) -> tuple[int, int]:
        usage = measured(b, "", order[:1]).memory[order[0]]
        return usage.total, usage.arguments

    # The largest program decides the search; then each is measured at its answer (and, should
    # another not fit there, at the next smaller micro-batch).
    found = memory.largest_fitting(candidates, need, budget.bytes)
    for b in [] if found is None else [b for b in candidates if b <= found][::-1]:
        micro = measured(b, f"{rule}, whose programs fit {memory.gib(budget.bytes)} GiB per device")
        if not micro.misfit:
            return micro
    return measured(candidates[0], f"auto: none fits; the smallest, {candidates[0]} rows")


def misfit_message(cfg: Config, mb: MicroBatch, n_devices: int) -> str:
    """Why mb's programs do not fit: the first that does not, its numbers and what to change."""
    name = mb.misfit
    return (
        f"the {name.replace('_', ' ')} at micro-batch {mb.batch_size} x {cfg.model.block_size} "
        f"{memory.shortfall(mb.memory[name], mb.budget)}; change: "
        + "; ".join(advice(cfg, mb, n_devices))
    )


def advice(cfg: Config, mb: MicroBatch, n_devices: int) -> list[str]:
    """What would make a training fit, for the program that does not."""
    t = cfg.train
    out = []
    if t.batch_size and mb.batch_size > n_devices:
        out.append("a smaller train.batch_size, or 0 (auto: the largest micro-batch that fits)")
    if mb.misfit == "diagnostics_step":
        out.append("logging.stats_interval = 0 (no diagnostics steps)")
    if "remat" in {f.name for f in dataclasses.fields(cfg.model)}:
        out.append(
            "model.remat (recompute activations in the backward pass: less memory, more FLOPs)"
        )
    if t.sharding == "dp" and n_devices > 1:
        out.append(
            "train.sharding = 'fsdp' (parameters and optimizer state split over the devices)"
        )
    out.append(
        "more devices (the micro-batch is split over them; with train.sharding = "
        "'fsdp' the state too)"
    )
    out.append("a larger share of the GPU for JAX (XLA_CLIENT_MEM_FRACTION=.9)")
    return out


# ---------------------------------------------------------------- checks before any allocation


def resolve_vocab(cfg: Config, tokenizer_vocab: int) -> Config:
    """cfg with model.vocab_size resolved: the tokenizer's where the run leaves it 0."""
    vocab = cfg.model.vocab_size or tokenizer_vocab
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=vocab))


def check_setup(cfg: Config, data: loader.Prepared, n_devices: int) -> int:
    """Config against data and devices; returns the embedding rows (model.vocab_size, or the
    tokenizer's, rounded up to model.vocab_multiple)."""
    m, t = cfg.model, cfg.train
    V = m.vocab_size or data.vocab_size
    if V < data.vocab_size:
        raise TrainError(
            f"model.vocab_size = {m.vocab_size} is smaller than the tokenizer's "
            f"{data.vocab_size} ({data.dir / 'manifest.json'})"
        )
    for split in ("train", "val"):
        n = data.split(split).n_tokens
        if n < m.block_size + 1:
            raise TrainError(
                f"model.block_size = {m.block_size} is longer than the {split} split of "
                f"{data.dir} ({n} tokens): expected at most {n - 1}"
            )
    if t.batch_size % n_devices:
        raise TrainError(
            f"train.batch_size = {t.batch_size} is not divisible by the {n_devices} devices"
        )
    return model.vocab_rows(dataclasses.replace(m, vocab_size=V))


def init_file(cfg: Config, init: Path | None) -> Path | None:
    """The weights file of a pretrained model.init_from, from --init or the directory it
    names; None for scratch."""
    m = cfg.model
    if m.init_from == "scratch":
        return None
    if init is None and config.init_dataset(m.init_from):
        raise TrainError(
            f"model.init_from = {m.init_from!r}: pass --init, the directory the download stage "
            f"fetched dataset {config.init_dataset(m.init_from)} into"
        )
    path = Path(init or m.init_from)
    return path / hf.WEIGHTS if path.is_dir() else path


def init_weights(cfg: Config, path: Path) -> model.Params:
    """The pretrained weights at path (numpy); a missing or wrong checkpoint is a TrainError."""
    try:
        return hf.load_params(path, cfg.model)
    except hf.HFError as e:
        raise TrainError(f"model.init_from = {cfg.model.init_from!r}: {e}") from None


def resume_mismatch(meta: dict[str, Any], cfg: Config, manifest_sha: str, V: int) -> list[str]:
    """The settings in which a checkpoint differs from this run where a resume must not."""
    saved = meta["config"]
    now = config.sections(cfg, ("model", "train"))
    keys = [
        f"model.{k}" for k, v in now["model"].items()
        if saved["model"].get(k) != v and k not in config.RUNTIME_KEYS
    ]  # fmt: skip
    keys += [f"train.{k}" for k in config.RESUME_KEYS if saved["train"].get(k) != now["train"][k]]
    if meta["manifest_sha256"] != manifest_sha:
        keys.append("data (manifest sha256)")
    if meta["vocab_size"] != V:
        keys.append("vocab_size")
    return keys


def changed_settings(meta: dict[str, Any], cfg: Config) -> list[str]:
    """The settings this run changes from its checkpoint's, as 'train.max_iters: 200 -> 300'."""
    saved = meta["config"]
    out = []
    for name, now in config.sections(cfg, ("model", "train", "logging")).items():
        before = saved.get(name, {})
        out += [
            f"{name}.{k}: {before[k]!r} -> {v!r}" for k, v in now.items() if before.get(k, v) != v
        ]
    return out


def why_afresh(ckpt_dir: Path, cfg: Config) -> str | None:
    """Why a run with checkpoints beside ckpt_dir starts from step 0: under Snakemake those are
    the run's checkpoints for other settings (one directory per checkpoint_id); name the
    settings in which the newest of them differs."""
    newest = [found[-1][1] for d in ckpt_dir.parent.iterdir()
              if d != ckpt_dir and (found := checkpoint.list_checkpoints(d))]  # fmt: skip
    if not newest:
        return None
    path = max(newest, key=lambda p: p.stat().st_mtime)
    try:
        changed = changed_settings(json.loads((path / checkpoint.META_FILE).read_text()), cfg)
    except (OSError, ValueError, KeyError, AttributeError):
        return None
    return (
        f"starting from step 0: {ckpt_dir} has no checkpoint; the newest beside it, {path}, was "
        f"made with other settings ({', '.join(changed) or 'other data'})"
    )


def schedule_change(meta: dict[str, Any], t: TrainConfig, step: int) -> str | None:
    """How the learning rate from `step` on differs from the checkpoint's schedule, if it does."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    saved = dataclasses.replace(
        t, **{k: v for k, v in meta["config"]["train"].items() if k in fields}
    )
    before, now = optim.get_lr(step, saved), optim.get_lr(step, t)
    changed = [
        f"train.{k} {getattr(saved, k)!r} -> {getattr(t, k)!r}"
        for k in optim.SCHEDULE_KEYS
        if getattr(saved, k) != getattr(t, k)
    ]
    if before == now and not changed:
        return None
    return (
        f"the learning-rate schedule changed ({', '.join(changed)}): from step {step} on it "
        f"follows this run's, lr {now:.3e} at step {step} (the checkpoint's schedule: "
        f"{before:.3e})"
    )


# ---------------------------------------------------------------- metrics


def initial_loss(records: list[dict[str, Any]]) -> float | None:
    """The step-0 evaluation's train loss, L0 (None when the records lack it)."""
    first = (r for r in records if r.get("kind") == "eval" and r["step"] == 0)
    return next((r["train_loss"] for r in first if r["train_loss"] is not None), None)


class Metrics:
    """Records in memory, appended to <out>/metrics.jsonl as they come, and sent to wandb."""

    def __init__(self, path: Path, records: list[dict[str, Any]], wandb_run: Any) -> None:
        self.path, self.records, self.wandb_run = path, records, wandb_run
        if jax.process_index() == 0:
            provenance.write_bytes_atomic(path, self.dump())

    def dump(self) -> bytes:
        return "".join(json.dumps(r) + "\n" for r in self.records).encode()

    def add(self, record: dict[str, Any]) -> None:
        record = provenance.finite(record)  # a NaN or inf as null: the file stays JSON
        self.records.append(record)
        if jax.process_index() != 0:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.wandb_run is not None:
            values = {k: v for k, v in record.items() if k not in ("kind", "step")}
            self.wandb_run.log(flat(values, record["kind"]), step=record["step"])


def flat(tree: Any, prefix: str) -> dict[str, Any]:
    """{"a": {"b": [x, y]}} as {"prefix/a/b/0": x, "prefix/a/b/1": y}: scalars for wandb."""
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in flat(sub, f"{prefix}/{key}").items()}
    if isinstance(tree, list):
        return {k: v for i, sub in enumerate(tree) for k, v in flat(sub, f"{prefix}/{i}").items()}
    return {prefix: tree}


def start_wandb(cfg: Config, run_id: str, ckpt_dir: Path, out_dir: Path) -> Any:
    """A wandb run (None when disabled) that a resumed run continues, by its kept id."""
    lc = cfg.logging
    if lc.wandb_mode == "disabled" or jax.process_index() != 0:
        return None
    import wandb

    try:
        return wandb.init(
            project=lc.wandb_project, name=lc.wandb_run_name or out_dir.resolve().parent.name,
            id=run_id, resume="allow", mode=lc.wandb_mode, config=config.to_dict(cfg),
            dir=str(ckpt_dir),
        )  # fmt: skip
    except wandb.errors.Error as e:
        raise TrainError(
            f"logging.wandb_mode = {lc.wandb_mode!r}: wandb refused to start ({e}); run `wandb "
            'login` or set WANDB_API_KEY, or set logging.wandb_mode = "offline" (sync later '
            "with `wandb sync`)"
        ) from None


def wandb_run_id(ckpt_dir: Path, meta: dict[str, Any] | None) -> str:
    """The id kept with the checkpoints: from the checkpoint, else the file beside them."""
    path = ckpt_dir / "wandb_run_id"
    if meta and meta.get("wandb_run_id"):
        return meta["wandb_run_id"]
    if path.is_file():
        return path.read_text().strip()
    run_id = os.urandom(6).hex()
    if jax.process_index() == 0:
        provenance.write_bytes_atomic(path, run_id.encode())
    return run_id


# ---------------------------------------------------------------- the loop


def fmt_bytes(n: int) -> str:
    return f"{n / 2**20:.2f} MiB" if n < 2**30 else f"{n / 2**30:.2f} GiB"


def train(
    cfg: Config,
    data_dir: str | Path,
    out_dir: str | Path,
    ckpt_dir: str | Path,
    init: str | Path | None = None,
    channel: progress.Channel | None = None,
) -> dict[str, Any]:
    """Train (or resume) and write the final model into out_dir; returns a summary. Process 0
    holds both directories (a second training on them is refused at start) and first removes
    what an interrupted run left there."""
    runtime.keep_freed_memory()  # XLA's CPU buffers stay in the heap between steps
    initialize_distributed()
    make_runtime(cfg)  # an impossible one is refused here, before any file is read
    out_dir, ckpt_dir = Path(out_dir), Path(ckpt_dir)
    inputs = [("--data", data_dir), ("--init", init)]
    for path, flag in ((out_dir, "--out"), (ckpt_dir, "--checkpoints")):
        provenance.check_apart(path, flag, inputs)  # before any work
    if out_dir.resolve() == ckpt_dir.resolve():
        raise provenance.OutputError(
            f"--out {out_dir} and --checkpoints {ckpt_dir} are one directory: give each its own"
        )
    # The vocabulary from the manifest alone (checked against prepare's record): the
    # micro-batch is chosen, and the programs checked against the devices' memory, before a
    # shard is read or any state allocated.
    manifest = loader.read_manifest(data_dir)
    loader.verify_manifest(data_dir)
    cfg = resolve_vocab(cfg, int(manifest["tokenizer"]["vocab_size"]))
    micro = plan_micro_batch(cfg, make_mesh())
    data = loader.open_prepared(data_dir)  # manifest and shard hashes checked here
    check_setup(cfg, data, jax.device_count())
    with contextlib.ExitStack() as held:
        if jax.process_index() == 0:
            for path, flag in ((out_dir, "--out"), (ckpt_dir, "--checkpoints")):
                held_dir = provenance.exclusive(path, "training", flag, inputs, stage="train")
                removed = held.enter_context(held_dir)
                if removed:
                    names = ", ".join(p.name for p in removed)
                    log(f"removed what an interrupted run left in {path}: {names}")
        init_path = None if init is None else Path(init)
        return _train(cfg, data, out_dir, ckpt_dir, init_path, channel, micro)


def plan_micro_batch(cfg: Config, mesh: Mesh) -> MicroBatch:
    """The micro-batch (fit_micro_batch, against this process's first device's budget), logged
    where auto chose it or its programs were measured; one whose programs do not fit the budget
    is a TrainError with the numbers."""
    V = model.vocab_rows(cfg.model)
    t0 = time.perf_counter()
    micro = fit_micro_batch(cfg, V, mesh, memory.budget_of(jax.local_devices()[0]))
    if micro.misfit:
        raise TrainError(misfit_message(cfg, micro, mesh.size))
    line = f"micro-batch {micro.batch_size} x {cfg.model.block_size}, {micro.micro_batches} per "
    line += f"step ({micro.how})"
    if micro.memory:
        each = ", ".join(f"{n.replace('_', ' ')} {memory.gib(u.total)}"
                         for n, u in micro.memory.items())  # fmt: skip
        line += (f"; GiB per device: {each}, of {memory.gib(micro.budget.bytes)} (measured in "
                 f"{time.perf_counter() - t0:.1f} s)")  # fmt: skip
    if micro.memory or cfg.train.batch_size == 0:
        log(line)
    return micro


def _train(
    cfg: Config,
    data: loader.Prepared,
    out_dir: Path,
    ckpt_dir: Path,
    init: Path | None,
    channel: progress.Channel | None,
    micro: MicroBatch,
) -> dict[str, Any]:
    record = provenance.Record.start("train", config.sections(cfg, config.STAGE_SECTIONS["train"]))
    started = time.perf_counter()  # eval records' wall_s: seconds since this run's start
    m, t = cfg.model, cfg.train
    n_dev = jax.device_count()
    V = check_setup(cfg, data, n_dev)
    B, A = micro.batch_size, micro.micro_batches  # train.batch_size, or auto's choice
    tokens_per_step = A * B * m.block_size
    schedule = loader.schedule(data, t.seed, t.batch_order, B, m.block_size, A)

    # Shapes and bytes known before any allocation.
    mesh = make_mesh()
    optimizer = optim.make(t)
    init_fn = lambda k: model.init_params(m, V, k)  # noqa: E731
    state_abs, state_sh = plan_state(cfg, V, mesh)
    params_abs, opt_abs = state_abs["params"], state_abs["opt"]
    n_params = model.count_params(params_abs, non_embedding=False)
    n_flops_params = model.count_params(params_abs, non_embedding=True)
    param_bytes = bytes_per_device(params_abs, state_sh["params"])
    opt_bytes = bytes_per_device(opt_abs, state_sh["opt"])
    log(
        f"model: {n_params / 1e6:.2f}M parameters ({n_flops_params / 1e6:.2f}M without position "
        f"embeddings), vocab {V}; per device ({t.sharding}, {progress.plural(n_dev, 'device')}): "
        f"parameters {fmt_bytes(param_bytes)}, optimizer state {fmt_bytes(opt_bytes)}"
    )
    log(f"{tokens_per_step} tokens per step ({A} x {B} x {m.block_size})")
    rt = make_runtime(cfg)
    log(rt.explain(m, jax.default_backend()))
    rt_stats = runtime.for_diagnostics(rt) if cfg.logging.stats_interval else None
    if rt_stats is not None:
        log(f"diagnostics steps (every logging.stats_interval = {cfg.logging.stats_interval}): "
            f"attention logits from a forward of rows 0-{min(STATS_ROWS, B) - 1} "
            f"of the step's first micro-batch, runtime {rt_stats.describe()}")  # fmt: skip

    # Resume from the latest checkpoint, or start fresh (from scratch or pretrained weights,
    # whose sha256 is an input of the run either way).
    key_params, key_dropout = jax.random.split(jax.random.key(t.seed))
    init_path = init_file(cfg, init)
    try:
        init_sha = None if init_path is None else provenance.sha256_file(init_path)
    except FileNotFoundError:
        raise TrainError(f"model.init_from = {m.init_from!r}: {init_path} does not exist") from None
    found = checkpoint.restore(ckpt_dir, t.resume, t.max_iters, log)
    path, meta = None, None
    if found is None:
        if ckpt_dir.parent.is_dir() and (note := why_afresh(ckpt_dir, cfg)):
            log(note)
        if init_path is None:
            state = jax.jit(
                lambda k: {"params": (p := init_fn(k)), "opt": optimizer.init(p)},
                out_shardings=state_sh,
            )(key_params)
        else:
            pretrained = checkpoint.flatten(init_weights(cfg, init_path))
            params = place(checkpoint.unflatten_like(params_abs, pretrained, where=str(init_path)),
                           state_sh["params"])  # fmt: skip
            opt = jax.jit(optimizer.init, out_shardings=state_sh["opt"])(params)
            state = {"params": params, "opt": opt}
            log(f"initialised from {m.init_from} ({init_path}, sha256 {init_sha[:12]}...)")
        start, records = 0, []
    else:
        path, tensors, meta = found
        if diff := resume_mismatch(meta, cfg, data.manifest_sha256, V):
            raise TrainError(
                f"checkpoint {path} was made with different settings ({', '.join(diff)}); "
                f"restore them, or delete {ckpt_dir} to start afresh"
            )
        host = {
            "params": checkpoint.unflatten_like(params_abs, tensors, "params.", str(path)),
            "opt": checkpoint.unflatten_like(opt_abs, tensors, "opt.", str(path)),
        }
        state = place(host, state_sh)
        key_dropout = jax.random.wrap_key_data(np.asarray(meta["rng"]["dropout_key"], np.uint32))
        start = meta["step"]
        records = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
        log(f"resumed from {path} at step {start} of {t.max_iters}")
        if changed := changed_settings(meta, cfg):
            log(f"settings changed since that checkpoint: {', '.join(changed)}")
        if note := schedule_change(meta, t, start):
            log(note)
        before = meta.get("data", {}).get("schedule", {}).get("batch_size", B)
        if before != B:
            log(f"micro-batch {before} -> {B} (train.batch_size = 0: auto, on these "
                f"devices): the same {tokens_per_step} tokens per step; from step {start} on "
                f"each step's rows are drawn as {A} micro-batches of {B}, as a run started "
                "here would")  # fmt: skip

    flops_per_token = model.flops_per_token(m, n_flops_params)
    if not t.eval_only:  # the peak, for MFU and for the plan: a warning before any compile
        planned = flops_per_token * tokens_per_step * max(0, t.max_iters - start)
        peak, source = plan_peak(t, planned, n_dev)
        log(f"MFU against a peak of {peak / 1e12:.3g} TFLOP/s per device ({source})" if peak
            else f"no MFU: peak FLOP/s {source}")  # fmt: skip
        if peak and (warning := long_plan(cfg, t.max_iters - start, planned, peak, n_dev, source)):
            log(warning)
            if channel is not None and jax.process_index() == 0:  # snakemake's terminal too
                channel.say(warning)

    run_id = wandb_run_id(ckpt_dir, meta)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = Metrics(
        out_dir / "metrics.jsonl", records, start_wandb(cfg, run_id, ckpt_dir, out_dir)
    )

    t0 = time.perf_counter()
    train_step, eval_step, diag_step = compile_steps(with_batch(cfg, B), V, A, mesh)
    what = "train, eval and diagnostics steps" if diag_step else "train and eval steps"
    log(f"compiled {what} in {time.perf_counter() - t0:.1f} s")
    batch_sh = NamedSharding(mesh, P(None, "data", None))
    eval_sh = NamedSharding(mesh, P("data", None))
    x_shape, e_shape = (A, B, m.block_size), (B, m.block_size)

    def train_batch(step: int) -> tuple[jax.Array, ...]:
        def load(rows: slice) -> tuple[np.ndarray, np.ndarray]:
            xy = [
                loader.batch(data, "train", t.seed, step * A + i, B, m.block_size, t.batch_order,
                             rows=rows)
                for i in range(A)
            ]  # fmt: skip
            return np.stack([x for x, _ in xy]), np.stack([y for _, y in xy])

        return loader.device_batch(batch_sh, x_shape, 1, load)

    def eval_batch(split: str, k: int) -> tuple[jax.Array, ...]:
        def load(rows: slice) -> tuple[np.ndarray, np.ndarray]:
            return loader.batch(data, split, t.seed, k, B, m.block_size, "random", stream="eval",
                                rows=rows)  # fmt: skip

        return loader.device_batch(eval_sh, e_shape, 0, load)

    def evaluate(step: int) -> dict[str, float]:
        losses = {}
        for split in ("train", "val"):
            total = jnp.zeros((), jnp.float32)
            for k in range(t.eval_iters):
                total = total + eval_step(state["params"], *eval_batch(split, k))
            losses[split] = float(total) / t.eval_iters
        metrics.add({
            "kind": "eval", "step": step, "tokens": step * tokens_per_step,
            "train_loss": losses["train"], "val_loss": losses["val"],
            "wall_s": round(time.perf_counter() - started, 3),
        })  # fmt: skip
        log(f"step {step}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
        return losses

    if t.eval_only:
        losses = evaluate(start)
        if metrics.wandb_run is not None:
            metrics.wandb_run.finish()
        return {"step": start, "train_loss": losses["train"], "val_loss": losses["val"]}

    rate = {"peak": peak, "source": source}  # the peak MFU is against (raised by a faster step)
    pending: list[tuple[int, dict[str, jax.Array]]] = []
    diagnosed: list[tuple[int, dict[str, Any]]] = []
    clock = {"seconds": 0.0, "steps": 0, "since": time.perf_counter()}  # since the last report
    diverged: dict[str, Any] = {}  # with train.on_divergence = "stop": where and why

    warmed = max(1, t.warmup_iters if t.decay_lr else 0)  # the first step after the warmup
    # The first of the latest steps whose training loss is above L0 (None: the last step's is
    # not); checkpoints keep it, so a resumed run stops where an uninterrupted one would.
    above = {"since": (meta or {}).get("loss_above_L0_since")}

    def divergence(step: int, loss: float, grad_norm: float) -> str | None:
        """Why the run has diverged at step, or None: a loss or gradient norm that is not
        finite; with on_divergence = stop, also a training loss above L0 at each of the last
        divergence_steps steps after the warmup (a spike it recovers from is not one)."""
        if not (np.isfinite(loss) and np.isfinite(grad_norm)):
            return f"loss is {loss} (grad norm {grad_norm})"
        L0 = initial_loss(metrics.records)
        if t.on_divergence != "stop" or step < warmed or L0 is None:
            return None
        if loss <= L0:
            above["since"] = None
            return None
        since = above["since"] = step if above["since"] is None else above["since"]
        if step - since + 1 < t.divergence_steps:
            return None
        return (f"the training loss stayed above the step-0 loss {L0:.4f} for the "
                f"{step - since + 1} steps {since} to {step} after the warmup (train."
                f"divergence_steps = {t.divergence_steps}; now {loss:.4f})")  # fmt: skip

    def last_good(step: int) -> Path | None:
        """The newest checkpoint before `step`: step's loss is that of the state checkpoint
        `step` holds, so the one at `step` (if saved) holds the diverged state."""
        found = [p for s, p in checkpoint.list_checkpoints(ckpt_dir) if s < step]
        return found[-1] if found else None

    def due(step: int) -> bool:
        return step % cfg.logging.log_interval == 0 or step == t.max_iters - 1

    def flush(upto: int | None = None) -> None:
        """Fetch the stats of the steps run since the last flush (up to step `upto`, else all of
        them, waiting for the device), stop at a divergence, and report the steps before it
        that logging.log_interval asks for."""
        ready = [(s, stats) for s, stats in pending if upto is None or s <= upto]
        del pending[: len(ready)]
        fetched = [(s, diag) for s, diag in diagnosed if upto is None or s <= upto]
        del diagnosed[: len(fetched)]
        host, diags = jax.device_get(([stats for _, stats in ready], fetched))

        def stats_records(last: float) -> None:
            """Record the diagnostics of the steps up to `last`: records go in step order,
            as wandb keeps only steps at or above the last it logged."""
            while diags and diags[0][0] <= last:
                step, diag = diags.pop(0)
                metrics.add(
                    {"kind": "stats", "step": step, **jax.tree.map(lambda a: a.tolist(), diag)}
                )

        now = time.perf_counter()
        clock["seconds"] += now - clock["since"]
        clock["since"] = now
        clock["steps"] += len(ready)
        for (step, _), stats in zip(ready, host, strict=True):
            if diverged or not (why := divergence(step, stats["loss"], stats["grad_norm"])):
                if not diverged and due(step):
                    stats_records(step)
                    report(step, stats)
                continue
            if t.on_divergence == "fail":
                last = last_good(step)
                raise TrainError(
                    f"{why} at step {step}: training stopped; the last good checkpoint is "
                    f"{last or 'none (none saved)'} (train.on_divergence = 'stop' would record "
                    "the divergence as the run's result)"
                )
            good = last_good(step)
            diverged.update(step=step, reason=why, loss=float(stats["loss"]),
                            grad_norm=float(stats["grad_norm"]),
                            last_good_checkpoint=None if good is None else good.name)  # fmt: skip
        stats_records(math.inf)

    def report(step: int, stats: dict[str, Any]) -> None:
        """Log and record step's training stats, with the speed of the steps since the last
        report."""
        dt = clock["seconds"] / max(clock["steps"], 1)
        tok_s = tokens_per_step / dt
        peak, source = rate["peak"], rate["source"]
        mfu = None if peak is None else flops_per_token * tok_s / (peak * n_dev)
        if mfu is not None and mfu > 1.0:  # a step cannot beat the peak: it was too low
            log(f"step {step} ran at {flops_per_token * tok_s / n_dev / 1e12:.3g} TFLOP/s per "
                f"device, above the peak of {peak / 1e12:.3g} ({source}): the peak was "
                "underestimated; MFU is against this step's rate from here on")  # fmt: skip
            rate.update(peak=flops_per_token * tok_s / n_dev, source=f"step {step}'s rate")
            mfu = 1.0
        loss, grad_norm = float(stats["loss"]), float(stats["grad_norm"])
        metrics.add({
            "kind": "train", "step": step, "tokens": (step + 1) * tokens_per_step,
            "loss": loss, "lr": optim.get_lr(step, t), "grad_norm": grad_norm,
            "ms_per_iter": 1e3 * dt, "tokens_per_s": tok_s, "mfu": mfu,
            **({"z_loss": float(stats["z_loss"])} if "z_loss" in stats else {}),
        })  # fmt: skip
        mfu_text = "" if mfu is None else f", MFU {100 * mfu:.1f}%"
        log(
            f"step {step}: loss {loss:.4f}, lr {optim.get_lr(step, t):.3e}, grad norm "
            f"{grad_norm:.3f}, {1e3 * dt:.1f} ms/iter, {tok_s:,.0f} tok/s{mfu_text}"
        )
        watch.update(step, loss, tok_s, dt)
        clock["seconds"], clock["steps"] = 0.0, 0

    saved = {start} if path is not None else set()

    def save_checkpoint(step: int) -> None:
        if step in saved or step == 0 or diverged:
            return  # the checkpoint this run resumed from, the last periodic one, no step, or
            # a divergence seen: nothing more is saved
        saved.add(step)
        host = to_host(state)
        if jax.process_index() != 0:
            return
        tensors = checkpoint.flatten(host["params"], "params.") | checkpoint.flatten(
            host["opt"], "opt."
        )
        ckpt_meta = {
            "config": config.sections(cfg, ("model", "train", "logging")),
            "manifest_sha256": data.manifest_sha256,
            "vocab_size": V,
            "rng": {
                "seed": t.seed,
                "dropout_key": np.asarray(jax.random.key_data(key_dropout)).tolist(),
            },
            "data": {"next_batch": step * A, "schedule": schedule},
            "wandb_run_id": run_id,
            "loss_above_L0_since": above["since"],
        }
        files = {"metrics.jsonl": metrics.dump()}
        checkpoint.save(ckpt_dir, step, tensors, ckpt_meta, files, keep=t.keep_checkpoints)

    def paused(fn: Callable[[], Any]) -> Any:
        """Run fn outside the timed training (after waiting for the pending steps)."""
        flush()
        result = fn()
        clock["since"] = time.perf_counter()
        return result

    profile_dir = out_dir / "profile"
    profiling = False
    watch = Progress(t.max_iters, start, channel)
    done = start  # steps the state holds
    for step in range(start, t.max_iters):
        if step % t.eval_interval == 0:
            paused(lambda step=step: None if diverged else evaluate(step))
        if diverged:
            break
        if t.profile_start and step == t.profile_start:
            jax.profiler.start_trace(str(profile_dir), create_perfetto_trace=True)
            profiling = True
        x, y = train_batch(step)
        if diag_step is not None and step % cfg.logging.stats_interval == 0:
            state, stats = diag_step(state, x, y, np.int32(step), key_dropout)
            diagnosed.append((step, stats.pop("diag")))
        else:
            state, stats = train_step(state, x, y, np.int32(step), key_dropout)
        pending.append((step, stats))
        done = step + 1
        if profiling and step == t.profile_start + t.profile_steps - 1:
            jax.block_until_ready(state)
            jax.profiler.stop_trace()
            profiling = False
            log(f"profile of steps {t.profile_start}-{step} written to {profile_dir}")
        if step > start and due(step - 1):
            # The previous step's stats, fetched while this step runs: the host's work between
            # steps (logging, the next batch, the dispatch) overlaps the device's.
            flush(upto=step - 1)
            if diverged:
                break
        if t.checkpoint_interval and (step + 1) % t.checkpoint_interval == 0:
            paused(lambda step=step: save_checkpoint(step + 1))
            if diverged:
                break
    flush()
    watch.close()
    if profiling:
        jax.block_until_ready(state)
        jax.profiler.stop_trace()

    if not diverged:
        paused(lambda: save_checkpoint(t.max_iters))
        done = t.max_iters
    else:
        flush()
        diverged["stopped_at"] = done
        metrics.add({"kind": "diverged", **diverged})
        log(f"diverged at step {diverged['step']}: {diverged['reason']}; training stopped at "
            f"step {done} of {t.max_iters} and its model is written as the run's result "
            "(train.on_divergence = 'stop')")  # fmt: skip
    final = evaluate(done)
    summary = {
        "step": done,
        "diverged": diverged or None,
        "train_loss": final["train"],
        "val_loss": final["val"],
        "n_params": n_params,
        "param_bytes_per_device": param_bytes,
        "opt_bytes_per_device": opt_bytes,
        "param_bytes_per_device_measured": sum(
            x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(state["params"])
        ),
        "devices": n_dev,
        "resumed_from": start if path is not None else None,
    }
    params = to_host(state["params"])
    if jax.process_index() == 0:
        tokenizer = data.manifest["tokenizer"]
        outputs = checkpoint.save_model(out_dir, params, cfg, tokenizer, done)
        provenance.write_bytes_atomic(out_dir / "metrics.jsonl", metrics.dump())
        outputs.append(out_dir / "metrics.jsonl")
        inputs = [provenance.file_entry(data.dir / "manifest.json", data.manifest_sha256)]
        if init_path is not None:
            inputs.append(provenance.file_entry(init_path, init_sha))
        inputs += [
            provenance.file_entry(data.dir / s["file"], s["sha256"])
            for s in data.manifest["shards"]
        ]
        record.finish(
            out_dir,
            inputs=inputs,
            outputs=[provenance.file_entry(p) for p in outputs],
            extra={
                "manifest_sha256": data.manifest_sha256,
                "batch_schedule": schedule,
                "checkpoints": str(ckpt_dir),
                "runtime": rt.describe(),
                "runtime_diagnostics": None if rt_stats is None else rt_stats.describe(),
                "micro_batch": micro.describe(),
                "init_from": m.init_from,
                "wandb_run_id": run_id if cfg.logging.wandb_mode != "disabled" else None,
                "summary": summary,
            },
        )
    if metrics.wandb_run is not None:
        metrics.wandb_run.summary.update({"final/val_loss": final["val"],
                                          "diverged_at": diverged.get("step")})  # fmt: skip
        metrics.wandb_run.finish()
    log(f"model written to {out_dir}")
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m nanogptx.train", description=__doc__.split("\n\n")[0]
    )
    config.add_arguments(parser, config.STAGE_SECTIONS["train"])
    parser.add_argument("--data", type=Path, required=True, help="prepared data directory")
    parser.add_argument("--out", type=Path, required=True, help="directory of the final model")
    parser.add_argument(
        "--checkpoints", type=Path, required=True, help="checkpoint directory (resumed from)"
    )
    progress.add_arguments(parser, "train")
    parser.add_argument(
        "--init",
        type=Path,
        help="weights of a pretrained model.init_from: a directory with model.safetensors "
        "(the download stage's data/raw/hf-<name>) or the file",
    )
    args = parser.parse_intermixed_args(argv)
    cfg = config.from_args(args, parser)
    try:
        train(cfg, args.data, args.out, args.checkpoints, args.init, progress.from_args(args))
    except (
        TrainError, loader.DataError, provenance.HashMismatch, provenance.OutputError,
        provenance.FileError, checkpoint.CheckpointError, OSError,
    ) as e:  # fmt: skip
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        leave(1)
    except Exception:  # e.g. a collective whose peer process died
        if not jax.distributed.is_initialized():
            raise
        traceback.print_exc()
        leave(1)


if __name__ == "__main__":
    main()
