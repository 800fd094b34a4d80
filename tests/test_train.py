"""Training on tiny configs: schedule, accumulation, outputs, resume (also after SIGKILL), bad
input, and 8 fake CPU devices (data parallel and FSDP) against one device."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from nanogptx import checkpoint, config, loader, logbook, model, optim, runtime, steps, train
from prepared import synthetic_text, write_prepared

TINY = [
    "model.n_layer=2", "model.n_head=2", "model.n_embd=32", "model.block_size=16",
    "train.batch_size=8", "train.learning_rate=1e-2", "train.min_lr=1e-3",
    "train.warmup_iters=2", "train.lr_decay_iters=20", "train.eval_iters=2",
    "train.eval_interval=5", "logging.log_interval=1", "logging.stats_interval=0",
]  # fmt: skip


def tiny(*overrides: str) -> config.Config:
    return config.load(None, [*TINY, *overrides])


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_prepared(tmp_path_factory.mktemp("data"), synthetic_text(20_000), 4000)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment of train subprocesses: CPU, wandb off, quicker compiles (LLVM at -O0, which
    leaves the float results alone) and a compilation cache that later runs share."""
    return {
        **os.environ,
        "XLA_FLAGS": "--xla_backend_optimization_level=0",
        "JAX_PLATFORMS": "cpu",
        "WANDB_MODE": "disabled",
        "JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.mktemp("jax-cache")),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    }


def records(model_dir: Path, kind: str) -> list[dict]:
    lines = (model_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def losses(model_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in records(model_dir, "train")}


def test_lr_schedule_is_nanogpts() -> None:
    t = tiny("train.warmup_iters=10", "train.lr_decay_iters=110").train
    assert optim.get_lr(0, t) == pytest.approx(1e-2 / 11)
    assert optim.get_lr(9, t) == pytest.approx(1e-2 * 10 / 11)
    assert optim.get_lr(10, t) == pytest.approx(1e-2)
    assert optim.get_lr(60, t) == pytest.approx((1e-2 + 1e-3) / 2)
    assert optim.get_lr(110, t) == pytest.approx(1e-3) and optim.get_lr(500, t) == 1e-3
    schedule = jax.jit(optim.schedule(t))
    for it in range(0, 130):
        assert float(schedule(jnp.int32(it))) == pytest.approx(optim.get_lr(it, t), rel=1e-5)


def test_wsd_linear_and_constant_schedules() -> None:
    base = ["train.warmup_iters=10", "train.lr_decay_iters=110"]
    wsd = tiny(*base, "train.lr_schedule=wsd", "train.cooldown_frac=0.2").train
    # Warmup, stable at the peak until the cooldown's start (110 - 22 = 88), linear to min_lr.
    assert optim.get_lr(10, wsd) == optim.get_lr(88, wsd) == pytest.approx(1e-2)
    assert optim.get_lr(99, wsd) == pytest.approx(1e-2 + (1e-3 - 1e-2) * 11 / 22)
    assert optim.get_lr(110, wsd) == pytest.approx(1e-3) == optim.get_lr(300, wsd)
    linear = tiny(*base, "train.lr_schedule=linear").train
    assert optim.get_lr(60, linear) == pytest.approx((1e-2 + 1e-3) / 2)
    assert optim.get_lr(85, linear) == pytest.approx(1e-2 + (1e-3 - 1e-2) * 0.75)
    constant = tiny(*base, "train.lr_schedule=constant").train
    # The same warmup as the others, then the peak for good (no min_lr past lr_decay_iters).
    assert optim.get_lr(0, constant) == pytest.approx(1e-2 / 11)
    assert {optim.get_lr(i, constant) for i in (10, 50, 110, 500)} == {1e-2}
    # nanoGPT's decay_lr = false: the peak from step 0, no warmup.
    flat = tiny(*base, "train.decay_lr=false").train
    assert {optim.get_lr(i, flat) for i in (0, 5, 500)} == {1e-2}
    with pytest.raises(config.ConfigError, match="train.decay_lr = False: expected true with "
                       "train.lr_schedule = 'wsd'"):  # fmt: skip
        tiny(*base, "train.decay_lr=false", "train.lr_schedule=wsd")
    for t in (wsd, linear, constant, flat):
        schedule = jax.jit(optim.schedule(t))
        for it in range(0, 130, 7):
            assert float(schedule(jnp.int32(it))) == pytest.approx(optim.get_lr(it, t), rel=1e-5)


@pytest.mark.parametrize("name", ["adamw", "muon", "lion", "adafactor"])
def test_every_optimizer_learns_and_resumes_bit_exactly(
    data_dir: Path, tmp_path: Path, name: str
) -> None:
    lr = {"lion": "1e-3", "adafactor": "1e-1"}.get(name, "1e-2")
    args = [f"train.optimizer={name}", f"train.learning_rate={lr}", "train.min_lr=1e-4",
            "train.checkpoint_interval=3", "train.eval_interval=100",
            "train.max_iters=6"]  # fmt: skip
    whole = train.train(tiny(*args), data_dir, tmp_path / "whole", tmp_path / "w")
    first = tiny(*args[:-1], "train.max_iters=3")
    train.train(first, data_dir, tmp_path / "half", tmp_path / "k")
    resumed = train.train(tiny(*args), data_dir, tmp_path / "resumed", tmp_path / "k")
    assert resumed["resumed_from"] == 3
    a = checkpoint.load_model(tmp_path / "whole")[0]
    b = checkpoint.load_model(tmp_path / "resumed")[0]
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert np.array_equal(x, y), name  # the optimizer's whole state was restored
    assert whole["val_loss"] < losses(tmp_path / "whole")[0] - 0.2, name


def test_muon_orthogonalises_the_hidden_matrices_and_adamw_steps_the_rest() -> None:
    t = tiny("train.optimizer=muon", "train.grad_clip=0", "train.weight_decay=0").train
    params = model.init_params(tiny().model, 21, jax.random.key(0))
    grads = jax.tree.map(lambda x: jax.random.normal(jax.random.key(1), x.shape), params)
    tx = optim.make(t)
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    lr = optim.get_lr(0, dataclasses.replace(t, learning_rate=t.muon_learning_rate))
    for name in ("attn_proj_w", "fc_w"):  # square, and wide (scaled by sqrt(4))
        u = np.asarray(updates["blocks"][name][0]) / lr
        s = np.linalg.svd(u, compute_uv=False) / np.sqrt(max(1, u.shape[1] / u.shape[0]))
        # Newton-Schulz flattens the spectrum (all but the smallest few singular values of a
        # random gradient land near 1); the gradient's own spectrum is spread far wider.
        raw = np.linalg.svd(np.asarray(grads["blocks"][name][0]), compute_uv=False)
        assert np.mean((0.5 < s) & (s < 1.3)) >= 0.9 and s.max() < 1.3, (name, s)
        assert raw.max() / np.median(raw) > 1.5 > s.max() / np.median(s), name
    # AdamW's first step is lr * sign(g) (m / sqrt(v) = g / |g|) for the embeddings and gains.
    for u, g in [(updates["wte"], grads["wte"]), (updates["lnf_g"], grads["lnf_g"])]:
        np.testing.assert_allclose(u, -optim.get_lr(0, t) * np.sign(g), rtol=1e-4)


@pytest.mark.parametrize("name", ["muon", "adafactor"])
def test_each_layer_of_the_stacked_blocks_is_stepped_as_its_own_matrix(name: str) -> None:
    """Muon orthogonalises, and Adafactor clips and scales by the RMS, each layer's matrix
    alone: a layer's update in the stacked blocks is the update of a one-layer model holding
    that layer."""
    t = tiny(f"train.optimizer={name}", "train.grad_clip=0").train
    params = model.init_params(tiny().model, 21, jax.random.key(0))
    grads = jax.tree.map(lambda x: jax.random.normal(jax.random.key(1), x.shape), params)
    # Layers far apart in scale, so that a step pooling them would move each by the other's.
    scale = jnp.array([10.0, 0.1])
    params["blocks"] = jax.tree.map(lambda x: x * scale.reshape(-1, *[1] * (x.ndim - 1)),
                                    params["blocks"])  # fmt: skip
    grads["blocks"] = jax.tree.map(lambda x: x / scale.reshape(-1, *[1] * (x.ndim - 1)),
                                   grads["blocks"])  # fmt: skip
    tx = optim.make(t)
    stacked = jax.jit(tx.update)(grads, tx.init(params), params)[0]["blocks"]
    for i in range(2):

        def layer(tree: model.Params, i: int = i) -> model.Params:
            return {**tree, "blocks": jax.tree.map(lambda x: x[i : i + 1], tree["blocks"])}

        alone = jax.jit(tx.update)(layer(grads), tx.init(layer(params)), layer(params))[0]
        for key, u in stacked.items():
            np.testing.assert_allclose(u[i], alone["blocks"][key][0], rtol=2e-4, atol=1e-8,
                                       err_msg=f"layer {i} of blocks.{key}")  # fmt: skip


def test_independent_weight_decay_does_not_scale_with_the_peak_learning_rate() -> None:
    params = model.init_params(tiny().model, 21, jax.random.key(0))
    zero = jax.tree.map(jnp.zeros_like, params)  # no gradient: the update is the decay alone
    for mode, expected in [("decoupled", 0.5 * 0.1), ("independent", 1.0 * 0.1)]:
        t = tiny("train.learning_rate=0.5", "train.min_lr=0.01", "train.warmup_iters=0",
                 "train.weight_decay=0.1", f"train.weight_decay_mode={mode}").train  # fmt: skip
        tx = optim.make(t)
        updates, _ = jax.jit(tx.update)(zero, tx.init(params), params)
        np.testing.assert_allclose(updates["wte"], -expected * params["wte"], rtol=1e-5)
        assert not np.any(updates["lnf_g"])  # gains are not decayed


def test_fsdp_shards_the_largest_divisible_axis_and_dp_replicates() -> None:
    assert steps.leaf_spec((2, 32, 96), 8, "fsdp") == P(None, None, "data")
    assert steps.leaf_spec((65, 32), 8, "fsdp") == P(None, "data")
    assert steps.leaf_spec((32, 32), 8, "fsdp") == P(None, "data")
    assert steps.leaf_spec((3, 5), 8, "fsdp") == P() and steps.leaf_spec((), 8, "fsdp") == P()
    assert steps.leaf_spec((2, 32, 96), 8, "dp") == P()


def test_gradient_accumulation_equals_one_big_batch(data_dir: Path) -> None:
    cfg = tiny("train.total_batch_tokens=256", "train.batch_size=8")
    opt = optax.sgd(1.0)  # the update is minus the gradient, to compare gradients exactly
    data = loader.open_prepared(data_dir)
    params = model.init_params(cfg.model, data.vocab_size, jax.random.key(0))
    x, y = loader.batch(data, loader.BatchSpec("train", 0, 16, 16), 0)
    step = jax.jit(steps.make_train_step(cfg, opt))
    results = []
    for A in (1, 2):
        state = {"params": params, "opt": opt.init(params)}
        xs, ys = x.reshape(A, 16 // A, 16), y.reshape(A, 16 // A, 16)
        results.append(step(state, xs, ys, np.int32(0), jax.random.key(1)))
    (s1, stats1), (s2, stats2) = results
    assert float(stats1["loss"]) == pytest.approx(float(stats2["loss"]), rel=1e-6)
    assert float(stats1["grad_norm"]) == pytest.approx(float(stats2["grad_norm"]), rel=1e-5)
    for a, b in zip(jax.tree.leaves(s1["params"]), jax.tree.leaves(s2["params"]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)


def test_a_modern_variant_trains_resumes_bit_exactly_and_reloads(
    data_dir: Path, tmp_path: Path
) -> None:
    from variants import VARIANTS

    arch = [f"model.{k}={config._toml_value(v)}" for k, v in VARIANTS["rope-gqa-swiglu"].items()]
    args = [*arch, "model.z_loss=1e-3", "model.tie_embeddings=false", "train.optimizer=muon",
            "train.checkpoint_interval=3", "train.eval_interval=100"]  # fmt: skip
    whole = train.train(
        tiny(*args, "train.max_iters=6"), data_dir, tmp_path / "whole", tmp_path / "w"
    )
    train.train(tiny(*args, "train.max_iters=3"), data_dir, tmp_path / "half", tmp_path / "k")
    resumed = train.train(
        tiny(*args, "train.max_iters=6"), data_dir, tmp_path / "b", tmp_path / "k"
    )
    assert resumed["resumed_from"] == 3 and resumed["val_loss"] == whole["val_loss"]
    params, cfg_out, _ = checkpoint.load_model(tmp_path / "b")
    for x, y in zip(jax.tree.leaves(checkpoint.load_model(tmp_path / "whole")[0]),
                    jax.tree.leaves(params), strict=True):  # fmt: skip
        assert np.array_equal(x, y)
    m = cfg_out.model  # the model's own config.toml carries the variant
    assert (m.position, m.activation, m.n_kv_head, m.tie_embeddings) == ("rope", "swiglu", 2, False)
    assert "head_w" in params and "wpe" not in params
    # z-loss is reported beside the cross-entropy, which is what "loss" stays.
    rec = records(tmp_path / "whole", "train")[-1]
    assert 0 < rec["z_loss"] < 0.1 * rec["loss"]


def test_diagnostics_every_stats_interval(data_dir: Path, tmp_path: Path) -> None:
    args = ["train.max_iters=5", "model.qk_norm=true", "train.eval_interval=100",
            "logging.log_interval=3", "train.batch_size=12"]  # fmt: skip
    with_stats = tiny(*args, "logging.stats_interval=2")
    train.train(with_stats, data_dir, tmp_path / "a", tmp_path / "ka")
    stats = records(tmp_path / "a", "stats")
    assert [r["step"] for r in stats] == [0, 2, 4]
    prov = json.loads((tmp_path / "a" / "provenance.json").read_text())
    assert prov["runtime_diagnostics"] == prov["runtime"] | {"attention": "einsum"}
    # What the records mean, at step 0 (the initial parameters): the largest attention logit
    # of each layer in a forward of the first steps.STATS_ROWS rows of the step's batch, and
    # the mean log Z over every position of the step.
    m, t = with_stats.model, with_stats.train
    data = loader.open_prepared(data_dir)
    V = model.vocab_rows(dataclasses.replace(m, vocab_size=data.vocab_size))
    p0 = model.init_params(m, V, jax.random.split(jax.random.key(t.seed))[0])
    x, y = loader.batch(data, loader.BatchSpec("train", t.seed, t.batch_size, m.block_size), 0)
    assert steps.STATS_ROWS < t.batch_size
    head_rows = model.trunk(p0, x[: steps.STATS_ROWS], m, stats=True)[1]
    np.testing.assert_allclose(stats[0]["attn_logit_max"], head_rows, rtol=1e-5)
    whole = model.loss_fn(p0, x, y, dataclasses.replace(m, vocab_size=data.vocab_size))[1]
    assert stats[0]["log_z"] == pytest.approx(float(whole["log_z"]), rel=1e-5)
    # Records come in step order (wandb drops a step lower than one it has logged).
    lines = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    order = [(r["kind"], r["step"]) for r in map(json.loads, lines) if r["kind"] != "eval"]
    assert order == [("stats", 0), ("train", 0), ("stats", 2), ("train", 3), ("stats", 4),
                     ("train", 4)], order  # fmt: skip
    N = with_stats.model.n_layer
    for r in stats:
        assert len(r["attn_logit_max"]) == N and math.isfinite(r["log_z"])
        for kind in ("param_rms", "grad_rms", "update_rms"):
            assert len(r[kind]["blocks.attn_w"]) == N and len(r[kind]["wte"]) == 1
            assert len(r[kind]["blocks.q_norm_g"]) == N
            assert all(
                v > 0
                for k, vs in r[kind].items()
                for v in vs
                if k.endswith("_b") is False or kind != "param_rms"
            ), kind
    first = stats[0]
    # Step 0 sees the initialisation: wte ~ normal(0.02), gains 1; log Z of near-uniform
    # logits is about log V.
    assert first["param_rms"]["wte"][0] == pytest.approx(0.02, rel=0.05)
    assert first["param_rms"]["blocks.ln1_g"] == [1.0] * N
    V = loader.open_prepared(data_dir).vocab_size
    assert first["log_z"] == pytest.approx(math.log(V), abs=0.1)
    # Adam's first update has RMS about the learning rate (warmup: lr(0) = 1e-2 / 3).
    assert first["update_rms"]["blocks.fc_w"][0] == pytest.approx(1e-2 / 3, rel=0.3)
    # The report plots them against step under the loss curves, one line per layer.
    from nanogptx import report

    svg = report.curves_svg({"run": report.read_metrics(tmp_path / "a" / "metrics.jsonl")}, "t")
    labels = ["largest attention logit", "mean log Z", "parameter RMS", "gradient RMS",
              "update RMS / parameter RMS"]  # fmt: skip
    assert all(label in svg for label in labels)
    assert svg.count("<title>run layer 1</title>") == 4
    assert svg.count('<g id="curve-') == 4 + 4 * N + 1  # each series drawn: <g id="curve-N">
    # The same training as without diagnostics.
    train.train(tiny(*args), data_dir, tmp_path / "b", tmp_path / "kb")
    assert not records(tmp_path / "b", "stats")
    a, b = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], rel=1e-5) for k in a)


def test_train_writes_the_model_dir_and_the_final_loss_recomputes(
    data_dir: Path, tmp_path: Path
) -> None:
    cfg = tiny("train.max_iters=10", "train.checkpoint_interval=4", "train.keep_checkpoints=2",
               "train.profile_start=2", "train.profile_steps=2",
               "train.peak_flops=1e11")  # fmt: skip
    summary = train.train(cfg, data_dir, tmp_path / "model", tmp_path / "ckpt")
    out = tmp_path / "model"
    assert sorted(p.name for p in out.iterdir()) == [
        "config.toml", "metrics.jsonl", "params.safetensors", "profile", "provenance.json",
        "tokenizer.json",
    ]  # fmt: skip
    assert list(out.glob("profile/**/*.xplane.pb")), "no profiler trace written"
    assert [s for s, _ in checkpoint.list_checkpoints(tmp_path / "ckpt")] == [8, 10]
    manifest = json.loads((data_dir / "manifest.json").read_text())
    params, cfg_out, tok = checkpoint.load_model(out)
    assert (
        cfg_out.model.vocab_size == manifest["tokenizer"]["vocab_size"]
        and tok == manifest["tokenizer"]
    )
    train_losses = losses(out)
    assert sorted(train_losses) == list(range(10))
    assert train_losses[9] < train_losses[0] - 0.5
    assert [r["step"] for r in records(out, "eval")] == [0, 5, 10]
    rec = records(out, "train")[-1]
    assert rec["tokens"] == 10 * 8 * 16 and rec["tokens_per_s"] > 0
    # MFU: nanoGPT's FLOPs per token at the logged rate, against the configured peak.
    n_flops = model.count_params(params, non_embedding=True)
    flops_per_s = model.flops_per_token(cfg_out.model, n_flops) * rec["tokens_per_s"]
    assert rec["mfu"] == pytest.approx(flops_per_s / 1e11, rel=1e-6)
    prov = json.loads((out / "provenance.json").read_text())
    data = loader.open_prepared(data_dir)
    assert prov["manifest_sha256"] == data.manifest_sha256
    assert prov["batch_schedule"]["function"] == loader.BATCH_FUNCTION
    assert {o["path"].split("/")[-1] for o in prov["outputs"]} >= {"params.safetensors"}
    assert prov["runtime"] == {"kernels": "fast", "attention": "einsum", "unroll": 2,
                               "loss_chunk": 1 << 23, "remat": "none"}  # CPU  # fmt: skip
    # The final validation loss recomputes from the saved model and the recorded schedule.
    eval_batches = loader.BatchSpec("val", cfg.train.seed, 8, 16, stream="eval")
    val = np.mean([
        model.loss_fn(params, *loader.batch(data, eval_batches, k), cfg_out.model)[0]
        for k in range(cfg.train.eval_iters)
    ])  # fmt: skip
    assert float(val) == pytest.approx(summary["val_loss"], rel=1e-5)
    evals = records(out, "eval")
    assert evals[-1]["val_loss"] == summary["val_loss"]
    # Each evaluation says when it ended, in seconds since the training process started.
    wall = [r["wall_s"] for r in evals]
    assert len(wall) >= 2 and 0 < wall[0] and wall == sorted(wall) and wall[0] < wall[-1]


def test_kernels_and_remat_are_how_it_runs_so_a_run_resumes_under_others(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    fast = tiny("train.max_iters=3", "model.kernels=fast")
    train.train(fast, data_dir, tmp_path / "a", tmp_path / "ckpt")
    ref = tiny("train.max_iters=6", "model.kernels=reference", "model.remat=block")
    assert config.checkpoint_id(ref) == config.checkpoint_id(fast)
    summary = train.train(ref, data_dir, tmp_path / "b", tmp_path / "ckpt")
    assert summary["resumed_from"] == 3
    prov = json.loads((tmp_path / "b" / "provenance.json").read_text())
    assert prov["runtime"] == {"kernels": "reference", "attention": "einsum", "unroll": 2,
                               "loss_chunk": 1 << 23, "remat": "block"}  # fmt: skip
    assert "runtime: {'kernels': 'reference'" in capsys.readouterr().out
    assert prov["runtime_diagnostics"] is None  # logging.stats_interval = 0: no such steps
    # cuDNN's attention: float32 training is refused by the config, and 16-bit training off a
    # GPU before any file is read (the data directory is not even there).
    with pytest.raises(config.ConfigError, match="model.attention = 'cudnn': expected auto, "
                       "einsum or xla with train.compute_dtype = 'float32'"):  # fmt: skip
        tiny("model.attention=cudnn")
    cudnn = tiny("model.attention=cudnn", "train.compute_dtype=bfloat16")
    with pytest.raises(train.TrainError, match="model.attention = 'cudnn' needs a GPU"):
        train.train(cudnn, tmp_path / "no-data", tmp_path / "c", tmp_path / "d")
    assert not (tmp_path / "c").exists() and not (tmp_path / "d").exists()
    # Sampling and evaluation compute in float32: there the run's cudnn is XLA's attention.
    assert runtime.choose(cudnn.model, "gpu", "float32").attention == "xla"
    assert runtime.choose(cudnn.model, "gpu", "bfloat16").attention == "cudnn"


def test_mfu_peak_is_configured_else_known_else_measured_else_none() -> None:
    assert logbook.peak_flops(tiny("train.peak_flops=3e12").train) == (3e12, "train.peak_flops")
    peak, source = logbook.peak_flops(tiny().train)  # a CPU: not in the table
    assert peak is None and "train.measure_peak" in source
    peak, source = logbook.peak_flops(tiny("train.measure_peak=true").train)
    assert source.startswith("measured") and 1e8 < peak < 1e14, (peak, source)


def test_a_plan_longer_than_an_hour_at_the_peak_is_warned_before_compiling(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A run file with only [data] and [tokenizer] trains GPT-2 124M for 600,000 steps: the
    log, and the workflow's terminal, say what that costs before anything compiles."""
    from nanogptx import progress

    r, w = os.pipe()
    cfg = tiny("train.max_iters=2", "train.peak_flops=1e3")  # about 4e7 FLOPs: hours at 1e3/s
    train.train(cfg, data_dir, tmp_path / "m", tmp_path / "c", channel=progress.Channel(w, "t"))
    os.close(w)
    out = capsys.readouterr().out
    warning = re.search(r"warning: the 2 steps planned \(train.max_iters = 2\) are [\d.e+]+ "
                        r"FLOPs: at least (\d+):\d\d:\d\d on 1 device at their peak \(1e-09 "
                        r"TFLOP/s, train.peak_flops\), about (\d+ days? )?\d+:\d\d:\d\d at a "
                        r"typical 40% MFU", out)  # fmt: skip
    assert warning and int(warning.group(1)) >= 1, out
    assert out.index("warning: the 2 steps") < out.index("compiled train and eval steps")
    assert "(README: Adding a dataset)" in out
    assert "t: warning: the 2 steps planned" in os.read(r, 10_000).decode()
    train.train(tiny("train.max_iters=2", "train.peak_flops=1e11"), data_dir, tmp_path / "m2",
                tmp_path / "c2")  # fmt: skip
    assert "warning" not in capsys.readouterr().out
    # No peak known (a CPU without train.measure_peak): measured only for a plan that could be
    # long; a plan short even at 1 GFLOP/s needs none.
    assert logbook.plan_peak(tiny().train, 1e12, 1)[0] is None
    peak, source = logbook.plan_peak(tiny().train, 1e14, 1)
    assert 1e8 < peak < 1e14 and source.endswith("for the plan's estimate")


def test_mfu_is_never_above_one_a_step_faster_than_the_peak_says_so(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # A peak far too low (as one measured while the machine was busy): the first step beats
    # it, the log says so, and MFU is against that step's rate from then on.
    train.train(tiny("train.max_iters=6", "train.peak_flops=1e3"), data_dir, tmp_path / "m",
                tmp_path / "k")  # fmt: skip
    out = capsys.readouterr().out
    assert "above the peak of 1e-09 (train.peak_flops): the peak was underestimated" in out
    mfus = [r["mfu"] for r in records(tmp_path / "m", "train")]
    assert len(mfus) == 6 and all(0 < m <= 1.0 for m in mfus) and mfus[0] == 1.0


def test_rerun_resumes_keeps_the_wandb_run_and_refuses_other_settings(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = tiny("train.max_iters=6", "train.checkpoint_interval=3", "logging.wandb_mode=offline")
    train.train(cfg, data_dir, tmp_path / "a", tmp_path / "ckpt")
    run_id = (tmp_path / "ckpt" / "wandb_run_id").read_text()
    summary = train.train(
        tiny("train.max_iters=9", "train.checkpoint_interval=3", "logging.wandb_mode=offline"),
        data_dir, tmp_path / "b", tmp_path / "ckpt",
    )  # fmt: skip
    assert summary["resumed_from"] == 6
    assert sorted(losses(tmp_path / "b")) == list(range(9))
    assert losses(tmp_path / "b").items() >= losses(tmp_path / "a").items()
    runs = list((tmp_path / "ckpt" / "wandb").glob("offline-run-*"))
    # offline-run-<time>-<id>, with -1 appended by wandb when both start in the same second
    pattern = rf"offline-run-\d{{8}}_\d{{6}}-{run_id}(-\d+)?"
    assert len(runs) == 2 and all(re.fullmatch(pattern, r.name) for r in runs), runs
    # A shorter run resumes from the newest checkpoint it has not passed, and says so.
    summary = train.train(tiny("train.max_iters=7"), data_dir, tmp_path / "c", tmp_path / "ckpt")
    assert summary["resumed_from"] == 6 and summary["step"] == 7
    assert "not resuming from step_00000009: past train.max_iters = 7" in capsys.readouterr().out
    with pytest.raises(checkpoint.CheckpointError, match=r"every checkpoint .* is past train.max"):
        train.train(tiny("train.max_iters=2"), data_dir, tmp_path / "c", tmp_path / "ckpt")
    with pytest.raises(train.TrainError, match="train.learning_rate, train.beta2"):
        train.train(
            tiny("train.max_iters=9", "train.learning_rate=3e-3", "train.beta2=0.9"),
            data_dir, tmp_path / "c", tmp_path / "ckpt",
        )  # fmt: skip
    # In a directory of its own (as Snakemake names them), it starts afresh and says why.
    capsys.readouterr()
    train.train(tiny("train.max_iters=2", "train.learning_rate=3e-3"), data_dir,
                tmp_path / "d", tmp_path / "ckpt-lr")  # fmt: skip
    out = capsys.readouterr().out
    assert f"starting from step 0: {tmp_path / 'ckpt-lr'} has no checkpoint" in out
    assert "train.max_iters: 9 -> 2, train.learning_rate: 0.01 -> 0.003" in out


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(
    data_dir: Path, tmp_path: Path
) -> None:
    # A learning rate of 1e30 makes the weights overflow after the first update.
    cfg = tiny("train.max_iters=10", "train.checkpoint_interval=1", "train.learning_rate=1e30",
               "train.grad_clip=0", "logging.log_interval=5")  # fmt: skip
    with pytest.raises(train.TrainError, match=r"loss is nan .* at step 1: training stopped"):
        train.train(cfg, data_dir, tmp_path / "model", tmp_path / "ckpt")
    assert [s for s, _ in checkpoint.list_checkpoints(tmp_path / "ckpt")] == [1]
    tensors, meta = checkpoint.load(checkpoint.latest(tmp_path / "ckpt"))
    assert all(np.isfinite(t).all() for t in tensors.values())
    assert not (tmp_path / "model" / "params.safetensors").exists()


def test_a_loss_spike_after_the_warmup_is_no_divergence_a_loss_that_stays_above_L0_is(
    data_dir: Path, tmp_path: Path
) -> None:
    # Issue 24: at learning rate 0.3 the loss spikes above the step-0 loss L0 for a few steps
    # after the 2-step warmup, then recovers; with on_divergence = stop the run trains on.
    stop = ["train.max_iters=40", 'train.on_divergence="stop"', "train.eval_interval=100"]
    spike = train.train(tiny(*stop, "train.learning_rate=0.3"), data_dir, tmp_path / "s",
                        tmp_path / "cs")  # fmt: skip
    L0 = records(tmp_path / "s", "eval")[0]["train_loss"]
    above = [s for s, loss in losses(tmp_path / "s").items() if s >= 2 and loss > L0]
    assert above[0] == 2 and len(above) < 15, above  # the old rule stopped at step 2
    assert spike["diverged"] is None and spike["step"] == 40
    assert losses(tmp_path / "s")[39] < L0 - 0.2
    # At learning rate 1 it stays above L0 from step 2 on: diverged at the 10th such step, and
    # a run resumed in the middle of those steps stops at the same one.
    args = [*stop, "train.learning_rate=1.0", "train.divergence_steps=10",
            "train.checkpoint_interval=5"]  # fmt: skip
    whole = train.train(tiny(*args), data_dir, tmp_path / "w", tmp_path / "cw")["diverged"]
    assert whole["step"] == 11 and "the 10 steps 2 to 11 after the warmup" in whole["reason"]
    train.train(tiny(*args, "train.max_iters=8"), data_dir, tmp_path / "h", tmp_path / "ck")
    resumed = train.train(tiny(*args), data_dir, tmp_path / "r", tmp_path / "ck")
    assert resumed["resumed_from"] == 8 and resumed["diverged"] == whole


def test_a_damaged_checkpoint_stops_the_resume_unless_latest_valid_skips_it(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    ckpt = tmp_path / "ckpt"
    cfg = tiny("train.max_iters=6", "train.checkpoint_interval=3", "train.keep_checkpoints=3")
    train.train(cfg, data_dir, tmp_path / "a", ckpt)
    state = ckpt / "step_00000006" / checkpoint.STATE_FILE
    data = bytearray(state.read_bytes())
    data[-5] ^= 0x40  # an optimizer moment: it parses, and used to be trained on
    state.write_bytes(bytes(data))
    longer = tiny("train.max_iters=9", "train.checkpoint_interval=3", "train.keep_checkpoints=3")
    with pytest.raises(checkpoint.CheckpointError, match=r"step_00000006 is damaged: .*sha256"):
        train.train(longer, data_dir, tmp_path / "b", ckpt)
    summary = train.train(
        dataclasses.replace(longer, train=dataclasses.replace(longer.train, resume="latest_valid")),
        data_dir, tmp_path / "b", ckpt,
    )  # fmt: skip
    out = capsys.readouterr().out
    assert summary["resumed_from"] == 3 and "skipping checkpoint step_00000006: checkpoint" in out
    checkpoint.load(ckpt / "step_00000006")  # written again, intact: no error
    whole = train.train(longer, data_dir, tmp_path / "c", tmp_path / "whole")
    assert losses(tmp_path / "b") == losses(tmp_path / "c") and whole["step"] == 9


def test_two_trainings_on_one_checkpoint_directory_the_second_refuses_at_start(
    data_dir: Path, tmp_path: Path, env: dict[str, str], capsys: pytest.CaptureFixture
) -> None:
    ckpt = tmp_path / "ckpt"
    args = [*TINY, "train.max_iters=100000", "--data", str(data_dir), "--checkpoints", str(ckpt)]
    first = subprocess.Popen(
        [sys.executable, "-m", "nanogptx.train", *args, "--out", str(tmp_path / "a")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert "model:" in first.stdout.readline()  # it holds the directories from here on
        with pytest.raises(SystemExit) as e:
            train.main([*args, "--out", str(tmp_path / "b")])
    finally:
        first.kill()
        first.wait()
    err = capsys.readouterr().err
    assert e.value.code == 1
    assert f"{ckpt} is in use by another training (pid {first.pid} on " in err


def test_wandb_online_without_an_api_key_is_one_line_naming_the_setting(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    for var in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc with a key
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    args = [*TINY, "logging.wandb_mode=online", "--data", str(data_dir)]
    with pytest.raises(SystemExit) as e:
        train.main([*args, "--out", str(tmp_path / "m"), "--checkpoints", str(tmp_path / "c")])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 1 and len(err.splitlines()) == 1, err
    assert "logging.wandb_mode = 'online'" in err and "wandb login" in err
    assert not (tmp_path / "m" / "params.safetensors").exists()


def test_inconsistent_config_and_data_are_refused_before_any_work(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    n_val = loader.open_prepared(data_dir).split("val").n_tokens
    with pytest.raises(train.TrainError, match=f"block_size = {n_val} is longer than the val"):
        train.train(tiny(f"model.block_size={n_val}"), data_dir, tmp_path / "m", tmp_path / "c")
    with pytest.raises(train.TrainError, match="vocab_size = 5 is smaller"):
        train.train(tiny("model.vocab_size=5"), data_dir, tmp_path / "m", tmp_path / "c")
    assert not (tmp_path / "c").exists() and not (tmp_path / "m").exists()
    out, ckpt = str(tmp_path / "m"), str(tmp_path / "c")
    args = ["--data", str(data_dir), "--out", out, "--checkpoints", ckpt]
    with pytest.raises(SystemExit) as e:
        train.main([*args, "model.n_embd=30", "model.n_head=4"])
    assert e.value.code == 2 and "model.n_embd = 30" in capsys.readouterr().err
    bad = tmp_path / "bad"
    shutil.copytree(data_dir, bad)
    with open(bad / "val_000000.npy", "r+b") as f:
        f.seek(-1, 2)
        f.write(b"\x07")
    with pytest.raises(SystemExit) as e:
        train.main([*args, "--data", str(bad), *TINY])
    err = capsys.readouterr().err
    assert e.value.code == 1 and f"shard {bad / 'val_000000.npy'}: sha256 is" in err


@pytest.mark.parametrize(
    "optimizer",
    ["adamw", *(pytest.param(o, marks=pytest.mark.slow) for o in ("muon", "lion", "adafactor"))],
)
def test_sigkill_midway_then_resume_gives_exactly_the_uninterrupted_run(
    data_dir: Path, tmp_path: Path, env: dict[str, str], optimizer: str
) -> None:
    lr = {"lion": "1e-3", "adafactor": "1e-1"}.get(optimizer, "1e-2")

    def run(name: str) -> subprocess.Popen:
        args = [
            sys.executable, "-m", "nanogptx.train", *TINY, f"train.optimizer={optimizer}",
            f"train.learning_rate={lr}", "train.min_lr=1e-4", "train.max_iters=600",
            "train.checkpoint_interval=40", "train.eval_interval=100", "--data", str(data_dir),
            "--out", str(tmp_path / name / "model"), "--checkpoints", str(tmp_path / name / "ckpt"),
        ]  # fmt: skip
        return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    whole, killed = run("whole"), run("killed")
    ckpt, deadline = tmp_path / "killed" / "ckpt", time.time() + 120
    while checkpoint.latest(ckpt) is None:
        assert killed.poll() is None, killed.stdout.read().decode()
        assert time.time() < deadline
        time.sleep(0.005)
    time.sleep(np.random.default_rng().uniform(0, 0.2))
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    assert not (tmp_path / "killed" / "model" / "params.safetensors").exists(), "not midway"
    resumed = run("killed")
    out_resumed, _ = resumed.communicate(timeout=120)
    out_whole, _ = whole.communicate(timeout=120)
    assert resumed.returncode == 0 and whole.returncode == 0, out_resumed + out_whole
    assert b"resumed from" in out_resumed
    a, b = tmp_path / "whole" / "model", tmp_path / "killed" / "model"
    assert losses(a) == losses(b) and len(losses(a)) == 600

    def evals(model_dir: Path) -> list[dict]:  # what each evaluation found (not when: wall_s)
        return [{k: v for k, v in r.items() if k != "wall_s"} for r in records(model_dir, "eval")]

    assert evals(a) == evals(b)
    pa, pb = checkpoint.load_model(a)[0], checkpoint.load_model(b)[0]
    for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb), strict=True):
        assert np.array_equal(x, y)


EIGHT_DEVICES = """
import json, sys
from pathlib import Path
import jax
from nanogptx import config, train
data, root, overrides = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])
assert jax.device_count() == 8
result = {}
for mode, iters in (("dp", 6), ("fsdp", 4)):
    cfg = config.load(None, overrides + [f"train.sharding={mode}", f"train.max_iters={iters}"])
    result[mode] = train.train(cfg, data, root / mode / "model", root / mode / "ckpt")
try:
    cfg = config.load(None, overrides + ["train.batch_size=12"])
    train.train(cfg, data, root / "x", root / "y")
except train.TrainError as e:
    result["error"] = str(e)
print("RESULT " + json.dumps(result))
"""


def test_eight_devices_match_one_device_in_dp_and_fsdp(
    data_dir: Path, tmp_path: Path, env: dict[str, str]
) -> None:
    overrides = [*TINY, "train.checkpoint_interval=0"]
    proc = subprocess.Popen(
        [sys.executable, "-c", EIGHT_DEVICES, str(data_dir), str(tmp_path), json.dumps(overrides)],
        env={**env, "XLA_FLAGS": env["XLA_FLAGS"] + " --xla_force_host_platform_device_count=8"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    # Meanwhile, the same runs on this process's one device.
    one = train.train(tiny("train.max_iters=6"), data_dir, tmp_path / "one", tmp_path / "one-c")
    output = proc.communicate(timeout=300)[0].decode()
    assert proc.returncode == 0, output
    result = json.loads(output.split("RESULT ")[-1])
    ref = losses(tmp_path / "one")
    for mode, n in (("dp", 6), ("fsdp", 4)):
        got = losses(tmp_path / mode / "model")
        assert sorted(got) == list(range(n))
        np.testing.assert_allclose([got[s] for s in range(n)], [ref[s] for s in range(n)],
                                   rtol=2e-5)  # fmt: skip
    dp, fsdp = result["dp"], result["fsdp"]
    assert dp["devices"] == 8 and dp["param_bytes_per_device"] == one["param_bytes_per_device"]
    ratio = fsdp["param_bytes_per_device_measured"] / dp["param_bytes_per_device_measured"]
    assert 1 / 8 <= ratio < 1.3 / 8, ratio
    assert fsdp["param_bytes_per_device"] == fsdp["param_bytes_per_device_measured"]
    assert "batch_size = 12 is not divisible by the 8 devices" in result["error"]
    assert not (tmp_path / "y").exists()
    # The FSDP checkpoint of 8 devices resumes on this one device and continues the same run.
    resumed = train.train(
        tiny("train.max_iters=6"), data_dir, tmp_path / "r", tmp_path / "fsdp" / "ckpt"
    )
    assert resumed["resumed_from"] == 4
    got = losses(tmp_path / "r")
    np.testing.assert_allclose([got[4], got[5]], [ref[4], ref[5]], rtol=2e-5)
    assert resumed["val_loss"] == pytest.approx(one["val_loss"], rel=1e-4)


def test_help_opens_with_every_optimizer_and_schedule(capsys: pytest.CaptureFixture) -> None:
    """`python -m nanogptx.train --help` began "AdamW with warmup + cosine decay" after the
    optimizers and schedules became settings."""
    with pytest.raises(SystemExit):
        train.main(["--help"])
    description = capsys.readouterr().out.split("\n\n")[1]  # after the usage lines
    fields = {f.name: f for f in dataclasses.fields(config.TrainConfig)}
    for key in ("optimizer", "lr_schedule"):
        for choice in fields[key].metadata["choices"]:
            assert choice in description, (key, choice, description)
