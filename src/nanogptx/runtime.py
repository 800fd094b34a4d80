"""Backend and host decisions, made here and nowhere else, from the config (model.kernels,
model.attention, model.remat) and the platform: the primitives (kernels.FAST or REFERENCE), the
attention implementation, the layer unrolling, the loss's chunk, the host's memory tuning.
The same config on the same platform gives the same program; train and sample record it:
`rt = runtime.choose(cfg.model, jax.default_backend(), cfg.train.compute_dtype)`."""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from nanogptx import kernels
from nanogptx.config import CUDNN_HEAD_MULTIPLE, CUDNN_MAX_HEAD, ModelConfig
from nanogptx.errors import UserError

ATTENTION = ("einsum", "xla", "cudnn")
# Logits per chunk of the loss, by platform: on CPU 2^23 (128 positions of GPT-2's 50,304 rows,
# 26 MB of float32, measured fastest: benchmarks/bench_model.py --loss); on accelerators 2^27
# (2,048 positions: 0.5 GiB, few enough chunks that a step's loop adds little; not measured).
LOSS_CHUNK = {"cpu": 1 << 23, "gpu": 1 << 27, "tpu": 1 << 27}
SIXTEEN_BIT = ("bfloat16", "float16")
Capability = tuple[int, int]  # a CUDA compute capability, (9, 0) for an H100


class Unsupported(UserError, ValueError):
    """A runtime the config asks for that cannot run where it would (model.attention = "cudnn"
    off a GPU, or past one of cuDNN's limits)."""


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
    # Why model.attention = "auto" on a GPU runs XLA's attention rather than cuDNN's (empty
    # where it runs cuDNN's, or was not asked to choose): said, not part of how it runs.
    why: str = field(default="", compare=False)

    def fused_attention(self, weights: bool) -> str | None:
        """jax.nn.dot_product_attention's implementation for a causal attention, or None where
        the einsums run: by choice, or where the model needs the weights themselves (dropout,
        a window shorter than the sequence, their largest logit), which it never exposes."""
        return None if self.attention == "einsum" or weights else self.attention

    def describe(self) -> dict[str, Any]:
        names = ("attention", "unroll", "loss_chunk", "remat")
        out = {"kernels": self.kernels.name} | {n: getattr(self, n) for n in names}
        return out | ({"attention_why": self.why} if self.why else {})

    def explain(self, cfg: ModelConfig, platform: str) -> str:
        """The log line of the choice: what runs, and what it was chosen from."""
        chosen_from = f"model.kernels = {cfg.kernels}, model.attention = {cfg.attention}"
        return f"runtime: {self.describe()} ({chosen_from}, on {platform})"


# ---------------------------------------------------------------- cuDNN's limits


def capability_of(device: Any) -> Capability | None:
    """The CUDA compute capability of a device (a GPU, or a compile-only GPU of a target);
    None for other devices."""
    text = getattr(device, "compute_capability", None)
    return parse_capability(str(text)) if text else None


def parse_capability(text: str) -> Capability:
    """A compute capability's text ("9.0") as (9, 0)."""
    major, minor = text.split(".")[:2]
    return int(major), int(minor)


def cudnn_max_head(capability: Capability | None) -> int:
    """The widest head cuDNN's attention takes on a GPU of this capability (None: unknown, the
    limit every GPU has)."""
    return CUDNN_MAX_HEAD if capability is not None and capability >= (9, 0) else 128


def cudnn_refusal(
    cfg: ModelConfig, compute_dtype: str, capability: Capability | None
) -> str | None:
    """Why cuDNN's flash attention cannot run this model on a GPU of this capability, or None.
    The limits JAX 0.10 checks before it calls cuDNN (jax/_src/cudnn/fused_attention_stablehlo.py,
    check_layout and check_is_flash_attention): 16-bit inputs; a head width that is a multiple
    of 8, at most 256 on compute capability 9.0 (Hopper) and later and 128 before. cuDNN's fused
    attention itself needs capability 8.0 (Ampere) or later."""
    K = cfg.n_embd // cfg.n_head
    on = (
        "a GPU of unknown compute capability"
        if capability is None
        else f"compute capability {capability[0]}.{capability[1]}"
    )
    if compute_dtype not in SIXTEEN_BIT:
        return (
            f"cuDNN's attention runs bfloat16 or float16, and the compute dtype is {compute_dtype}"
        )
    if capability is not None and capability < (8, 0):
        return f"cuDNN's fused attention needs compute capability 8.0 or later, not {on}"
    limit = cudnn_max_head(capability)
    if K % CUDNN_HEAD_MULTIPLE or K > limit:
        return (
            f"head width n_embd / n_head = {cfg.n_embd} / {cfg.n_head} = {K}: cuDNN's "
            f"attention needs a multiple of {CUDNN_HEAD_MULTIPLE} of at most {limit} on {on}"
        )
    return None


@contextlib.contextmanager
def cudnn_capability(capability: Capability | None) -> Iterator[None]:
    """PATCH of JAX's internals, the only one (JAX 0.10, jax/_src/cudnn/
    fused_attention_stablehlo.py): before it calls cuDNN, JAX asks the *host's* backend for the
    compute capability (check_compute_capability, is_cuda_compute_capability_equal). Compiling
    for a GPU target on a machine without one, that answer is wrong (no GPU: each check says
    no, and head width 160 is refused for an H100). While tracing for a device of
    `capability`, the two checks answer for that device instead; on a GPU's own host they give
    what JAX would. Where JAX has moved them, nothing is patched (cudnn_refusal still holds)."""
    try:
        from jax._src.cudnn import fused_attention_stablehlo as fa
    except ImportError:
        fa = None
    names = ("check_compute_capability", "is_cuda_compute_capability_equal")
    if capability is None or fa is None or not all(hasattr(fa, n) for n in names):
        yield
        return

    saved = {n: getattr(fa, n) for n in names}
    fa.check_compute_capability = lambda c: capability >= parse_capability(c)
    fa.is_cuda_compute_capability_equal = lambda c: capability == parse_capability(c)
    try:
        yield
    finally:
        for n, f in saved.items():
            setattr(fa, n, f)


def choose(
    cfg: ModelConfig,
    platform: str,
    compute_dtype: str = "float32",
    capability: Capability | None = None,
) -> Runtime:
    """The runtime for a model config on a platform ("cpu", "gpu", "tpu") and, on a GPU, its
    compute capability (capability_of: the device's or the target's, never the host's), auto
    resolved:
    - kernels: fast everywhere (its gradients were written for XLA's CPU backend, and are
      exact elsewhere too);
    - attention: einsum on CPU, where XLA differentiates it about 2x faster than
      dot_product_attention's XLA implementation; on GPU, cuDNN's flash attention where it can
      run (cudnn_refusal: 16-bit compute, its head widths), else XLA's, with the reason in
      `why`. An explicit model.attention = "cudnn" (which config refuses for float32 training)
      gives XLA's where the compute is float32, as sampling and evaluation compute; where
      16-bit compute cannot run cuDNN's, it raises Unsupported naming the limit;
    - unroll: every layer on CPU, where XLA cannot fuse or schedule across a while loop's
      iterations (a 4-layer model trains about 1.5x faster unrolled); one elsewhere, to keep
      compiles short;
    - loss_chunk: LOSS_CHUNK of the platform;
    - remat: model.remat as it is."""
    k = kernels.FAST if cfg.kernels == "auto" else kernels.BY_NAME[cfg.kernels]
    attention, why = cfg.attention, ""
    refusal = cudnn_refusal(cfg, compute_dtype, capability)
    if attention == "auto":
        if platform == "gpu":
            attention, why = ("xla", refusal) if refusal else ("cudnn", "")
        else:
            attention = "einsum"
    elif attention == "cudnn" and compute_dtype not in SIXTEEN_BIT:
        attention = "xla"
    elif attention == "cudnn" and platform != "gpu":
        raise Unsupported(f"model.attention = 'cudnn' needs a GPU; this platform is {platform}")
    elif attention == "cudnn" and refusal:
        why = f"{refusal}; 'auto' runs XLA's attention where cuDNN's cannot"
        raise Unsupported(f"model.attention = 'cudnn': {why}")
    unroll = cfg.n_layer if platform == "cpu" else 1
    chunk = LOSS_CHUNK.get(platform, LOSS_CHUNK["gpu"])
    return Runtime(k, attention, unroll, chunk, cfg.remat, why=why)


def choose_for(cfg: ModelConfig, device: Any, compute_dtype: str = "float32") -> Runtime:
    """choose() for a device: its platform and compute capability."""
    return choose(cfg, device.platform, compute_dtype, capability_of(device))


def for_diagnostics(rt: Runtime) -> Runtime:
    """The runtime of the steps that record diagnostics (logging.stats_interval): einsum
    attention, the one implementation whose attention logits the model can read."""
    return dataclasses.replace(rt, attention="einsum", why="")


def compiler_options(device: Any) -> dict[str, Any] | None:
    """XLA's options for compiling a program for a device: none, but for a compile-only GPU (a
    plan's target) of compute capability below 9.0. There XLA 0.10, which cannot autotune
    without the GPU, fails to tile some of its Triton GEMM fusions ("Couldn't find output tile
    sizes", e.g. for the 768-wide layers of GPT-2 on an A6000 or A100), so those GEMMs go to
    cuBLAS instead (on an H100, where both compile, a one-layer 768-wide model's train step
    needed 7% fewer temporaries so: such a target's figures are close, not exact)."""
    capability = capability_of(device)
    if capability is None or capability >= (9, 0) or not compile_only(device):
        return None
    return {"xla_gpu_enable_triton_gemm": False}


def compile_only(device: Any) -> bool:
    """Whether a device only compiles (a GPU target's, made from its description) rather than
    being one of this process's."""
    import jax

    return device not in jax.devices()


def keep_freed_memory(tokenizer: str) -> None:
    """Make glibc keep freed memory in the process. XLA's CPU runtime allocates every step's
    buffers anew (a step's temporaries as one block: 182 MB for shakespeare-gpt2), and glibc's
    defaults hand large freed blocks back to the kernel, so each step page-faults them in
    again: 30-45% of a small model's CPU train step. Call once per process before JAX runs
    anything (a thread keeps the arena of its first allocation); a no-op outside Linux/glibc.
    One malloc arena for a BPE vocabulary's large blocks (shakespeare-gpt2's step 356 -> 328 ms);
    the characters' many small blocks would contend on its lock (shakespeare-char 18.3 -> 20.8)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # another C library (musl)
        return
    # One arena: XLA's worker threads allocate from the main heap, which grows to any size (a
    # thread's own arena holds at most 64 MiB, so a larger block is mapped and unmapped anew).
    if tokenizer != "char":
        libc.mallopt(-8, 1)  # M_ARENA_MAX
    libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD: blocks up to 1 GiB come from the heap
    libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: keep up to 1 GiB free at the heap top
