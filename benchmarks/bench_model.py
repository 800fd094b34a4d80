"""Training speed of nanoGPT's CPU recipe: nanogptx's CPU runtime against the formulations it
replaced, each a runtime (primitives, attention, unrolling) of the one model.py.

    python benchmarks/bench_model.py [--rounds 8] [--iters 10] [--quick]
    python benchmarks/bench_model.py --loss [--rounds 6]

The recipe: shakespeare-char, n_layer 4, n_head 4, n_embd 128, block_size 64, batch_size 12,
vocab 65, dropout 0, AdamW + global-norm clipping (optax, train state donated). For each
formulation it times the forward pass, forward + backward, and the full train step, in
interleaved rounds in one process (the machines are shared: compare ratios within one run),
and prints the median and best ms/iter, tokens/s (median), and MFU: FLOPs per iteration from
model.flops_per_token (nanoGPT's 6 N + 12 L H K T per token, a third of it for the forward)
against the median speed of a 2048x2048 float32 matmul timed in the same rounds, and against
200 GFLOP/s. On a busy machine the medians suffer; the best times are the quiet-machine figures.

With --loss, the output layer and its loss alone (forward and backward, gradients for x and
the V x D matrix) at the shapes of config/shakespeare-gpt2.toml's step (1,536 positions, width
128, 50,304 rows): kernels.REFERENCE (the whole logits) against kernels.FAST over chunks of
2^21 to 2^25 logits (runtime.LOSS_CHUNK), wall ms and the user and system CPU ms per call.
Measured 2026-12-07 (load average 6.7, `--loss --rounds 5`), wall median (best) and CPU user +
system ms per call: whole logits 1388 (1150), 486 + 378: fresh pages for 309 MB of logits and
as much gradient every call; chunks of 32 positions 1090 (821), 668 + 51; 64: 657 (554),
539 + 10; 128: 660 (517), 487 + 9; 256: 744 (542), 487 + 40; 512: 888 (731), 473 + 87. 128
positions (2^23 logits, 25.8 MB of float32 per chunk) is the CPU's runtime.LOSS_CHUNK; from 256
the chunks' buffers page-fault again. Its three matmuls (19.8 GFLOP each) are most of its time.

What each primitive of kernels.FAST took off the train step here (moved from kernels.py): the
matmul with a 2-D weight-gradient dot 24.5 -> 18.1 ms; the erf GELU with a one-pass gradient
and LayerNorm's textbook gradient together 18.1 -> 17.0 ms (RMSNorm's is the same form;
gelu_tanh, relu2 and silu are the reference ones, no faster form measured yet). The chunked
cross_entropy, at the shakespeare-gpt2 step's shapes (--loss): 1388 -> 660 ms, system time
378 -> 9 ms; GPT-2 124M at 64 x 1024 on one H100 compiles to half the memory (docs/gpus.md,
"Memory on a GPU").

What we found (jax/jaxlib 0.10.2, XLA's CPU backend with its YNNPACK dot fusions, 2-core AMD EPYC):
  - glibc returns large freed blocks to the kernel, and XLA allocates every step's buffers
    anew, so each step page-faults several MB back in: 30-45% of the step. runtime.
    keep_freed_memory() (mallopt M_MMAP_THRESHOLD 64 MiB, M_TRIM_THRESHOLD 256 MiB, then; since
    issue 23 1 GiB each and one arena, for the GPT-2 vocabulary's larger blocks) keeps them.
    Either threshold alone does nothing. The rows marked "glibc" run with the default 128 KiB.
  - lax.scan over the layers: XLA cannot fuse or schedule across a while loop's iterations,
    and the backward loop stacks every saved activation with dynamic-update-slices into
    buffers it zero-fills with broadcasts first (the broadcasts alone cost 9 ms a step, page
    faults included). Unrolling the 4 layers (scan's unroll=) removes all of that: ~1.4x.
  - XLA's CPU dot emitter (YNNPACK) only takes [M,K]@[K,N] or [M,K]@[N,K]; for the weight
    gradient x^T dy (contraction over tokens, the major axis of both) layout assignment inserts
    a transposing copy of an operand, and fusion then merges that copy into the elementwise
    producer, a loop that writes in transposed order and recomputes the whole producer chain
    per element (GELU backward: 4-6 ms per layer for a 768x512 array; the residual-stream
    gradient, accumulated over all layers, recomputed inside every layer's copy). A matmul
    with a hand-written gradient whose weight gradient is a 2-D dot_general contracting axis
    0 of both operands goes to Eigen, which reads transposed operands in place: no copies.
    (The same contraction written as a 3-D einsum is canonicalised to a transpose + YNNPACK
    again.)
  - jax.nn.gelu(approximate=False) differentiates through erfc, slow on XLA CPU: the GELU
    written with erf fixes it; a hand-written GELU gradient (one fused pass) and LayerNorm
    gradient (the textbook form from the saved normalised input) take a little more off.
  - jax.nn.dot_product_attention's XLA implementation runs its backward ~2x slower than two
    einsums and a softmax at these sizes (1.3 vs 0.6 ms per layer): einsums on CPU.
  - XLA flags tried without a reliable gain: --xla_cpu_experimental_ynn_fusion_type (-reduce,
    dot), --xla_cpu_use_xnnpack=false (2x slower), --xla_cpu_use_fusion_emitters=false
    (slower), --xla_cpu_multi_thread_eigen=false. None is needed.
  - Numerics are unchanged: same loss, gradients equal to float32 rounding
    (tests/test_model.py compares kernels.FAST with kernels.REFERENCE in the same model).
  - What is left is mostly the matmuls themselves (about two thirds of the op time; the
    weight-gradient dots in Eigen run at about half the speed of the YNNPACK forward dots),
    then small elementwise fusions (LayerNorm, GELU, softmax, AdamW) and YNNPACK reductions.

Measured 2026-11-21 on the shared 2-core machine while other jobs ran (load average 3-6, so
medians are about 2x the best times; the best times are what a quiet machine gives), full
train step, ms/iter best (median):
  straightforward JAX, glibc malloc defaults  59.9 (111)   nanoGPT PyTorch eager: ~45
  first nanogptx model.py, glibc defaults     58.6 (106)   existing JAX port: 82-89
  + keep_freed_memory                         34.6 (68)
  + layers unrolled                           26.0 (51)
  + einsum attention                          24.5 (47)
  + 2-D weight-gradient dot                   18.1 (35)
  + GELU, LayerNorm gradients = nanogptx      17.0 (33)    ~45,000 tokens/s, 234 GFLOP/s
Forward alone: 4.8 ms (was 4.9-5.6); forward + backward: 17.1 ms (was 56-58).

Measured 2026-12-06 on a 2-core AMD EPYC Zen 4 (family 25, model 17; its AVX-512 runs as two
256-bit halves), load average about 1, `--rounds 6`: the 2048^2 matmul 198 GFLOP/s median, 211
best; full train step best (median): straightforward 62.2 (71.5), first model.py with glibc
defaults 90.0 (105), nanogptx 31.5 (33.5) at 63% MFU of the same-run peak. Two cores give
1.78x one (taskset: 56.6 -> 31.7 ms). In a profile of the step the dots (YNNPACK fusions and
Eigen dot_generals) take about 27 of the 33 ms at about 150-190 GFLOP/s; the elementwise rest
is about 6 ms. XLA's --xla_cpu_prefer_vector_width=512 (its loops in 512-bit vectors) changes
nothing on this Zen 4 (31.85 against 31.45 ms best); an earlier session measured 2-3% on Zen 5.
It is not used: it would make the program, and float32 rounding, depend on the host's flags.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import functools
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from nanogptx import kernels, model, runtime
from nanogptx.config import ModelConfig
from nanogptx.runtime import Runtime

CFG = ModelConfig(n_layer=4, n_head=4, n_embd=128, block_size=64, vocab_size=65, bias=False)
BATCH, VOCAB = 12, 65


def erf_gelu(x: jax.Array) -> jax.Array:
    """GELU written with erf, differentiated by JAX (kernels.gelu's values, JAX's gradient)."""
    return 0.5 * x * (1.0 + jax.lax.erf(x / math.sqrt(2.0)))


def with_kernels(name: str, **primitives: Callable) -> kernels.Kernels:
    """The reference primitives with some replaced."""
    return dataclasses.replace(kernels.REFERENCE, name=name, **primitives)


# Each step of the way from a straightforward JAX GPT to nanogptx's CPU runtime, as a runtime of
# the one model.py: primitives, attention implementation, unrolling.
N = CFG.n_layer
ERF = with_kernels("erf gelu", gelu=erf_gelu)
MATMUL = with_kernels("erf gelu, matmul vjp", gelu=erf_gelu, matmul=kernels.matmul)
CHUNKED = dataclasses.replace(kernels.FAST, cross_entropy=kernels.cross_entropy)
STEPS = [
    ("straightforward: jax.nn.gelu, scan, dot_product_attention", Runtime(attention="xla")),
    ("+ erf GELU (the first nanogptx model.py)", Runtime(ERF, "xla", 1)),
    ("+ layers unrolled", Runtime(ERF, "xla", N)),
    ("+ einsum attention", Runtime(ERF, "einsum", N)),
    ("+ matmul with a 2-D weight-gradient dot", Runtime(MATMUL, "einsum", N)),
    ("+ GELU, LayerNorm gradients by hand, chunked loss", Runtime(CHUNKED, "einsum", N)),
    ("+ the whole logits where they are few (kernels.FAST)", Runtime(kernels.FAST, "einsum", N)),
]
STRAIGHTFORWARD, FIRST = STEPS[0][1], STEPS[1][1]
CPU = runtime.choose(CFG, "cpu")  # what train uses here


def loss_with(rt: Runtime) -> Callable:
    return lambda params, x, y: model.loss_fn(params, x, y, CFG, rt=rt)[0]


def set_malloc(keep: bool) -> None:
    """keep: runtime.keep_freed_memory(), as train does it for the recipe's characters; else
    glibc's initial thresholds (128 KiB)."""
    if keep:
        runtime.keep_freed_memory("char")
    else:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 128 * 1024)
        libc.mallopt(-1, 128 * 1024)


def make_runners(loss: Callable, params: model.Params) -> dict[str, Callable[[], Any]]:
    """Zero-argument callables for forward, forward+backward and a donated AdamW step."""
    ids = jax.random.randint(jax.random.key(1), (BATCH, CFG.block_size), 0, VOCAB)
    targets = jax.random.randint(jax.random.key(2), (BATCH, CFG.block_size), 0, VOCAB)
    opt = optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.adamw(1e-3, b1=0.9, b2=0.99, weight_decay=0.1, mask=model.decay_mask),
    )

    def train_step(state: tuple, ids: jax.Array, targets: jax.Array) -> tuple:
        p, s = state
        value, grads = jax.value_and_grad(loss)(p, ids, targets)
        updates, s = opt.update(grads, s, p)
        return (optax.apply_updates(p, updates), s), value

    fwd = jax.jit(loss)
    fwd_bwd = jax.jit(jax.value_and_grad(loss))
    step = jax.jit(train_step, donate_argnums=(0,))
    state = [(jax.tree.map(jnp.copy, params), opt.init(params))]

    def run_step() -> jax.Array:
        state[0], value = step(state[0], ids, targets)
        return value

    return {
        "forward": lambda: fwd(params, ids, targets),
        "fwd+bwd": lambda: fwd_bwd(params, ids, targets),
        "step": run_step,
    }


def peak_runner() -> Callable[[], Any]:
    """A 2048x2048 float32 matmul: the peak FLOP/s, timed in the same rounds as the model."""
    a = jax.random.normal(jax.random.key(0), (2048, 2048))
    f = jax.jit(lambda a: a @ a)
    return lambda: f(a)


PEAK_FLOPS = 2 * 2048**3


def _time(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - t0


def loss_cases(T: int, V: int, vocab: int) -> dict[str, tuple[kernels.Kernels, kernels.Head]]:
    """The whole logits, and the chunked primitive over chunks of 2^21..2^25 logits (GPT-2's
    vocabulary) or one chunk (the characters'), with kernels.FAST's own choice among them."""
    cases = {"whole logits (kernels.REFERENCE)": (kernels.REFERENCE, kernels.Head(vocab=vocab))}
    for log2 in range(21, 26) if T * V > kernels.WHOLE_LOGITS else (23,):
        C = kernels.chunks(T, V, 1 << log2)[0]
        head = kernels.Head(vocab=vocab, chunk=1 << log2)
        cases[f"chunks of 2^{log2} logits ({C} positions)"] = (CHUNKED, head)
    cases["kernels.FAST (2^23 logits a chunk)"] = (kernels.FAST, kernels.Head(vocab=vocab))
    return cases


def bench_loss(rounds: int, iters: int, T: int, D: int, V: int, vocab: int) -> None:
    """The output layer and loss at one step's shapes: whole logits against chunks."""
    import resource

    runtime.keep_freed_memory("gpt2")  # its first shapes are shakespeare-gpt2's
    ks = jax.random.split(jax.random.key(0), 3)
    x_TxD = jax.random.normal(ks[0], (T, D))
    w_VxD = 0.02 * jax.random.normal(ks[1], (V, D))
    targets_T = jax.random.randint(ks[2], (T,), 0, vocab)
    fns = {}
    for name, (k, head) in loss_cases(T, V, vocab).items():
        loss = functools.partial(k.cross_entropy, targets_T=targets_T, head=head)
        fns[name] = jax.jit(jax.value_and_grad(lambda x, w, f=loss: f(x, w)[0], argnums=(0, 1)))
    want = fns[next(iter(fns))](x_TxD, w_VxD)
    for name, f in fns.items():  # compile, and the same loss and gradients everywhere
        got = f(x_TxD, w_VxD)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            assert jnp.allclose(a, b, rtol=1e-4, atol=1e-8), name
    times: dict[str, list[tuple[float, float, float]]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, f in fns.items():
            r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            for _ in range(iters):
                jax.block_until_ready(f(x_TxD, w_VxD))
            t1, r1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
            user, system = r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime
            times[name].append(((t1 - t0) / iters, user / iters, system / iters))
    print(f"output layer + loss, forward and backward: {T} positions, width {D}, {V} rows; "
          f"load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    print(f"{'formulation':56s} {'median':>7s} {'best':>7s} {'user':>7s} {'system':>7s} (ms)")
    for name, t in times.items():
        wall = [a for a, _, _ in t]
        user = statistics.median(b for _, b, _ in t)
        system = statistics.median(c for _, _, c in t)
        print(f"{name:56s} {statistics.median(wall) * 1e3:7.1f} {min(wall) * 1e3:7.1f} "
              f"{user * 1e3:7.1f} {system * 1e3:7.1f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8, help="interleaved rounds")
    parser.add_argument("--iters", type=int, default=10, help="iterations per round and case")
    parser.add_argument(
        "--quick", action="store_true", help="only the straightforward and nanogptx formulations"
    )
    parser.add_argument("--loss", action="store_true", help="the output layer and loss alone")
    args = parser.parse_args()
    if args.loss:
        # shakespeare-gpt2's step (1,536 positions, 50,304 rows), then shakespeare-char's.
        bench_loss(args.rounds, max(1, args.iters // 5), 12 * 128, 128, 50304, 50257)
        bench_loss(args.rounds, args.iters * 10, BATCH * CFG.block_size, 128, VOCAB, VOCAB)
        return

    params = model.init_params(CFG, VOCAB, jax.random.key(0))
    n_params = model.count_params(params)
    flops_step = model.flops_per_token(CFG, n_params) * BATCH * CFG.block_size
    flops = {"forward": flops_step / 3, "fwd+bwd": flops_step, "step": flops_step}

    steps = [STEPS[0], *STEPS[-2:]] if args.quick else STEPS
    assert CPU == STEPS[-1][1], "the last step is what runtime.choose gives on CPU"
    cases: list[tuple[str, bool, Callable]] = [
        ("straightforward, glibc malloc", False, loss_with(STRAIGHTFORWARD)),
        ("first nanogptx model.py, glibc malloc", False, loss_with(FIRST)),
        *[(name, True, loss_with(rt)) for name, rt in steps],
        ("nanogptx (CPU runtime), glibc malloc", False, loss_with(CPU)),
        ("nanogptx (CPU runtime)", True, loss_with(CPU)),
    ]
    # Same loss everywhere (numerics unchanged).
    ids = jax.random.randint(jax.random.key(1), (BATCH, CFG.block_size), 0, VOCAB)
    ref = float(jax.jit(loss_with(CPU))(params, ids, ids))
    runners = {}
    for name, keep, loss in cases:
        value = float(jax.jit(loss)(params, ids, ids))
        assert abs(value - ref) < 1e-5 * abs(ref), (name, value, ref)
        runners[name] = (keep, make_runners(loss, params))

    runners["peak"] = (True, {"matmul": peak_runner()})
    times: dict[tuple[str, str], list[float]] = {}
    for keep, fns in runners.values():  # compile and warm up
        set_malloc(keep)
        for fn in fns.values():
            for _ in range(3):
                _time(fn)
    for _ in range(args.rounds):
        for name, (keep, fns) in runners.items():
            set_malloc(keep)
            for mode, fn in fns.items():
                n = 3 if name == "peak" else args.iters
                times.setdefault((name, mode), []).extend(_time(fn) for _ in range(n))
    runners.pop("peak")
    # MFU against the matmul peak under the same load: median against median.
    peak = PEAK_FLOPS / statistics.median(times[("peak", "matmul")])
    best_peak = PEAK_FLOPS / min(times[("peak", "matmul")])

    tokens = BATCH * CFG.block_size
    print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}, {n_params:,} parameters")
    shape = f"{CFG.n_layer} layers, {CFG.n_head} heads, width {CFG.n_embd}"
    print(f"recipe: {shape}, block {CFG.block_size}, batch {BATCH}: ", end="")
    print(f"{flops_step / 1e9:.2f} GFLOP per step")
    print(f"peak of a 2048^2 float32 matmul: {peak / 1e9:.0f} GFLOP/s median, "
          f"{best_peak / 1e9:.0f} best; load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    print(f"{'formulation':66s} {'pass':8s} {'median':>7s} {'best':>7s} {'tok/s':>8s} "
          f"{'MFU':>5s} {'@200G':>6s}")  # fmt: skip
    for name in runners:
        for mode in ("forward", "fwd+bwd", "step"):
            t = times[(name, mode)]
            med = statistics.median(t)
            print(
                f"{name[:66]:66s} {mode:8s} {med * 1e3:7.2f} {min(t) * 1e3:7.2f} "
                f"{tokens / med:8.0f} {flops[mode] / med / peak:5.0%} "
                f"{flops[mode] / med / 200e9:6.0%}"
            )
    ours = statistics.median(times[("nanogptx (CPU runtime)", "step")])
    for name, *_ in cases[:2]:
        base = statistics.median(times[(name, "step")])
        print(f"train step, {name} -> nanogptx: {base * 1e3:.1f} -> {ours * 1e3:.1f} "
              f"ms/iter ({base / ours:.2f}x)")  # fmt: skip
    sys.stdout.flush()


if __name__ == "__main__":
    main()
