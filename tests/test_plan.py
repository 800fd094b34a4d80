"""The memory plan on this machine's CPU devices (GPU targets: test_gpu_compile.py): each
program measured from its compiled form, the budget JAX hands out, the automatic micro-batch
(chosen, logged, recorded and resumed on another device count), training refusing a program
that cannot fit before it reads a shard, and cuDNN's limits for a device's compute capability."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from nanogptx import config, memory, microbatch, model, plan, resume, runtime, steps, train
from nanogptx import eval as eval_stage
from prepared import synthetic_text, write_prepared

ROOT = Path(__file__).resolve().parents[1]
GiB = 2**30
TINY = [
    "model.n_layer=2", "model.n_head=2", "model.n_embd=32", "model.block_size=16",
    "train.learning_rate=1e-2", "train.warmup_iters=2", "train.lr_decay_iters=20",
    "train.eval_iters=2", "train.eval_interval=5", "logging.log_interval=1",
    "logging.stats_interval=0",
]  # fmt: skip


def tiny(*overrides: str) -> config.Config:
    return config.load(None, [*TINY, *overrides])


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_prepared(tmp_path_factory.mktemp("data"), synthetic_text(20_000), 4000)


def one_device() -> Mesh:
    return Mesh(np.array(jax.devices()[:1]), ("data",))


# ---------------------------------------------------------------- cuDNN's limits


def heads(K: int, H: int = 4) -> config.ModelConfig:
    return config.load(None, [f"model.n_head={H}", f"model.n_embd={H * K}"]).model


def test_cudnn_runs_where_its_limits_allow_on_the_devices_capability_else_xla_says_why() -> None:
    hopper, ampere, turing = (9, 0), (8, 0), (7, 5)
    assert runtime.choose(heads(64), "gpu", "bfloat16", hopper).attention == "cudnn"
    # 160: within Hopper's 256, past Ampere's 128.
    assert runtime.choose(heads(160), "gpu", "bfloat16", hopper).attention == "cudnn"
    rt = runtime.choose(heads(160), "gpu", "bfloat16", ampere)
    assert rt.attention == "xla"
    assert rt.why == ("head width n_embd / n_head = 640 / 4 = 160: cuDNN's attention needs a "
                      "multiple of 8 of at most 128 on compute capability 8.0")  # fmt: skip
    assert rt.describe()["attention_why"] == rt.why and rt.why in rt.explain(heads(160), "gpu")
    assert "multiple of 8" in runtime.choose(heads(60, 6), "gpu", "bfloat16", hopper).why
    assert "8.0 or later" in runtime.choose(heads(64), "gpu", "float16", turing).why
    assert "bfloat16 or float16" in runtime.choose(heads(64), "gpu", "float32", hopper).why
    assert runtime.choose(heads(64), "cpu", "bfloat16").attention == "einsum"
    # Unknown capability: the limit every GPU has.
    assert runtime.choose(heads(160), "gpu", "bfloat16").attention == "xla"
    # An explicit cudnn: refused before any work, naming the limit; float32 (sampling,
    # evaluation) runs XLA's as before.
    cudnn = config.load(None, ["model.n_head=4", "model.n_embd=640", "model.attention=cudnn",
                               "train.compute_dtype=bfloat16"]).model  # fmt: skip
    with pytest.raises(runtime.Unsupported, match="model.attention = 'cudnn': head width .* = "
                       "160: .* at most 128 on compute capability 8.0"):  # fmt: skip
        runtime.choose(cudnn, "gpu", "bfloat16", ampere)
    with pytest.raises(runtime.Unsupported, match="needs a GPU; this platform is cpu"):
        runtime.choose(cudnn, "cpu", "bfloat16")
    assert runtime.choose(cudnn, "gpu", "float32", ampere).attention == "xla"
    assert runtime.choose(cudnn, "gpu", "bfloat16", hopper).attention == "cudnn"


def test_the_config_refuses_cudnn_for_a_head_width_no_gpu_takes() -> None:
    base = ["model.attention=cudnn", "train.compute_dtype=bfloat16", "model.n_head=6"]
    with pytest.raises(config.ConfigError, match=r"model.attention = 'cudnn': expected auto, "
                       "einsum or xla with a head width n_embd / n_head = 60 "):  # fmt: skip
        config.load(None, [*base, "model.n_embd=360"])
    with pytest.raises(config.ConfigError, match="head width n_embd / n_head = 264"):
        config.load(None, [*base, "model.n_embd=1584"])
    config.load(None, [*base[1:], "model.n_embd=360"])  # auto: XLA's attention there
    config.load(None, [*base, "model.n_embd=960"])  # 160: an H100 takes it


def test_cudnn_capability_makes_jaxs_check_answer_for_the_target_then_restores_it() -> None:
    from jax._src.cudnn import fused_attention_stablehlo as fa

    original = fa.check_compute_capability
    assert not fa.check_compute_capability("9.0")  # this host: no GPU, so JAX says no
    with runtime.cudnn_capability((9, 0)):
        assert fa.check_compute_capability("9.0") and not fa.check_compute_capability("10.0")
        assert fa.is_cuda_compute_capability_equal("9.0")
    with runtime.cudnn_capability((8, 6)):
        assert fa.check_compute_capability("8.0") and not fa.check_compute_capability("9.0")
    assert fa.check_compute_capability is original


# ---------------------------------------------------------------- the budget and the search


def test_the_budget_is_what_jax_hands_out(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("XLA_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_MEM_FRACTION",
                "XLA_PYTHON_CLIENT_ALLOCATOR", "XLA_PYTHON_CLIENT_PREALLOCATE"):  # fmt: skip
        monkeypatch.delenv(var, raising=False)
    cpu = jax.devices()[0]
    assert memory.budget_of(cpu).bytes is None  # no limit known for a CPU
    h100 = 84942979072
    assert memory.budget_of(cpu, h100).bytes == int(0.75 * h100)
    monkeypatch.setenv("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # on demand, the same limit
    assert memory.budget_of(cpu, h100).bytes == int(0.75 * h100)
    monkeypatch.setenv("XLA_PYTHON_CLIENT_MEM_FRACTION", ".9")
    budget = memory.budget_of(cpu, h100)
    assert budget.bytes == int(0.9 * h100) and "XLA_PYTHON_CLIENT_MEM_FRACTION=.9" in budget.rule
    monkeypatch.delenv("XLA_PYTHON_CLIENT_MEM_FRACTION")
    monkeypatch.setenv("XLA_CLIENT_MEM_FRACTION", ".5")  # its newer name
    assert memory.budget_of(cpu, h100).bytes == int(0.5 * h100)
    monkeypatch.setenv("XLA_PYTHON_CLIENT_ALLOCATOR", "platform")
    assert memory.budget_of(cpu, h100).bytes == h100


@pytest.mark.parametrize(
    "env, message",
    [
        ({"XLA_PYTHON_CLIENT_MEM_FRACTION": "abc"}, "_MEM_FRACTION='abc': expected the"),
        ({"XLA_PYTHON_CLIENT_MEM_FRACTION": "1.5"}, "'1.5': expected the share of the GPU's"),
        ({"XLA_PYTHON_CLIENT_MEM_FRACTION": "0"}, "'0': expected the share"),
        ({"XLA_PYTHON_CLIENT_MEM_FRACTION": "-1"}, "'-1': expected the share"),
        ({"XLA_CLIENT_MEM_FRACTION": "nan"}, "XLA_CLIENT_MEM_FRACTION='nan': expected"),
        ({"XLA_CLIENT_MEM_FRACTION": ".5", "XLA_PYTHON_CLIENT_MEM_FRACTION": ".9"},
         "both set, which JAX refuses"),
        ({"XLA_PYTHON_CLIENT_ALLOCATOR": "cuda"}, "XLA_PYTHON_CLIENT_ALLOCATOR='cuda': expected"),
    ],
)  # fmt: skip
def test_allocator_settings_that_give_no_budget_are_refused_naming_them(
    env: dict[str, str], message: str
) -> None:
    # What JAX itself refuses (both names of the share, an unknown allocator) and a share that
    # is no budget (JAX would preallocate nothing, or more than the GPU has): never a plan
    # against it, nor a traceback.
    with pytest.raises(memory.EnvError, match=re.escape(message)):
        memory.allocator_share(env)
    assert memory.allocator_share({"XLA_PYTHON_CLIENT_MEM_FRACTION": "1"})[0] == 1.0


def test_the_plan_names_a_bad_allocator_setting_before_it_makes_a_target(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # JAX's CUDA plugin fails to start on XLA_PYTHON_CLIENT_MEM_FRACTION=abc, and XLA then
    # said "topology not implemented for cuda" (without the plugin: install it): the variable
    # is named first, whichever is installed.
    monkeypatch.setenv("XLA_PYTHON_CLIENT_MEM_FRACTION", "abc")
    with pytest.raises(SystemExit) as e:
        plan.main(["--config", str(ROOT / "config" / "tiny.toml"), "--target", "h100"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "error: XLA_PYTHON_CLIENT_MEM_FRACTION='abc': expected" in err


def test_the_search_finds_the_largest_that_fits_in_a_few_compiles() -> None:
    candidates = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
    shapes = {
        "linear": lambda b: 1.4 * GiB + b * 1.8 * GiB,
        "convex": lambda b: 1.4 * GiB + b * 1.5 * GiB + b * b * 0.004 * GiB,
        "steps": lambda b: 2 * GiB + 1.9 * GiB * b + (5 * GiB if b >= 64 else 0),
    }
    for name, bytes_at in shapes.items():
        for limit in (1 * GiB, 3.5 * GiB, 40 * GiB, 59.3 * GiB, 130 * GiB, 2000 * GiB):
            calls = []

            def need(b: int, bytes_at=bytes_at, calls=calls) -> tuple[int, int]:
                calls.append(b)
                return int(bytes_at(b)), int(1.4 * GiB)

            found = memory.largest_fitting(candidates, need, int(limit))
            fits = [b for b in candidates if bytes_at(b) <= int(limit)]
            assert found == (fits[-1] if fits else None), (name, limit, calls)
            assert len(calls) <= 4 or (name == "steps" and len(calls) <= 6), (name, limit, calls)


def test_auto_on_a_cpu_takes_the_largest_divisor_of_at_most_8192_tokens_per_device() -> None:
    cpu = memory.budget_of(jax.devices()[0])
    for rows, L, want in ((256, 64, 128), (96, 128, 48), (4, 4096, 2), (6, 16384, 1)):
        cfg = tiny(f"model.block_size={L}", "train.batch_size=0",
                   f"train.total_batch_tokens={rows * L}")  # fmt: skip
        mb = microbatch.fit_micro_batch(cfg, 64, one_device(), cpu)
        assert (mb.batch_size, mb.micro_batches) == (want, rows // want), (rows, L)
        assert mb.memory == {} and "8192 tokens per device" in mb.how
    with pytest.raises(config.ConfigError, match="train.total_batch_tokens = 0: expected a "
                       "multiple of model.block_size = 16 with train.batch_size = 0"):  # fmt: skip
        tiny("train.batch_size=0")


def test_batches_past_int32_tokens_are_refused_and_auto_searches_any_step_quickly() -> None:
    # A micro-batch of 2^31 tokens or more overflowed JAX's int32 positions deep in a compile
    # (an OverflowError traceback from the plan); a step of 2^62 tokens set auto counting
    # through every row of it. Both are refused at load, naming the key.
    with pytest.raises(config.ConfigError, match=re.escape(
            "train.batch_size = 134217728: expected at most 134217727 (a micro-batch holds at "
            "most 2^31 - 1 tokens: batch_size * model.block_size = 2147483648)")):  # fmt: skip
        tiny(f"train.batch_size={2**27}")
    with pytest.raises(config.ConfigError, match=re.escape(
            f"train.total_batch_tokens = {2**62}: expected at most 2^31 - 1")):  # fmt: skip
        tiny("train.batch_size=0", f"train.total_batch_tokens={2**62}")
    # The largest step allowed, a prime number of rows of one token: the divisors of its rows
    # in about sqrt(rows) steps, not one per row.
    cfg = tiny("model.block_size=1", "train.batch_size=0", f"train.total_batch_tokens={2**31 - 1}")
    mb = microbatch.fit_micro_batch(cfg, 64, one_device(), memory.budget_of(jax.devices()[0]))
    assert (mb.batch_size, mb.micro_batches) == (1, 2**31 - 1)
    assert microbatch.divisors(360) == [d for d in range(1, 361) if 360 % d == 0]
    assert microbatch.divisors(1) == [1] and microbatch.divisors(2**31 - 1) == [1, 2**31 - 1]


def test_auto_with_a_budget_takes_the_largest_micro_batch_whose_compiled_programs_fit() -> None:
    cfg = tiny("train.batch_size=0", "train.total_batch_tokens=256")  # 16 rows per step
    mesh, V = one_device(), 64
    unlimited = memory.Budget(2**62, "test")
    at = {b: microbatch.measure_programs(cfg, V, mesh, b, unlimited) for b in (4, 8)}
    assert at[4]["train_step"].total < at[8]["train_step"].total
    # The figures are XLA's for the very program training runs.
    compiled = steps.compile_program(steps.with_batch(cfg, 4), V, 4, mesh, "train_step")
    assert at[4]["train_step"] == memory.usage(compiled)
    assert at[4]["eval_step"].resident > 0  # the optimizer state stays while it evaluates
    between = memory.Budget(max(u.total for u in at[4].values()) + 1, "test")
    mb = microbatch.fit_micro_batch(cfg, V, mesh, between)
    assert (mb.batch_size, mb.micro_batches, mb.misfit) == (4, 4, None)
    assert set(mb.memory) == {"train_step", "eval_step"} and "fit 0.00 GiB" in mb.how
    # Below the smallest micro-batch's needs: the smallest, named as not fitting.
    none = microbatch.fit_micro_batch(cfg, V, mesh, memory.Budget(1000, "test"))
    assert none.batch_size == 1 and none.misfit == "train_step" and "none fits" in none.how
    message = microbatch.misfit_message(cfg, none, 1)
    assert message.startswith("the train step at micro-batch 1 x 16 needs 0.00 GiB per device")
    assert "more devices" in message and "train.sharding = 'fsdp' (parameters" not in message


def test_training_refuses_a_program_that_cannot_fit_before_it_reads_a_shard(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A GPU's budget on this CPU: 1 MB per device. The data's shards are not even there (its
    # manifest and prepare's record of it are).
    data = tmp_path / "data"
    data.mkdir()
    for name in ("manifest.json", "provenance.json"):
        (data / name).write_bytes((data_dir / name).read_bytes())
    monkeypatch.setattr(memory, "budget_of", lambda device: memory.Budget(10**6, "a test's"))
    with pytest.raises(train.TrainError) as e:
        train.train(tiny("train.batch_size=8"), data, tmp_path / "out", tmp_path / "ckpt")
    message = str(e.value)
    assert message.startswith("the train step at micro-batch 8 x 16 needs ")
    assert "GiB per device (arguments " in message and "more than the budget of 0.00 GiB" in message
    assert "a smaller train.batch_size, or 0 (auto: the largest micro-batch that fits)" in message
    assert not (tmp_path / "out").exists() and not (tmp_path / "ckpt").exists()


@pytest.mark.slow
def test_an_auto_run_records_its_micro_batch_and_resumes_on_another_device_count(
    data_dir: Path, tmp_path: Path
) -> None:
    # 1024 rows of 16 tokens per step: on one CPU device auto takes 512 (8192 tokens), on 8
    # devices all 1024 at once.
    auto = [*TINY, "train.batch_size=0", "train.total_batch_tokens=16384",
            "train.checkpoint_interval=2"]  # fmt: skip
    first = train.train(config.load(None, [*auto, "train.max_iters=2"]), data_dir,
                        tmp_path / "one", tmp_path / "ckpt")  # fmt: skip
    prov = json.loads((tmp_path / "one" / "provenance.json").read_text())
    assert prov["micro_batch"]["batch_size"] == 512 and prov["micro_batch"]["micro_batches"] == 2
    assert prov["batch_schedule"]["batch_size"] == 512 and first["step"] == 2
    # The same checkpoint identity on 8 devices: it resumes, with their micro-batch.
    script = (
        "import json, sys; from nanogptx import config, train; "
        "cfg = config.load(None, json.loads(sys.argv[1])); "
        "s = train.train(cfg, sys.argv[2], sys.argv[3], sys.argv[4]); print('RESULT', s['step'], "
        "s['resumed_from'])"
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_backend_optimization_level=0 "
                        "--xla_force_host_platform_device_count=8"}  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-c", script, json.dumps([*auto, "train.max_iters=4"]), str(data_dir),
         str(tmp_path / "eight"), str(tmp_path / "ckpt")],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "RESULT 4 2" in out.stdout
    assert ("micro-batch 512 -> 1024 (train.batch_size = 0: auto, on these devices): the same "
            "16384 tokens per step") in out.stdout  # fmt: skip
    prov = json.loads((tmp_path / "eight" / "provenance.json").read_text())
    assert prov["micro_batch"]["batch_size"] == 1024 and prov["micro_batch"]["micro_batches"] == 1


# ---------------------------------------------------------------- the command


def test_count_flops_multiplies_loops_out_and_matches_nanogpts_estimate() -> None:
    def layers(x_BxD: jax.Array, w_NxDxD: jax.Array) -> jax.Array:
        return jax.lax.scan(lambda x, w: (jnp.tanh(x @ w), None), x_BxD, w_NxDxD)[0].sum()

    x, w = jnp.zeros((8, 32)), jnp.zeros((5, 32, 32))
    assert plan.count_flops(jax.jit(layers).trace(x, w).jaxpr.jaxpr) == 5 * 2 * 8 * 32 * 32
    grad = jax.jit(jax.grad(layers, argnums=1)).trace(x, w).jaxpr.jaxpr
    assert plan.count_flops(grad) == 3 * 5 * 2 * 8 * 32 * 32  # forward, and two backward dots
    cfg = resume.resolve_vocab(config.load(None, ["model.n_layer=4", "model.n_head=4",
                              "model.n_embd=256", "model.block_size=128", "train.batch_size=4"]),
                              512)  # fmt: skip
    traced = steps.trace_program(cfg, 512, 2, one_device(), "train_step")
    params = jax.eval_shape(lambda: model.init_params(cfg.model, 512, jax.random.key(0)))
    estimate = model.flops_per_token(cfg.model, model.count_params(params)) * 2 * 4 * 128
    assert plan.count_flops(traced.jaxpr.jaxpr) == pytest.approx(estimate, rel=0.02)


def test_plan_prints_every_program_of_the_run_and_json(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = ["--config", str(ROOT / "config" / "tiny.toml"), "logging.stats_interval=10",
            "--vocab", "65"]  # fmt: skip
    plan.main(args)
    out = capsys.readouterr().out.splitlines()
    table = out[out.index(next(line for line in out if line.startswith("program"))) + 1 :]
    names = ["train_step", "diagnostics_step", "eval_step", "sample_loop", "eval_val_loss"]
    assert [line.split()[0] for line in table[: len(names)]] == names
    for line in table[: len(names)]:
        assert float(line.split()[1]) >= 0  # GiB per device
    assert any("vocabulary 65 (--vocab)" in line for line in out)
    plan.main([*args, "--json"])
    got = json.loads(capsys.readouterr().out)
    assert [p["name"] for p in got["programs"]] == names and got["fits"]
    assert got["budget_bytes"] is None and got["micro_batch"]["batch_size"] == 16
    train_step = got["programs"][0]
    assert train_step["tokens"] == 16 * 64 and train_step["flops"] > 0
    assert train_step["memory_bytes"]["total"] > train_step["memory_bytes"]["arguments"] > 0


# Tasks of each scorer: HellaSwag (llm.c's 4 rows an item), LAMBADA (language_modeling: the
# greedy scorer, a row an item) and WinoGrande (schema: 2 rows an item).
EVAL_TASKS = ["tokenizer.name=gpt2", 'eval.tasks=["hellaswag", "core-lambada_openai", '
              '"core-winogrande"]', "eval.batch_size=3"]  # fmt: skip


def test_the_plan_compiles_the_eval_stages_scorers_the_greedy_one_for_language_modeling() -> None:
    cfg = tiny(*EVAL_TASKS)
    V = 50257
    p = plan.make_plan(cfg, jax.devices()[:1], None, V, "GPT-2's", stages=("eval",))
    got = {q.name: q for q in p.programs}
    assert list(got) == ["eval_hellaswag", "eval_core-lambada_openai_greedy",
                         "eval_core-winogrande"]  # fmt: skip
    L = cfg.model.block_size  # the longest bucket: block_size + 1 ids, block_size scored
    assert [q.tokens for q in p.programs] == [3 * 4 * L, 3 * L, 3 * 2 * L]
    # The greedy scorer's figures are XLA's for the very program the stage runs on these rows
    # (its third output, the greedy hits, tells it from the loss scorer).
    rt = runtime.choose_for(cfg.model, jax.devices()[0])
    params = model.init_params(cfg.model, V, jax.random.key(0))
    rows = (
        np.zeros((3, L + 1), np.int32),
        np.zeros((3, L), np.int32),
        np.zeros((3, L), np.float32),
    )
    need = {g: memory.usage(eval_stage.make_scorer(cfg.model, rt, greedy=g).lower(params, *rows)
                            .compile()) for g in (False, True)}  # fmt: skip
    greedy = got["eval_core-lambada_openai_greedy"]
    assert greedy.usage == need[True] != need[False]
    assert greedy.flops > 0 and greedy.devices == 1 and not greedy.note


def test_the_eval_stages_rows_are_split_over_the_devices() -> None:
    # Four CPU devices in a process of their own: per device a quarter of the rows (padded to a
    # multiple of four), the parameters on each.
    script = (
        "import json, sys; from nanogptx import config, plan; "
        "cfg = config.load(None, json.loads(sys.argv[1])); "
        "print(json.dumps({n: plan.plan_run(cfg, None, n, stages=('eval',)).as_dict() "
        "for n in (1, 4)}))"
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_backend_optimization_level=0 "
                        "--xla_force_host_platform_device_count=4"}  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-c", script, json.dumps([*TINY, *EVAL_TASKS])],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    by = {n: {q["name"]: q for q in p["programs"]} for n, p in json.loads(out.stdout).items()}
    for name, one in by["1"].items():
        four = by["4"][name]
        assert (one["devices"], four["devices"]) == (1, 4) and one["tokens"] == four["tokens"]
        assert four["memory_bytes"]["arguments"] < one["memory_bytes"]["arguments"], name
    assert (
        by["4"]["eval_core-winogrande"]["note"] == "6 rows padded to 8, a multiple of the 4 devices"
    )
    assert by["4"]["eval_hellaswag"]["note"] == ""  # 12 rows: 3 a device


@pytest.mark.skipif(plan.cuda_available(), reason="JAX's CUDA build is installed here")
def test_a_gpu_target_without_the_cuda_extra_says_how_to_install_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as e:
        plan.main(["--config", str(ROOT / "config" / "tiny.toml"), "--target", "h100"])
    assert e.value.code == 2
    assert "needs JAX's CUDA build, the cuda extra: pip install -e '.[cuda]'" in (
        capsys.readouterr().err
    )
    with pytest.raises(SystemExit):
        plan.main(["--target", "h99"])
    assert "--target 'h99': expected one of h100, h200, a100-80g, a6000" in capsys.readouterr().err


def test_a_target_file_that_is_no_gpu_description_is_refused_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Missing, a directory, not text, unreadable: exit 2 naming the file, never a traceback.
    odd = tmp_path / "dir with spaces é"
    odd.mkdir()
    (odd / "g ü.txtpb").write_bytes(bytes(range(256)))
    (odd / "locked.txtpb").write_text("gpu_device_info {}")
    (odd / "locked.txtpb").chmod(0)
    cases = {
        str(odd / "missing.txtpb"): "(no such file)",
        str(odd): "(a directory)",
        str(odd / "g ü.txtpb"): "cannot read it as text ('utf-8' codec can't decode",
    }
    if os.geteuid() != 0:  # root reads any file
        cases[str(odd / "locked.txtpb")] = "cannot read it as text ([Errno 13] Permission denied"
    for target, why in cases.items():
        with pytest.raises(SystemExit) as e:
            plan.main(["--config", str(ROOT / "config" / "tiny.toml"), "--target", target])
        err = capsys.readouterr().err
        assert e.value.code == 2 and f"error: --target {target!r}: " in err and why in err, err
        assert "Traceback" not in err


def test_the_gpu_descriptions_ship_in_the_package_with_their_licence() -> None:
    for name, file in plan.TARGETS.items():
        text = plan.target_text(name)
        assert "Apache-2.0, The OpenXLA Authors" in text, name
        assert "collective_memory_granularity" not in text  # this jaxlib refuses it
        assert plan.target_memory(text, name) > 40 * GiB
        assert (ROOT / "src" / "nanogptx" / "gpu_targets" / file).is_file()
    import tomllib

    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "gpu_targets/*.txtpb" in data["tool"]["setuptools"]["package-data"]["nanogptx"]


@pytest.mark.parametrize(
    "args, error",
    [
        (["--vocab", "0"], "--vocab 0: expected >= 1"),
        (["--vocab", "-5"], "--vocab -5: expected >= 1"),
        (["model.attention=cudnn", "train.compute_dtype=bfloat16", "--vocab", "65"],
         "model.attention = 'cudnn' needs a GPU; this platform is cpu"),
    ],
)  # fmt: skip
def test_a_setting_the_plan_cannot_use_is_one_line_not_a_traceback(
    capsys: pytest.CaptureFixture[str], args: list[str], error: str
) -> None:
    """A vocabulary below 1 reached JAX (a TypeError from a gather), and a runtime the devices
    cannot run (a UserError other than PlanError) ended in a traceback."""
    with pytest.raises(SystemExit) as e:
        plan.main(["--config", str(ROOT / "config" / "tiny.toml"), *args])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"python -m nanogptx.plan: error: {error}" in err, err
