"""The config tree: defaults, TOML runs, overrides, and errors that name key, value and file."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from nanogptx import config

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_runs_load_and_hold_only_differences() -> None:
    runs = sorted(p.stem for p in (ROOT / "config").glob("*.toml"))
    assert {"shakespeare-char", "shakespeare-gpt2", "gpt2-124m-fineweb", "tiny"} <= set(runs)
    for run in runs:
        cfg = config.load(ROOT / "config" / f"{run}.toml")
        assert isinstance(cfg, config.Config)
    cpu = config.load(ROOT / "config" / "shakespeare-char.toml")
    assert (cpu.model.n_layer, cpu.model.n_embd, cpu.model.block_size) == (4, 128, 64)
    assert (cpu.train.batch_size, cpu.train.max_iters, cpu.train.beta2) == (12, 2000, 0.99)


def test_overrides_apply_after_the_file_and_parse_types(tmp_path: Path) -> None:
    run = tmp_path / "run.toml"
    run.write_text("[model]\nn_layer = 3\n[train]\nlearning_rate = 1e-3\n")
    cfg = config.load(
        run,
        [
            "model.n_layer=5",
            "train.max_iters=7",
            "data.dataset=tinyshakespeare",
            "data.cleaning=['strip']",
            "train.learning_rate=2",
        ],
    )
    assert cfg.model.n_layer == 5 and cfg.train.max_iters == 7
    assert cfg.data.cleaning == ("strip",)
    assert cfg.train.learning_rate == 2.0 and isinstance(cfg.train.learning_rate, float)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.model.n_layer = 1  # type: ignore[misc]


def test_dump_round_trips(tmp_path: Path) -> None:
    cfg = config.load(ROOT / "config" / "gpt2-124m-fineweb.toml")
    (tmp_path / "dumped.toml").write_text(config.dump(cfg))
    assert config.load(tmp_path / "dumped.toml") == cfg


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ("[model]\nn_layr = 3\n", ["run.toml", "model.n_layr", "did you mean 'n_layer'"]),
        ("[trian]\nmax_iters = 3\n", ["run.toml", "[trian]", "did you mean 'train'"]),
        ('[model]\nn_layer = "4"\n', ["run.toml", "model.n_layer", "expected int", "'4'"]),
        ("[model]\nbias = 1\n", ["model.bias", "expected bool"]),
        ("[model]\nn_embd = 100\nn_head = 3\n", ["model.n_embd = 100", "multiple of model.n_head"]),
        ("[train]\nshardng = 'dp'\n", ["train.shardng", "did you mean 'sharding'"]),
        ("[train]\nsharding = 'tp'\n", ["train.sharding = 'tp'", "one of ['dp', 'fsdp']"]),
        (
            "[data]\ndataset = 'tinyshakespear'\n",
            ["unknown dataset", "fineweb-sample-10bt", "did you mean 'tinyshakespeare'"],
        ),
        ("[data]\ncleaning = ['strp']\n", ["data.cleaning = 'strp'", "did you mean 'strip'"]),
        ("[sample]\ntop_p = 1.5\n", ["sample.top_p = 1.5"]),
        ("[model\n", ["run.toml", "not valid TOML"]),
    ],
)
def test_bad_values_are_named_with_file_key_and_expectation(
    tmp_path: Path, toml: str, expected: list[str]
) -> None:
    run = tmp_path / "run.toml"
    run.write_text(toml)
    with pytest.raises(config.ConfigError) as e:
        config.load(run)
    for part in expected:
        assert part in str(e.value)


def test_bad_override_syntax() -> None:
    with pytest.raises(config.ConfigError, match="section.key=value"):
        config.load(None, ["n_layer=3"])


def test_data_id_shared_by_equal_data_settings_only() -> None:
    a = config.load(None, ["train.learning_rate=1.0", "model.n_layer=2"])
    b = config.load(None, ["train.learning_rate=2.0"])
    c = config.load(None, ["tokenizer.name=gpt2"])
    d = config.load(None, ["data.cleaning=['strip']"])
    assert config.data_id(a) == config.data_id(b)
    assert len({config.data_id(a), config.data_id(c), config.data_id(d)}) == 3


@pytest.mark.parametrize("stage", ["download", "prepare", "train", "sample"])
def test_every_stage_help_lists_its_keys(stage: str) -> None:
    r = subprocess.run(
        [sys.executable, "-m", f"nanogptx.{stage}", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "--config" in r.stdout
    assert 'data.dataset (str, default "tinyshakespeare")' in r.stdout
    if stage in ("train", "sample"):
        assert "model.n_layer (int, default 12)" in r.stdout or stage == "sample"


def test_stage_rejects_bad_override_before_work(tmp_path: Path) -> None:
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "nanogptx.prepare",
            "--raw",
            str(tmp_path),
            "--out",
            str(tmp_path / "out"),
            "data.shard_tokns=5",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode != 0
    assert "data.shard_tokns" in r.stderr and "shard_tokens" in r.stderr
    assert not (tmp_path / "out").exists()
