"""The report's figures (matplotlib): the same bytes on every run, a size in pixels."""

from __future__ import annotations

import re
import xml.dom.minidom

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
