"""The micro-batch a training runs with: train.batch_size, or (0: auto) the largest whose
compiled programs fit each device's memory (memory.budget_of), measured before anything runs."""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any

import jax
from jax.sharding import Mesh

from nanogptx import config, memory, model
from nanogptx.config import Config
from nanogptx.logbook import log
from nanogptx.steps import (
    TrainError,
    bytes_per_device,
    compile_program,
    plan_state,
    programs_of,
    with_batch,
)

# train.batch_size = 0 on a device with no memory limit known (a CPU): micro-batches of at most
# this many tokens per device.
CPU_AUTO_TOKENS = 8192


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


def divisors(rows: int) -> list[int]:
    """The divisors of rows, ascending (in about sqrt(rows) steps)."""
    small = [d for d in range(1, math.isqrt(rows) + 1) if rows % d == 0]
    return sorted({*small, *(rows // d for d in small)})


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
            raise TrainError(
                f"train.batch_size = {t.batch_size} is not divisible by the {n} "
                "devices (0: auto picks one that is)"
            )
        return measured(t.batch_size, "train.batch_size")
    candidates = [b for b in divisors(rows) if b % n == 0]
    if not candidates:
        raise TrainError(
            f"train.total_batch_tokens / model.block_size = {rows} rows per "
            f"step cannot be split over the {n} devices: make it a multiple of "
            f"{n}"
        )
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
        each = ", ".join(
            f"{n.replace('_', ' ')} {memory.gib(u.total)}" for n, u in micro.memory.items()
        )
        line += (
            f"; GiB per device: {each}, of {memory.gib(micro.budget.bytes)} (measured in "
            f"{time.perf_counter() - t0:.1f} s)"
        )
    if micro.memory or cfg.train.batch_size == 0:
        log(line)
    return micro
