"""Backend and host decisions, made here and nowhere else: which primitives the model runs with
(kernels.FAST or kernels.REFERENCE), the attention implementation, how the layer loop is
unrolled, and the host's memory tuning. They follow from the config (model.kernels,
model.attention) and the platform; train and sample log the choice and record it in
provenance.json. The same config on the same platform gives the same program.

    rt = runtime.choose(cfg.model, jax.default_backend(), cfg.train.compute_dtype)
    logits_BxLxV = model.forward(params, ids_BxL, cfg.model, rt=rt)
"""

from __future__ import annotations

import ctypes
import dataclasses
import sys
from dataclasses import dataclass, field
from typing import Any

from nanogptx import kernels
from nanogptx.config import ModelConfig

ATTENTION = ("einsum", "xla", "cudnn")
# Logits per chunk of the loss, by platform: on CPU 2^23 (128 positions of GPT-2's 50,304 rows,
# 26 MB of float32, measured fastest: benchmarks/bench_model.py --loss); on accelerators 2^27
# (2,048 positions: 0.5 GiB, few enough chunks that a step's loop adds little; not measured).
LOSS_CHUNK = {"cpu": 1 << 23, "gpu": 1 << 27, "tpu": 1 << 27}


@dataclass(frozen=True)
class Runtime:
    """How the model runs. The default is the plain one (reference primitives, einsum attention,
    a rolled layer loop), which any platform runs and any transformation goes through."""

    kernels: kernels.Kernels = field(default=kernels.REFERENCE)
    # einsum: two einsums and a softmax; xla or cudnn: jax.nn.dot_product_attention with that
    # implementation. Attention dropout always takes the einsum path.
    attention: str = "einsum"
    unroll: int = 1  # layers per lax.scan iteration
    # Logits (positions x vocabulary rows) per chunk of the output layer's loss (kernels.FAST
    # never holds more of them at once).
    loss_chunk: int = LOSS_CHUNK["cpu"]
    remat: str = "none"  # model.remat: what the backward recomputes (model.REMAT)

    def describe(self) -> dict[str, Any]:
        return {"kernels": self.kernels.name, "attention": self.attention, "unroll": self.unroll,
                "loss_chunk": self.loss_chunk, "remat": self.remat}  # fmt: skip

    def explain(self, cfg: ModelConfig, platform: str) -> str:
        """The log line of the choice: what runs, and what it was chosen from."""
        return (f"runtime: {self.describe()} (model.kernels = {cfg.kernels}, model.attention = "
                f"{cfg.attention}, on {platform})")  # fmt: skip


def choose(cfg: ModelConfig, platform: str, compute_dtype: str = "float32") -> Runtime:
    """The runtime for a model config on a platform ("cpu", "gpu", "tpu"), auto resolved:
    - kernels: fast everywhere (its gradients were written for XLA's CPU backend, and are
      exact elsewhere too);
    - attention: einsum on CPU, where XLA differentiates it about 2x faster than
      dot_product_attention's XLA implementation; on GPU, cuDNN's flash attention for 16-bit
      compute, else XLA's. cuDNN's runs 16-bit only: an explicit model.attention = "cudnn"
      (which config refuses for float32 training) gives XLA's where the compute is float32,
      as sampling and evaluation compute;
    - unroll: every layer on CPU, where XLA cannot fuse or schedule across a while loop's
      iterations (a 4-layer model trains about 1.5x faster unrolled); one elsewhere, to keep
      compiles short;
    - loss_chunk: LOSS_CHUNK of the platform;
    - remat: model.remat as it is."""
    k = kernels.FAST if cfg.kernels == "auto" else kernels.BY_NAME[cfg.kernels]
    attention = cfg.attention
    sixteen_bit = compute_dtype in ("bfloat16", "float16")
    if attention == "auto":
        if platform == "gpu":
            attention = "cudnn" if sixteen_bit else "xla"
        else:
            attention = "einsum"
    elif attention == "cudnn" and not sixteen_bit:
        attention = "xla"
    unroll = cfg.n_layer if platform == "cpu" else 1
    return Runtime(k, attention, unroll, LOSS_CHUNK.get(platform, LOSS_CHUNK["gpu"]), cfg.remat)


def for_diagnostics(rt: Runtime) -> Runtime:
    """The runtime of the steps that record diagnostics (logging.stats_interval): einsum
    attention, the one implementation whose attention logits the model can read."""
    return dataclasses.replace(rt, attention="einsum")


def keep_freed_memory() -> None:
    """Make glibc keep freed memory in the process. XLA's CPU runtime allocates every step's
    buffers anew (a step's temporaries as one block: 182 MB for shakespeare-gpt2), and glibc's
    defaults hand large freed blocks back to the kernel, so each step page-faults them in
    again: 30-45% of a small model's CPU train step. Call once per process before JAX runs
    anything (a thread keeps the arena of its first allocation); a no-op outside Linux/glibc."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # another C library (musl)
        return
    # One arena: XLA's worker threads allocate from the main heap, which grows to any size (a
    # thread's own arena holds at most 64 MiB, so a larger block is mapped and unmapped anew).
    libc.mallopt(-8, 1)  # M_ARENA_MAX
    libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD: blocks up to 1 GiB come from the heap
    libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: keep up to 1 GiB free at the heap top
