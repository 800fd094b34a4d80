"""Sweeps: a sweep file's checks, and the report's LR sensitivity against a hand computation."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from nanogptx import config, report, sweep


def test_lr_sensitivity_matches_a_hand_computation() -> None:
    # Three variants; "no-qk" diverges at the highest learning rate (inf) and is worse than L0
    # at the next; two seeds of "qk" at 1e-2 are averaged after the cap; every run of "bad"
    # diverged.
    points = [
        {"variant": "no-qk", "lr": 1e-3, "final": 2.0, "initial": 4.0},
        {"variant": "no-qk", "lr": 1e-2, "final": 4.5, "initial": 4.2},
        {"variant": "no-qk", "lr": 1e-1, "final": math.inf, "initial": 4.1},
        {"variant": "qk", "lr": 1e-3, "final": 2.1, "initial": 3.9},
        {"variant": "qk", "lr": 1e-2, "final": 1.8, "initial": 4.0},
        {"variant": "qk", "lr": 1e-2, "final": 2.2, "initial": 4.0},
        {"variant": "qk", "lr": 1e-1, "final": 3.0, "initial": 3.8},
        # Stopped at a divergence: its (finite, low) final loss is not its result: L0 is.
        {"variant": "qk", "lr": 1.0, "final": 1.0, "initial": 4.2, "diverged": 30, "run": "d"},
        {"variant": "bad", "lr": 1.0, "final": 9.0, "initial": 4.0, "diverged": 5, "run": "b"},
    ]
    r = report.lr_sensitivity(points)
    L0 = (4.0 + 4.2 + 4.1 + 3.9 + 4.0 + 4.0 + 3.8 + 4.2 + 4.0) / 9
    assert r["L0"] == pytest.approx(L0) and r["best"] == 1.8  # of the runs that did not diverge
    # no-qk: its curve min(2.0, L0), min(4.5, L0) = L0, L0 (diverged); L* = 2.0 its lowest point.
    no_qk = r["variants"]["no-qk"]
    assert no_qk["L_star"] == 2.0
    assert no_qk["sensitivity"] == pytest.approx((0 + (L0 - 2.0) + (L0 - 2.0)) / 3)
    # qk: its curve 2.1, (1.8 + 2.2) / 2 = 2.0, 3.0, L0 (diverged); L* = 2.0.
    qk = r["variants"]["qk"]
    assert qk["L_star"] == pytest.approx(2.0)
    sensitivity = (0.1 + 0 + 1.0 + (L0 - 2.0)) / 4
    assert qk["sensitivity"] == pytest.approx(sensitivity) and qk["lrs"] == [1e-3, 1e-2, 1e-1, 1.0]
    # Every run diverged: no L*, no sensitivity (not a perfect 0).
    assert r["variants"]["bad"]["L_star"] is None and r["variants"]["bad"]["sensitivity"] is None
    svg = report.sensitivity_svg(r, "lr")
    assert svg.count('<g id="curve-') == 3  # the figure's series: <g id="curve-N">, "band-N"
    assert f"LR sensitivity {sensitivity:.4f} (L* 2.0000)" in svg
    assert "bad: every run diverged (no LR sensitivity)" in svg
    # The seeds of qk at 1e-2 span a band; no-qk has one seed per learning rate.
    assert qk["seeds"] == [1, 2, 1, 1] and svg.count('<g id="band-') == 1
    assert qk["low"][1] == 1.8 and qk["high"][1] == 2.2
    # The diverged runs are drawn as crosses at L0, and say so.
    assert "d: diverged at step 30" in svg and "b: diverged at step 5" in svg
    assert "x: a diverged run" in svg


def _stats(step: int, logit: float, log_z: float) -> dict:
    return {"kind": "stats", "step": step, "attn_logit_max": [logit, logit / 2], "log_z": log_z}


def test_the_sweep_table_and_its_diagnostics_plot() -> None:
    points = [
        {"run": f"r{i}", "variant": v, "lr": lr, "final": 2.0, "initial": 4.0,
         "diverged": 7 if lr == 1.0 and v == "a" else None, "max_attn_logit": None,
         "final_log_z": None,
         "records": [_stats(0, 1.0, 0.5), _stats(5, 10 * lr * (2 if v == "a" else 1), 3.0),
                     _stats(7, math.nan, math.nan)]}
        for i, (v, lr) in enumerate([(v, lr) for v in "ab" for lr in (1e-2, 0.1, 1.0)])
    ]  # fmt: skip
    svg = report.sweep_stats_svg(points, "t")
    # The run that diverged is left out. Left panel: the 2 highest learning rates x 2 variants
    # but that run; right panel: the other 5 runs' log Z.
    assert svg.count('<g id="curve-') == 3 + 5 and "every run but the 1 that diverged" in svg
    assert "learning rates 1, 0.1" in svg and "nan" not in svg
    rows = report.points_csv(points).splitlines()
    assert rows[0] == ",".join(report.TABLE_COLUMNS) and len(rows) == 7
    assert rows[3].startswith("r2,a,1.0,2.0,4.0,7,,")
    # Runs without diagnostics: the figure says what to set.
    empty = report.sweep_stats_svg([dict(p, records=[]) for p in points], "t")
    assert "logging.stats_interval &gt; 0" in empty and '<g id="curve-' not in empty


def test_a_sweep_file_names_what_is_wrong(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config/sweeps").mkdir(parents=True)
    (tmp_path / "config/base.toml").write_text("")
    path = tmp_path / "config/sweeps/s.toml"
    d = Path("config/sweeps")

    def refused(text: str, match: str) -> None:
        path.write_text(text)
        with pytest.raises(config.ConfigError, match=match):
            sweep.load("s", d)

    refused('base = "nope"\n[axes]\n"train.learning_rate" = [1e-3]\n',
            r"s.toml: base = 'nope': expected a run")  # fmt: skip
    # A path to another TOML file of config/ was taken as the base run's file.
    refused('base = "sweeps/s"\n[axes]\n"train.learning_rate" = [1e-3]\n',
            r"s.toml: base = 'sweeps/s': expected a run")  # fmt: skip
    with pytest.raises(config.ConfigError, match=r"sweep name '../sweeps/s': expected letters"):
        sweep.load("../sweeps/s", d)
    refused('base = "base"\n[axes]\n"train.learnin_rate" = [1e-3]\n',
            r"axes.'train.learnin_rate': not a config key")  # fmt: skip
    refused('base = "base"\n[axes]\n"train.learning_rate" = [1e-3, 1e-3]\n', r"distinct values")
    refused('base = "base"\n[axes]\n"model.n_embd,model.n_layer" = [[64, 2], [128]]\n',
            r"\[128\]: expected a list of 2 values")  # fmt: skip
    refused('base = "base"\n[axes]\n"model.n_embd,model.n_layr" = [[64, 2]]\n',
            r"'model.n_layr' is not a config key")  # fmt: skip
    refused('base = "base"\n[axes]\n"model.n_embd" = [64]\n"model.n_embd,model.n_layer" = '
            "[[64, 2]]\n", r"model.n_embd: in more than one axis")  # fmt: skip
    with pytest.raises(config.ConfigError, match="no file"):
        sweep.load("missing", d)
    path.write_text('base = "base"\n[axes]\n"train.learning_rate" = [1e-3, 0.1]\n'
                    '"train.seed" = [1, 2]\n')  # fmt: skip
    runs = sweep.expand(sweep.load("s", d))
    # Every point stops at a divergence (a result), unless an axis says otherwise.
    assert runs["s.learning_rate-0.1.seed-2"] == [
        "train.learning_rate=0.1", "train.seed=2", 'train.on_divergence="stop"'
    ]  # fmt: skip
    assert len(runs) == 4
    # A grouped axis: its keys vary together (a model's width and depth).
    path.write_text('base = "base"\n[axes]\n"train.learning_rate" = [1e-3, 0.1]\n'
                    '"model.n_embd,model.n_layer" = [[64, 2], [128, 4]]\n')  # fmt: skip
    s = sweep.load("s", d)
    runs = sweep.expand(s)
    assert sweep.keys(s) == ["train.learning_rate", "model.n_embd", "model.n_layer"]
    assert runs["s.learning_rate-0.001.n_embd-128.n_layer-4"][:3] == [
        "train.learning_rate=0.001", "model.n_embd=128", "model.n_layer=4"
    ]  # fmt: skip
    assert len(runs) == 4


def test_a_sweeps_cost_counts_every_points_tokens_and_the_shipped_gpu_sweep_says_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from nanogptx import model

    monkeypatch.chdir(tmp_path)
    (tmp_path / "config/sweeps").mkdir(parents=True)
    (tmp_path / "config/b.toml").write_text(
        '[tokenizer]\nname = "gpt2"\n[model]\nn_layer = 2\nn_head = 2\nn_embd = 64\n'
        "block_size = 32\n[train]\nbatch_size = 4\ntotal_batch_tokens = 256\neval_interval = 50\n"
        "eval_iters = 3\nlr_decay_iters = 200\nwarmup_iters = 10\n"
    )
    (tmp_path / "config/sweeps/c.toml").write_text(
        'base = "b"\n[axes]\n"train.max_iters" = [100, 200]\n"model.n_embd" = [64, 128]\n'
    )
    points = sweep.cost(sweep.load("c", Path("config/sweeps")))
    small, big = points["c.max_iters-100.n_embd-64"], points["c.max_iters-200.n_embd-64"]
    # 2 micro-batches of 4 x 32 per step; evaluations: 3 batches of each split, at 0, 50, 100.
    assert small["tokens"] == 100 * 256 and big["tokens"] == 2 * small["tokens"]
    cfg = config.load("config/b.toml")
    per_token = model.flops_per_token(cfg.model, small["params"])
    assert small["flops"] == pytest.approx(per_token * (100 * 256 + 3 * 2 * 3 * 128 / 3))
    # Tied GPT-2 embedding (50,257 rows) + 2 blocks of 12 D^2 weights and their biases/norms.
    assert 50257 * 64 + 2 * 12 * 64**2 < small["params"] < 50257 * 64 + 2 * 13 * 64**2
    assert points["c.max_iters-100.n_embd-128"]["params"] > 1.9 * small["params"]
    # The shipped GPU sweep: what its file says it costs is what the command prints.
    monkeypatch.chdir(Path(__file__).parents[1])
    sweep.main(["lr-sensitivity-gpu", "--cost"])
    total = capsys.readouterr().out.splitlines()[-1]
    assert total.startswith("54 points, 1.14e+19 FLOPs: 10.7 device hours at 30%"), total
    assert (
        "10.7 GPU\n# hours on H100s at 30% MFU"
        in Path("config/sweeps/lr-sensitivity-gpu.toml").read_text()
    )
    page = " ".join(Path("docs/sweeps.md").read_text().split())  # its lines joined
    assert "--cost`: 1.14e19 FLOPs, 10.7 H100 hours at 30% MFU" in page  # was 10.6


def _sweep(tmp_path: Path, axes: str) -> dict[str, list[str]]:
    """The points of a sweep of config/base.toml (empty) with these [axes] lines."""
    (tmp_path / "config/sweeps").mkdir(parents=True, exist_ok=True)
    (tmp_path / "config/base.toml").write_text("")
    (tmp_path / "config/sweeps/s.toml").write_text(f'base = "base"\n[axes]\n{axes}')
    return sweep.expand(sweep.load("s", tmp_path / "config/sweeps"))


def test_every_point_of_the_product_has_its_own_name_or_the_sweep_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    def settings(runs: dict[str, list[str]], key: str) -> list:
        section, field = key.split(".")
        return [getattr(getattr(config.load(None, o), section), field) for o in runs.values()]

    # Values that read back apart keep apart, however close: floats as short as round-trips,
    # strings with characters a run name cannot hold as those and a hash of the exact value.
    runs = _sweep(tmp_path, '"train.learning_rate" = [1e-3, 1.0000001e-3, 1e16]\n')
    assert list(runs) == ["s.learning_rate-0.001", "s.learning_rate-0.0010000001",
                          "s.learning_rate-1e16"]  # fmt: skip
    assert settings(runs, "train.learning_rate") == [1e-3, 1.0000001e-3, 1e16]
    starts = ["a b", "a_b", "ROMEO 😀", "ROMEO 😃", "", "e\u0301", 'say "hi"\\n\n']
    runs = _sweep(tmp_path, f'"sample.start" = [{", ".join(map(config._toml_value, starts))}]\n')
    assert len(runs) == len(starts) and "s.start-a_b" in runs
    assert len({name.casefold() for name in runs}) == len(starts)
    assert settings(runs, "sample.start") == starts  # character for character
    # Values that make one point, or names that differ only in case, are refused by name.
    with pytest.raises(config.ConfigError, match=r"1 and 1.0 are the same value of "
                       r"train.learning_rate"):  # fmt: skip
        _sweep(tmp_path, '"train.learning_rate" = [1, 1.0]\n')
    with pytest.raises(config.ConfigError, match=r"'s.start-romeo'.*sample.start = 'Romeo' and "
                       r"'romeo'"):  # fmt: skip
        _sweep(tmp_path, '"sample.start" = ["Romeo", "romeo"]\n')
    two = '"sample.start" = ["x.wandb_run_name-y", "x"]\n"logging.wandb_run_name" = ["z", "y.wandb_run_name-z"]\n'  # noqa: E501
    with pytest.raises(config.ConfigError, match=r"two points would be one run 's.start-x."
                       r"wandb_run_name-y.wandb_run_name-z'"):  # fmt: skip
        _sweep(tmp_path, two)
    with pytest.raises(config.ConfigError, match=r"axes.train.seed: expected int, got str"):
        _sweep(tmp_path, '"train.seed" = [1, "2"]\n')


def test_a_long_point_name_is_cut_and_ends_in_a_hash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    long = ["".join(chr(97 + (i * 7 + j) % 26) for i in range(300)) for j in range(2)]
    names = list(_sweep(tmp_path, f'"logging.wandb_run_name" = {long!r}\n'.replace("'", '"')))
    assert len(set(names)) == 2 and all(len(n) <= sweep.NAME_MAX for n in names)
    assert all(re.fullmatch(r"s\.wandb_run_name-[a-z]+-[0-9a-f]{10}", n) for n in names), names
    # Snakemake takes a name ending in a part repeated 20 times for an endless recursion.
    (name,) = _sweep(tmp_path, '"logging.wandb_run_name" = ["' + "ab" * 30 + '"]\n')
    assert re.fullmatch(r"s\.wandb_run_name-(ab){30}-[0-9a-f]{10}", name), name


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        ("--mfu", "0", "a share of the peak in (0, 1]"),
        ("--mfu", "1.5", "a share of the peak in (0, 1]"),
        ("--mfu", "nan", "a share of the peak in (0, 1]"),
        ("--peak-flops", "-1e15", "a number of FLOP/s > 0"),
        ("--peak-flops", "inf", "a number of FLOP/s > 0"),
        ("--vocab", "0", "an integer > 0"),
        ("--vocab", "6.5", "an integer > 0"),
    ],
)
def test_the_cost_arguments_are_checked_naming_the_flag(
    flag: str, value: str, expected: str, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.chdir(Path(__file__).parents[1])
    with pytest.raises(SystemExit) as e:
        sweep.main(["lr-tiny", "--cost", f"{flag}={value}"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert e.value.code == 2 and f"argument {flag}: '{value}': expected {expected}" in err, err


def test_cost_flags_in_range_whose_product_is_not_are_refused(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each flag in range, their product 0.0: a ZeroDivisionError traceback.
    monkeypatch.chdir(Path(__file__).parents[1])
    with pytest.raises(SystemExit) as e:
        sweep.main(["lr-tiny", "--cost", "--peak-flops=1e-320", "--mfu=1e-10", "--vocab=65"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert e.value.code == 2 and "FLOP/s: expected a rate above 0 that a float holds" in err, err


def test_the_help_asks_for_a_sweep_by_name(capsys: pytest.CaptureFixture[str]) -> None:
    """The argument is NAME (a path is refused); its help said "config/sweeps/NAME.toml"."""
    with pytest.raises(SystemExit):
        sweep.main(["--help"])
    out = capsys.readouterr().out
    assert out.split("\n\n")[0].endswith(" NAME")  # the usage line
    assert re.search(r"\n  NAME +a sweep's name: config/sweeps/NAME.toml\n", out)
    with pytest.raises(SystemExit, match="sweep name 'config/sweeps/lr-tiny.toml': expected"):
        sweep.main(["config/sweeps/lr-tiny.toml"])
