"""Memory per device: what a compiled program needs (XLA's memory_analysis, never arithmetic)
and what a device gives (the budget: what JAX's allocator hands out, allocator_share).

    need = memory.usage(jax.jit(f).lower(*args).compile())
    budget = memory.budget_of(jax.devices()[0])   # None bytes on a CPU: no limit known
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nanogptx.errors import UserError

GiB = 2**30
DEFAULT_FRACTION = 0.75  # JAX's share of a GPU's memory (its allocator's limit)


@dataclass(frozen=True)
class Usage:
    """Bytes per device of one compiled program (memory_analysis): its arguments, its outputs
    (less those written into donated arguments: aliased), its temporaries, and `resident`: what
    stays allocated beside it while it runs (training's optimizer state during an evaluation)."""

    arguments: int
    outputs: int
    aliased: int
    temporaries: int
    resident: int = 0

    @property
    def total(self) -> int:
        return self.arguments + self.outputs - self.aliased + self.temporaries + self.resident

    def as_dict(self) -> dict[str, int]:
        return {"total": self.total, "arguments": self.arguments, "outputs": self.outputs,
                "aliased": self.aliased, "temporaries": self.temporaries,
                "resident": self.resident}  # fmt: skip


def usage(compiled: Any, resident: int = 0) -> Usage:
    """A compiled program's bytes per device, from XLA's buffer assignment."""
    m = compiled.memory_analysis()
    return Usage(
        arguments=int(m.argument_size_in_bytes),
        outputs=int(m.output_size_in_bytes),
        aliased=int(m.alias_size_in_bytes),
        temporaries=int(m.temp_size_in_bytes) + int(m.generated_code_size_in_bytes),
        resident=resident,
    )


@dataclass(frozen=True)
class Budget:
    """Bytes per device a program may use (None: no limit known, a CPU), and where that came
    from, in words."""

    bytes: int | None
    rule: str

    def fits(self, need: Usage) -> bool:
        return self.bytes is None or need.total <= self.bytes


class EnvError(UserError, ValueError):
    """An allocator setting in the environment that JAX would refuse, or that gives no budget."""


# XLA_PYTHON_CLIENT_ALLOCATOR's values (jaxlib's xla_client refuses any other).
ALLOCATORS = ("default", "platform", "bfc", "cuda_async", "vmm")


def allocator_share(env: Mapping[str, str] | None = None) -> tuple[float, str]:
    """The share of a GPU's memory JAX's allocator hands out, and the rule in words, from the
    environment variables JAX reads (jaxlib's xla_client.generate_pjrt_gpu_plugin_options); an
    EnvError where JAX would refuse them (an unknown allocator, both names of the share) or the
    share is not a number in (0, 1] (JAX would preallocate nothing, or more than the GPU has)."""
    env = os.environ if env is None else env
    allocator = env.get("XLA_PYTHON_CLIENT_ALLOCATOR", "default").lower()
    if allocator not in ALLOCATORS:
        raise EnvError(f"XLA_PYTHON_CLIENT_ALLOCATOR={env['XLA_PYTHON_CLIENT_ALLOCATOR']!r}: "
                       f"expected one of {', '.join(ALLOCATORS)} (JAX refuses others)")  # fmt: skip
    if allocator == "platform":
        return 1.0, "XLA_PYTHON_CLIENT_ALLOCATOR=platform: no limit but the GPU's memory"
    names = [n for n in ("XLA_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_MEM_FRACTION") if env.get(n)]
    if len(names) == 2:
        raise EnvError(
            "XLA_CLIENT_MEM_FRACTION and XLA_PYTHON_CLIENT_MEM_FRACTION are both set, which JAX "
            "refuses: unset the older XLA_PYTHON_CLIENT_MEM_FRACTION"
        )
    for name in names:
        try:
            share = float(env[name])
        except ValueError:
            share = math.nan
        if not 0 < share <= 1:  # nan too
            raise EnvError(f"{name}={env[name]!r}: expected the share of the GPU's memory JAX "
                           "may use, a number in (0, 1] like .75")  # fmt: skip
        return share, f"{name}={env[name]}"
    return DEFAULT_FRACTION, (
        f"JAX's default share, {DEFAULT_FRACTION:.0%} (XLA_CLIENT_MEM_FRACTION or "
        "XLA_PYTHON_CLIENT_MEM_FRACTION sets it; XLA_PYTHON_CLIENT_PREALLOCATE=false allocates "
        "on demand up to the same limit)"
    )


def budget_of(device: Any, memory_size: int | None = None) -> Budget:
    """The budget of one device: a GPU's allocator limit (memory_stats' bytes_limit: what this
    process's JAX hands out), or for a compile-only GPU of a target its memory_size times the
    share the environment gives; no limit for a CPU."""
    stats = None
    if memory_size is None:
        try:
            stats = device.memory_stats()
        except Exception:  # compile-only devices and some backends have none
            stats = None
    if stats and stats.get("bytes_limit"):
        limit = int(stats["bytes_limit"])
        return Budget(
            limit,
            f"JAX's allocator limit on this {device.device_kind} "
            f"({limit / GiB:.2f} GiB, memory_stats' bytes_limit)",
        )
    if memory_size is None:
        return Budget(None, f"no memory limit known for {device.device_kind} ({device.platform})")
    share, rule = allocator_share()
    limit = int(memory_size * share)
    return Budget(
        limit, f"{share:.0%} of the {device.device_kind}'s {memory_size / GiB:.2f} GiB: {rule}"
    )


def largest_fitting(
    candidates: Sequence[int], need: Callable[[int], tuple[int, int]], limit: int
) -> int | None:
    """The largest of the ascending candidates whose need fits the limit, where need(c) gives
    the bytes at c and the part of them that does not grow with c (the arguments), and a
    smaller candidate fits wherever a larger one does. The largest is tried first (often the
    answer); where it does not fit, the bytes that grow are taken as linear in c to guess the
    answer, which is then checked one candidate up or down: two or three needs in all."""
    if not candidates:
        return None
    total, fixed = need(candidates[-1])
    if total <= limit:
        return candidates[-1]
    guess = candidates[-1] * (limit - fixed) / max(total - fixed, 1)
    i = max((i for i, c in enumerate(candidates) if c <= guess), default=0)
    if need(candidates[i])[0] > limit:
        while i > 0:
            i -= 1
            if need(candidates[i])[0] <= limit:
                return candidates[i]
        return None
    while i + 2 < len(candidates) and need(candidates[i + 1])[0] <= limit:
        i += 1
    return candidates[i]


def shortfall(need: Usage, budget: Budget) -> str:
    """'needs X GiB per device (its parts), more than the budget of Y GiB (its rule)'."""
    parts = f"arguments {gib(need.arguments)}, temporaries {gib(need.temporaries)}"
    if need.outputs - need.aliased >= 0.005 * GiB:
        parts += f", outputs {gib(need.outputs - need.aliased)}"
    if need.resident:
        parts += f", the optimizer state beside it {gib(need.resident)}"
    return (
        f"needs {gib(need.total)} GiB per device ({parts} GiB), more than the budget of "
        f"{gib(budget.bytes)} GiB ({budget.rule})"
    )


def gib(n: int | None) -> str:
    return "-" if n is None else f"{n / GiB:.2f}"
