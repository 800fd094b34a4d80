"""GPU programs compiled on a machine without a GPU (pytest -m gpu_compile): every shipped run's
programs fit one H100 and eight, every model variant lowers with the GPU runtime in bfloat16
(cuDNN's attention wherever the runtime chooses it; the combined ones compile too), and cuDNN's
head-width limits follow the target's compute capability, not the host's. They need JAX's CUDA
build (the cuda extra), which .ci/run installs in a venv of its own; elsewhere they skip and
say so."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

from nanogptx import config, optim, plan, resume, steps, train
from variants import COMBINED, VARIANTS

ROOT = Path(__file__).resolve().parents[1]
RUNS = sorted(p.stem for p in (ROOT / "config").glob("*.toml"))
CHAR_VOCAB = 65  # Tiny Shakespeare's characters: the char runs' vocabulary
CUDNN_CALL = "__cudnn$fmhaSoftmax"  # the custom call of cuDNN's flash attention

pytestmark = [
    pytest.mark.gpu_compile,
    pytest.mark.skipif(
        not plan.cuda_available(),
        reason="needs JAX's CUDA build: pip install -e '.[cuda]' (.ci/run installs it in a "
        "venv of its own and runs pytest -m gpu_compile)",
    ),
]


def gpus(target: str, n: int = 1) -> list:
    """n compile-only devices of a target (the host's backend stays the CPU: conftest sets
    JAX_PLATFORMS=cpu)."""
    return plan.gpu_devices(plan.target_text(target), n, target)


def load(run: str, *overrides: str) -> config.Config:
    return config.load(ROOT / "config" / f"{run}.toml", list(overrides))


def vocab(cfg: config.Config) -> int | None:
    return CHAR_VOCAB if cfg.tokenizer.name == "char" and not cfg.model.vocab_size else None


def summary(p: plan.Plan) -> str:
    return plan.report(p) + "\n" + "\n".join(e for e in p.advice)


@pytest.mark.parametrize("run", RUNS)
def test_every_shipped_run_fits_one_h100(run: str) -> None:
    cfg = load(run)
    p = plan.plan_run(cfg, "h100", 1, vocab(cfg), config_name=run)
    assert not p.misfits, summary(p)
    names = {q.name for q in p.programs}
    assert {"train_step", "eval_step", "sample_loop"} <= names
    assert {f"eval_{t}" for t in cfg.eval.tasks} <= names
    assert ("diagnostics_step" in names) == (cfg.logging.stats_interval > 0)
    for q in p.programs:
        assert 0 < q.usage.total <= p.budget.bytes and q.flops > 0, q


@pytest.mark.parametrize("run", RUNS)
def test_every_shipped_run_fits_eight_h100s_or_is_refused_for_its_batch(run: str) -> None:
    cfg = load(run)
    p = plan.plan_run(cfg, "h100", 8, vocab(cfg), config_name=run, stages=("train",))
    if cfg.train.batch_size % 8:  # the CPU recipes' nanoGPT batch of 12 (or 1, 4, ...)
        assert {q.error for q in p.misfits} == {
            f"train.batch_size = {cfg.train.batch_size} is not divisible by the 8 devices (0: "
            "auto picks one that is)"
        }, summary(p)
        return
    assert not p.misfits, summary(p)
    assert p.micro.batch_size % 8 == 0 and all(q.devices == 8 for q in p.programs)


def test_gpt2_124m_runs_as_shipped_on_an_a6000() -> None:
    p = plan.plan_run(load("gpt2-124m-fineweb"), "a6000", 1, stages=("train",))
    assert not p.misfits, summary(p)
    a6000 = plan.target_memory(plan.target_text("a6000"), "a6000")  # 47.5 GiB
    assert p.budget.bytes == int(0.75 * a6000) and p.device_kind == "NVIDIA RTX A6000"
    # The step's 512 sequences, accumulated over micro-batches that fit.
    assert p.micro.batch_size * p.micro.micro_batches == 512
    assert all(q.usage.total <= p.budget.bytes for q in p.programs)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_variant_lowers_for_an_h100_in_bfloat16_with_cudnn_where_chosen(
    variant: str,
) -> None:
    overrides = [f"model.{k}={config._toml_value(v)}" for k, v in VARIANTS[variant].items()]
    cfg = resume.resolve_vocab(config.load(None, [
        "model.n_layer=2", "model.n_head=4", "model.n_embd=128", "model.block_size=64",
        "train.batch_size=8", "train.compute_dtype=bfloat16", *overrides,
    ]), CHAR_VOCAB)  # fmt: skip
    devices = gpus("h100")
    mesh = Mesh(devices, ("data",))
    rt = steps.make_runtime(cfg, devices[0])
    assert rt.attention == "cudnn", rt  # every variant's head width (32) suits cuDNN
    traced = steps.trace_program(cfg, 128, 1, mesh, "train_step")
    lowered = traced.lower()
    assert CUDNN_CALL in lowered.as_text()
    if variant in COMBINED:  # which hold every variant between them: compiled too
        lowered.compile()
    # The diagnostics step is the same step (cuDNN's attention where chosen, no more calls of it)
    # plus a forward of a few rows with einsum attention, whose logits it reads.
    diag = steps.trace_program(cfg, 128, 1, mesh, "diagnostics_step").lower()
    assert diag.as_text().count(CUDNN_CALL) == lowered.as_text().count(CUDNN_CALL)


def head_width(K: int, *overrides: str) -> config.Config:
    """A bfloat16 model of 4 heads of width K (the width divides into heads, so the config
    accepts it whatever cuDNN needs)."""
    return resume.resolve_vocab(config.load(None, [
        "model.n_layer=1", "model.n_head=4", f"model.n_embd={4 * K}", "model.block_size=64",
        "train.batch_size=8", "train.compute_dtype=bfloat16", "logging.stats_interval=0",
        *overrides,
    ]), CHAR_VOCAB)  # fmt: skip


def test_head_width_60_runs_xlas_attention_and_cudnn_is_refused_by_the_config() -> None:
    cfg = head_width(60)  # the n_embd 360 / 6 heads has the same head width
    p = plan.plan_run(cfg, "h100", 1, stages=("train",))
    assert not p.misfits, summary(p)
    rt = steps.make_runtime(cfg, gpus("h100")[0])
    assert rt.attention == "xla" and "head width n_embd / n_head = 240 / 4 = 60" in rt.why
    with pytest.raises(config.ConfigError, match="head width n_embd / n_head = 60"):
        head_width(60, "model.attention=cudnn")


def test_head_width_160_is_cudnns_on_an_h100_and_xlas_on_an_a100() -> None:
    h100, a100 = gpus("h100"), gpus("a100-80g")
    auto = head_width(160)
    # Hopper: cuDNN takes heads up to 256 wide. The target's capability makes it compile ...
    rt = steps.make_runtime(auto, h100[0])
    assert rt.attention == "cudnn"
    mesh = Mesh(h100, ("data",))
    lowered = steps.trace_program(auto, 128, 1, mesh, "train_step").lower()
    assert CUDNN_CALL in lowered.as_text()
    lowered.compile()
    # ... where JAX alone asks the host (a CPU here, no GPU) and refuses it.
    step = jax.jit(steps.make_train_step(auto, optim.make(auto.train), rt=rt))
    x = jax.ShapeDtypeStruct((1, 8, 64), np.int32)
    args = (steps.plan_state(auto, 128, mesh)[0], x, x, jax.ShapeDtypeStruct((), np.int32),
            jax.eval_shape(lambda: jax.random.key(0)))  # fmt: skip
    with pytest.raises(NotImplementedError, match="head dim must be <= 128"):
        step.trace(*args)
    # Ampere: at most 128. auto falls back to XLA's attention saying why; cudnn is refused
    # before any work, naming the limit.
    rt = steps.make_runtime(auto, a100[0])
    assert rt.attention == "xla" and "at most 128 on compute capability 8.0" in rt.why
    p = plan.plan_run(auto, "a100-80g", 1, stages=("train",))
    assert not p.misfits, summary(p)
    explicit = head_width(160, "model.attention=cudnn")
    with pytest.raises(train.TrainError, match="model.attention = 'cudnn': head width .* = "
                       "160: cuDNN's attention needs a multiple of 8 of at most 128 on compute "
                       "capability 8.0"):  # fmt: skip
        steps.make_runtime(explicit, a100[0])
    p = plan.plan_run(explicit, "a100-80g", 1, stages=("train",))
    assert p.misfits and all("at most 128 on compute capability 8.0" in q.error for q in p.misfits)
