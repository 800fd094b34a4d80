"""Sweeps: a sweep file's checks, and the report's LR sensitivity against a hand computation."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from nanogptx import config, report, sweep


def test_lr_sensitivity_matches_a_hand_computation() -> None:
    # Two variants, three learning rates; "no-qk" diverges at the highest one (inf) and is worse
    # than L0 at the next; two seeds of "qk" at 1e-2 are averaged after the cap.
    points = [
        {"variant": "no-qk", "lr": 1e-3, "final": 2.0, "initial": 4.0},
        {"variant": "no-qk", "lr": 1e-2, "final": 4.5, "initial": 4.2},
        {"variant": "no-qk", "lr": 1e-1, "final": math.inf, "initial": 4.1},
        {"variant": "qk", "lr": 1e-3, "final": 2.1, "initial": 3.9},
        {"variant": "qk", "lr": 1e-2, "final": 1.8, "initial": 4.0},
        {"variant": "qk", "lr": 1e-2, "final": 2.2, "initial": 4.0},
        {"variant": "qk", "lr": 1e-1, "final": 3.0, "initial": 3.8},
    ]
    r = report.lr_sensitivity(points)
    L0 = (4.0 + 4.2 + 4.1 + 3.9 + 4.0 + 4.0 + 3.8) / 7  # 4.0
    assert r["L0"] == pytest.approx(L0) and r["L_star"] == 1.8
    # no-qk: min(2.0, L0) - 1.8, min(4.5, L0) - 1.8, L0 - 1.8 (diverged), averaged.
    assert r["variants"]["no-qk"]["sensitivity"] == pytest.approx(
        ((2.0 - 1.8) + (L0 - 1.8) + (L0 - 1.8)) / 3
    )
    # qk: (2.1 - 1.8), ((1.8 + 2.2) / 2 - 1.8), (3.0 - 1.8), averaged.
    assert r["variants"]["qk"]["sensitivity"] == pytest.approx((0.3 + 0.2 + 1.2) / 3)
    assert r["variants"]["qk"]["lrs"] == [1e-3, 1e-2, 1e-1]
    svg = report.sensitivity_svg(r, "lr")
    assert svg.count("<polyline") == 2 and "LR sensitivity 0.5667" in svg


def test_a_sweep_file_names_what_is_wrong(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config/sweeps").mkdir(parents=True)
    (tmp_path / "config/base.toml").write_text("")
    path = tmp_path / "config/sweeps/s.toml"
    d = Path("config/sweeps")
    path.write_text('base = "nope"\n[axes]\n"train.learning_rate" = [1e-3]\n')
    with pytest.raises(config.ConfigError, match=r"s.toml: base = 'nope': expected a run"):
        sweep.load("s", d)
    path.write_text('base = "base"\n[axes]\n"train.learnin_rate" = [1e-3]\n')
    with pytest.raises(config.ConfigError, match=r"axes.'train.learnin_rate': not a config key"):
        sweep.load("s", d)
    path.write_text('base = "base"\n[axes]\n"train.learning_rate" = [1e-3, 1e-3]\n')
    with pytest.raises(config.ConfigError, match=r"distinct values"):
        sweep.load("s", d)
    path.write_text('base = "base"\n[axes]\n"train.learning_rate" = [1e-3, 0.1]\n'
                    '"train.seed" = [1, 2]\n')  # fmt: skip
    runs = sweep.expand(sweep.load("s", d))
    assert runs["s.learning_rate-0.1.seed-2"] == ["train.learning_rate=0.1", "train.seed=2"]
    assert len(runs) == 4
    with pytest.raises(config.ConfigError, match="no file"):
        sweep.load("missing", d)
