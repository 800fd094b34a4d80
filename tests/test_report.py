"""The report's figures (matplotlib): the same bytes on every run, a size in pixels."""

from __future__ import annotations

import argparse
import json
import re
import xml.dom.minidom
from pathlib import Path

import pytest

from nanogptx import report


def test_a_figure_is_the_same_bytes_every_time_and_states_its_size_in_pixels() -> None:
    # Without a fixed svg.hashsalt its clip-path ids are random, without Date None it carries
    # the time: a rerun of the report would write other bytes.
    runs = {"a $x$ <b>": [{"kind": "train", "step": s, "tokens": 64 * s, "loss": 4.0 - s / 10}
                          for s in range(20)]}  # fmt: skip
    svg = report.curves_svg(runs, "loss")
    assert report.curves_svg(runs, "loss") == svg
    xml.dom.minidom.parseString(svg)  # well-formed, the label escaped
    assert "<title>a $x$ &lt;b&gt; train</title>" in svg  # text, not math
    w, h = re.search(r'<svg [^>]*width="(\d+)" height="(\d+)" viewBox="0 0 \1 \2" '
                     r'style="max-width:100%;height:auto"', svg).groups()  # fmt: skip
    assert int(w) >= 900 and int(h) == report.H


def test_a_run_whose_losses_are_all_nan_says_so_instead_of_a_blank_figure() -> None:
    """A run that diverged at once logs NaN losses: its panels were drawn blank, no message."""
    nan = float("nan")
    runs = {"diverged": [{"kind": "train", "step": s, "tokens": 64 * s, "loss": nan}
                         for s in range(3)] + [{"kind": "eval", "step": 2, "tokens": 128,
                                                "val_loss": float("inf")}]}  # fmt: skip
    svg = report.curves_svg(runs, "loss")
    assert svg.count(">loss against step: no finite values (NaN or inf)<") == 1
    assert svg.count(">loss against tokens: no finite values (NaN or inf)<") == 1


def test_a_series_of_one_point_is_drawn_as_a_dot() -> None:
    """A line through one point draws nothing: a run with one evaluation, a sweep's variant at
    one learning rate showed axes and a key but no mark."""
    runs = {"a": [{"kind": "train", "step": 1, "tokens": 10, "loss": 3.0},
                  {"kind": "eval", "step": 1, "tokens": 10, "val_loss": 2.9}]}  # fmt: skip
    svg = report.curves_svg(runs, "loss")
    for i in range(4):  # train and val, against steps and against tokens
        group = svg.split(f'<g id="curve-{i}">')[1].split("</g>")[0]
        assert "<use xlink:href=" in group, group
    two = {"a": [*runs["a"], {"kind": "train", "step": 2, "tokens": 20, "loss": 2.0}]}
    group = report.curves_svg(two, "loss").split('<g id="curve-0">')[1].split("</g>")[0]
    assert "<use" not in group  # a line of two points: no dots


def test_a_malformed_metrics_record_names_its_file_line_and_key_and_a_bug_shows_its_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A record without "step" printed only `error: 'step'`: main caught every KeyError."""
    metrics = tmp_path / "metrics.jsonl"
    train = {"kind": "train", "step": 0, "tokens": 8, "loss": 4.0}
    metrics.write_text(f"{json.dumps(train)}\n{json.dumps({'kind': 'eval', 'val_loss': 3.9})}\n")
    argv = ["curves", "--out", str(tmp_path / "loss.svg"), f"a={metrics}"]
    with pytest.raises(SystemExit) as exit:
        report.main(argv)
    assert exit.value.code == 1 and not (tmp_path / "loss.svg").exists()
    assert f"error: {metrics}:2: no 'step' in this eval record\n" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a missing file: named, no traceback
        report.main([*argv[:3], f"a={tmp_path / 'gone.jsonl'}"])
    assert "gone.jsonl" in capsys.readouterr().err

    def bug(*args: object) -> str:
        raise KeyError("a bug in the code")

    monkeypatch.setattr(report, "curves_svg", bug)
    metrics.write_text(f"{json.dumps(train)}\n")
    with pytest.raises(KeyError, match="a bug in the code"):
        report.main(argv)


def test_every_option_of_every_report_subcommand_says_what_it_is_in_one_line() -> None:
    sub = next(a for a in report._parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, parser in sub.choices.items():
        for action in parser._actions:
            if not isinstance(action, argparse._HelpAction):
                where = f"report {name} {action.option_strings or action.dest}"
                assert action.help and "\n" not in action.help, where


def test_a_sweeps_run_without_an_eval_record_is_an_error_naming_its_metrics(
    tmp_path: Path,
) -> None:
    """It raised StopIteration: the first evaluation's val loss is the run's share of L0."""
    model = tmp_path / "a" / "model"
    model.mkdir(parents=True)
    (model / "config.toml").write_text("")
    (model / "metrics.jsonl").write_text(
        json.dumps({"kind": "train", "step": 0, "tokens": 8, "loss": 4.0}) + "\n"
    )
    with pytest.raises(report.ReportError, match=f"{model / 'metrics.jsonl'}: no eval record"):
        report.sweep_points({"a": tmp_path / "a"}, "train.learning_rate", [])
    with pytest.raises(report.ReportError, match="train.lr: not a setting of run a"):
        report.sweep_points({"a": tmp_path / "a"}, "train.lr", [])
