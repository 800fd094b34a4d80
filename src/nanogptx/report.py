"""The report's figures (matplotlib, as SVG) and pages (HTML): loss curves, a sweep's LR
sensitivity, eval tables, each run's provenance chain. One subcommand each:

    python -m nanogptx.report curves --out loss.svg NAME=results/NAME/model/metrics.jsonl ...
    python -m nanogptx.report {chain,evals,text,sensitivity} --help
"""

from __future__ import annotations

import argparse
import csv
import html
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nanogptx import evaltasks, figures, provenance
from nanogptx.errors import UserError
from nanogptx.figures import H, Series, W

if TYPE_CHECKING:  # matplotlib is imported where a figure is drawn, not with the module
    from matplotlib.figure import Figure


class ReportError(UserError, ValueError):
    """An input of the report that is not what it expects, naming the file (line, key)."""


# The keys the report reads in each kind of metrics.jsonl record (logbook.py, train.py write them).
RECORD_KEYS = {"train": ("step", "tokens", "loss"), "eval": ("step", "tokens", "val_loss"),
               "stats": ("step", "log_z", "attn_logit_max", "param_rms", "grad_rms",
                         "update_rms")}  # fmt: skip


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl; a line that is not a JSON object, or a record without
    a key the report reads (RECORD_KEYS), raises ReportError naming the file and line."""
    records = []
    for i, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as e:
            raise ReportError(f"{path}:{i}: not a JSON record: {e}") from None
        if not isinstance(record, dict):
            raise ReportError(f"{path}:{i}: expected a JSON object")
        for key in RECORD_KEYS.get(record.get("kind"), ()):
            if key not in record:
                raise ReportError(f"{path}:{i}: no {key!r} in this {record['kind']} record")
        records.append(record)
    return records


def curves_svg(runs: dict[str, list[dict[str, Any]]], title: str) -> str:
    return figures.svg(title, lambda: curves_figure(runs))


def curves_figure(runs: dict[str, list[dict[str, Any]]]) -> Figure:
    """Train (dashed) and validation (solid) loss against steps and against tokens; below
    them the diagnostics (stats_panels), in rows of three."""
    panels = []
    for x_key in ("step", "tokens"):
        series = []
        for i, (name, records) in enumerate(runs.items()):
            color = figures.color(i)
            train = [(r[x_key], r["loss"]) for r in records if r.get("kind") == "train"]
            val = [(r[x_key], r["val_loss"]) for r in records if r.get("kind") == "eval"]
            series += [(f"{name} train", color, "train", train)] if train else []
            series += [(f"{name} val", color, "val", val)] if val else []
        panels.append(series)
    if not any(panels):
        raise ReportError(f"no loss records in the metrics of {', '.join(runs)}")
    diagnostics = stats_panels(runs)
    columns, rows = (3 if diagnostics else 2), 1 + -(-len(diagnostics) // 3)
    key_width = 60 + 7 * max(26, *(len(name) for name in runs))
    fig = figures.figure(2 * W + (max(W, key_width) if diagnostics else key_width), rows * H)
    grid = fig.subplots(rows, columns, squeeze=False)
    for ax, series, x_label in zip(grid[0], panels, ("step", "tokens"), strict=False):
        figures.panel(ax, series, x_label)
    for ax, (series, y_label) in zip(grid[1:].flat, diagnostics, strict=False):
        figures.panel(ax, series, "step", y_label)
    for ax in grid.flat[columns + len(diagnostics) :]:
        ax.set_axis_off()
    keys = [(name, figures.color(i)) for i, name in enumerate(runs)]
    keys.append(("solid: val, dashed: train", None))
    if diagnostics:
        keys.append(("below: diagnostics per layer (longer dashes: later layers)", None))
        grid[0][2].set_axis_off()
        figures.legend(grid[0][2], keys, loc="upper left")
    else:
        figures.legend(fig, keys, loc="outside right upper")
    return fig


def stats_panels(
    runs: dict[str, list[dict[str, Any]]],
) -> list[tuple[list[Series], str]]:
    """The diagnostics (records of kind "stats") against step: the largest attention logit
    per layer, the mean log Z of the output, and per layer, averaged over the layer's
    matrices, the RMS of the parameters, of their gradients, and the relative update size
    (update RMS over parameter RMS). Empty without such records."""

    def rms(r: dict[str, Any], kind: str, k: str, i: int) -> float:  # nan: not finite
        return r[kind][k][i] if figures.finite(r[kind][k][i]) else math.nan

    def ratio(r: dict[str, Any], k: str, i: int) -> float:
        u, p = rms(r, "update_rms", k, i), rms(r, "param_rms", k, i)
        return u / p if p else math.nan

    measures = {
        "parameter RMS": lambda r, k, i: rms(r, "param_rms", k, i),
        "gradient RMS": lambda r, k, i: rms(r, "grad_rms", k, i),
        "update RMS / parameter RMS": ratio,
    }
    logits, log_z = [], []
    per_layer: dict[str, list] = {label: [] for label in measures}
    for i, (name, records) in enumerate(runs.items()):
        color = figures.color(i)
        stats = [r for r in records if r.get("kind") == "stats"]
        if not stats:
            continue
        log_z.append((f"{name} log Z", color, "val", [(r["step"], r["log_z"]) for r in stats]))
        names = [k for k in stats[0]["param_rms"] if k.startswith("blocks.") and k.endswith("_w")]
        for layer in range(len(stats[0]["attn_logit_max"])):
            label = f"{name} layer {layer}"
            logits.append(
                (
                    label,
                    color,
                    f"layer{layer}",
                    [(r["step"], r["attn_logit_max"][layer]) for r in stats],
                )
            )
            for measure, value in measures.items():
                points = [
                    (r["step"], sum(value(r, k, layer) for k in names) / len(names)) for r in stats
                ]
                per_layer[measure].append((label, color, f"layer{layer}", points))
    if not log_z:
        return []
    return [
        (logits, "largest attention logit"),
        (log_z, "mean log Z"),
        *((series, measure) for measure, series in per_layer.items()),
    ]


def _files_table(entries: list[dict[str, Any]], root: Path | None = None) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(Path(e['path']).name)}</td><td>{e.get('bytes', '')}</td>"
        f"<td><code>{e['sha256']}</code></td><td>{html.escape(str(e.get('check', '')))}</td></tr>"
        for e in entries
    )
    return f"<table><tr><th>file</th><th>bytes</th><th>sha256</th><th>check</th></tr>{rows}</table>"


def chain_html(run: str, raw: Path, data: Path, model: Path, samples: Path) -> str:
    """The provenance chain of a run: raw files -> shards -> model -> samples, with configs."""
    stages = [
        ("download", raw, "raw files, checked against the registry or the lock"),
        ("prepare", data, "token shards, hashed into manifest.json"),
        ("train", model, "the trained model"),
        ("sample", samples, "the samples"),
    ]
    parts = [f"<h1>Provenance of run {html.escape(run)}</h1>"]
    for stage, directory, what in stages:
        rec = provenance.read(directory)
        git = rec.get("git") or {}
        parts.append(
            f"<h2>{stage}: {what}</h2><p>{html.escape(str(directory))}; code "
            f"<code>{git.get('commit')}</code>{' (dirty)' if git.get('dirty') else ''}; "
            f"{rec.get('started')} to {rec.get('finished')} on {html.escape(rec.get('host', ''))}"
            "</p>"
        )
        if rec.get("inputs"):
            parts.append("<h3>inputs</h3>" + _files_table(rec["inputs"]))
        parts.append("<h3>outputs</h3>" + _files_table(rec["outputs"]))
        parts.append(
            "<h3>config</h3><pre>" + html.escape(json.dumps(rec.get("config"), indent=2)) + "</pre>"
        )
    resolved = model / "config.toml"
    if resolved.exists():
        parts.append(
            "<h2>resolved config of the run</h2><pre>"
            + html.escape(resolved.read_text("utf-8"))
            + "</pre>"
        )
    style = (
        "<style>body{font-family:sans-serif;max-width:70em}td,th{padding:0 .6em;"
        "text-align:left}code{font-size:90%}</style>"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'>{style}</head><body>"
        + "".join(parts)
        + "</body></html>\n"
    )


def lr_sensitivity(points: list[dict[str, Any]]) -> dict[str, Any]:
    """Wortsman et al. (2023)'s LR sensitivity of each variant: the mean over its learning rates
    of min(L(lr), L0) - L*, with L0 the loss at initialisation (the mean of the runs' first
    evaluation) and L* the variant's best, the lowest point of its curve. points: {"variant",
    "lr", "final", "initial"} per run, optionally "diverged" (its step, or None); seeds of a
    variant and learning rate are averaged after the cap; a diverged run, or a final loss that
    is not finite, counts as L0. A variant every run of which diverged has no L* and no
    sensitivity (None): it never trained."""
    L0 = sum(p["initial"] for p in points) / len(points)

    def ok(p: dict[str, Any]) -> bool:
        return p.get("diverged") is None and figures.finite(p["final"])

    variants: dict[str, dict[float, list[float]]] = {}
    for p in points:
        capped = min(p["final"], L0) if ok(p) else L0
        variants.setdefault(p["variant"], {}).setdefault(p["lr"], []).append(capped)
    trained = {p["variant"] for p in points if ok(p)}
    out = {}
    for v, by_lr in variants.items():
        lrs = sorted(by_lr)
        losses = [sum(by_lr[lr]) / len(by_lr[lr]) for lr in lrs]
        best = min(losses) if v in trained else None
        out[v] = {
            "lrs": lrs,
            "losses": losses,
            "seeds": [len(by_lr[lr]) for lr in lrs],
            "low": [min(by_lr[lr]) for lr in lrs],
            "high": [max(by_lr[lr]) for lr in lrs],
            "L_star": best,
            "sensitivity": None if best is None else sum(L - best for L in losses) / len(losses),
        }
    finals = [p["final"] for p in points if ok(p)]
    return {"L0": L0, "best": min(finals) if finals else None, "variants": out, "points": points}


def sensitivity_svg(result: dict[str, Any], title: str) -> str:
    return figures.svg(title, lambda: sensitivity_figure(result))


def sensitivity_figure(result: dict[str, Any]) -> Figure:
    """Final loss (capped at L0) against log10 of the learning rate, one curve per variant (the
    mean over seeds, in a shaded band from their lowest to their highest), its sensitivity in
    the legend."""

    def at(lrs: list[float], losses: list[float]) -> list[tuple[float, float]]:
        return [(math.log10(lr), L) for lr, L in zip(lrs, losses, strict=True)]

    variants = result["variants"]
    bands = [
        (
            f"{name}: seeds' range",
            figures.color(i),
            "band",
            at(v["lrs"], v["low"]) + at(v["lrs"], v["high"])[::-1],
        )
        for i, (name, v) in enumerate(variants.items())
        if v["low"] != v["high"]
    ]
    series = [
        (name, figures.color(i), "val", at(v["lrs"], v["losses"]))
        for i, (name, v) in enumerate(variants.items())
    ]
    crosses = [
        (
            f"{p['run']}: diverged at step {p['diverged']}",
            figures.color(i),
            "marks",
            at([p["lr"]], [result["L0"]]),
        )
        for i, name in enumerate(variants)
        for p in result["points"]
        if p["variant"] == name and p.get("diverged") is not None
    ]
    fig = figures.figure(2 * W + 200, H)
    axes = fig.subplots()
    figures.panel(
        axes, bands + series + crosses, "log10 learning rate", "final val loss (capped at L0)"
    )

    def key(name: str, v: dict[str, Any]) -> str:
        if v["sensitivity"] is None:
            return f"{name}: every run diverged (no LR sensitivity)"
        return f"{name}: LR sensitivity {v['sensitivity']:.4f} (L* {v['L_star']:.4f})"

    keys = [(key(name, v), figures.color(i)) for i, (name, v) in enumerate(variants.items())]
    notes = [
        f"L0 = {result['L0']:.4f} (at initialisation); L*: the variant's lowest point; "
        "sensitivity: the mean of its curve less L*"
    ]
    notes += ["x: a diverged run (counted as L0)"] if crosses else []
    figures.legend(fig, keys + [(note, None) for note in notes], loc="outside right upper")
    return fig


def sweep_points(runs: dict[str, Path], lr_key: str, axes: list[str]) -> list[dict[str, Any]]:
    """Each run's point: its learning rate, its variant (the values of the other axes that
    vary, but the seed's: seeds of a variant are averaged), its final
    loss (the eval stage's whole-split val loss), its first evaluation's val loss, the step it
    diverged at (None: it did not), and its diagnostics' extremes (the largest attention logit
    of any layer over the run, the last mean log Z; None without diagnostics). "records" holds
    its metrics.jsonl records (not written to the table)."""
    from nanogptx import config

    def run_settings(root: Path) -> dict[str, str]:
        cfg = config.load(root / "model" / "config.toml", registry=False)
        return dict(s.split("=", 1) for s in config.settings(cfg, config.SECTIONS))

    points = []
    settings = {name: run_settings(root) for name, root in runs.items()}
    missing = [(name, k) for name in runs for k in (lr_key, *axes) if k not in settings[name]]
    if missing:
        name, k = missing[0]
        where = runs[name] / "model" / "config.toml"
        raise ReportError(f"{k}: not a setting of run {name} ({where}); expected section.key")
    varied = [
        k
        for k in axes
        if k not in (lr_key, "train.seed") and len({s[k] for s in settings.values()}) > 1
    ]
    for name, root in runs.items():
        variant = ", ".join(f"{k}={settings[name][k]}" for k in varied) or "all"
        records = read_metrics(root / "model" / "metrics.jsonl")
        first = _first_eval(records, root / "model" / "metrics.jsonl")
        final = _final_loss(root / "eval" / "metrics.json")
        diverged = provenance.read(root / "model").get("summary", {}).get("diverged")
        stats = [r for r in records if r.get("kind") == "stats"]
        logits = [v for r in stats for v in r["attn_logit_max"] if figures.finite(v)]
        points.append(
            {
                "run": name,
                "variant": variant,
                "lr": float(settings[name][lr_key]),
                "final": final if figures.finite(final) else math.nan,
                "initial": first["val_loss"],
                "diverged": None if diverged is None else diverged["step"],
                "max_attn_logit": max(logits) if logits else None,
                "final_log_z": stats[-1]["log_z"] if stats else None,
                "records": records,
            }
        )
    return points


def _first_eval(records: list[dict[str, Any]], path: Path) -> dict[str, Any]:
    """The run's first evaluation (its val loss at initialisation is the run's share of L0)."""
    if (first := next((r for r in records if r.get("kind") == "eval"), None)) is None:
        raise ReportError(f"{path}: no eval record (the LR sensitivity needs the first one's)")
    return first


def _final_loss(path: Path) -> Any:
    """The eval stage's whole-split val loss of a run (its metrics.json's val_loss.loss)."""
    metrics = provenance.read_json(path, ReportError, "eval metrics")
    try:
        return metrics["val_loss"]["loss"]
    except (KeyError, TypeError):  # not an object, or eval.tasks without val_loss
        raise ReportError(f"eval metrics {path}: no val_loss.loss") from None


TABLE_COLUMNS = ("run", "variant", "lr", "final", "initial", "diverged", "max_attn_logit",
                 "final_log_z")  # fmt: skip


def points_csv(points: list[dict[str, Any]]) -> str:
    """The sweep's points as CSV (empty cells: none, or not a number), one row per run."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(TABLE_COLUMNS)
    for p in points:
        w.writerow(["" if p.get(k) is None or p[k] != p[k] else p[k] for k in TABLE_COLUMNS])
    return buf.getvalue()


def sweep_stats_svg(points: list[dict[str, Any]], title: str, high: int = 2) -> str:
    return figures.svg(title, lambda: sweep_stats_figure(points, high))


def sweep_stats_figure(points: list[dict[str, Any]], high: int = 2) -> Figure:
    """Wortsman et al.'s two diagnostics against step, one color per variant, of the runs that
    did not diverge (a diverged run's blown-up values would flatten the others; all of them
    where every run diverged): log10 of the largest attention logit (over layers) at the `high`
    largest of their learning rates (solid: the largest, then longer dashes), and every such
    run's mean output log Z."""
    variants = list(dict.fromkeys(p["variant"] for p in points))
    kept = [p for p in points if p.get("diverged") is None] or points
    top = sorted({p["lr"] for p in kept}, reverse=True)[:high]
    logits, log_z = [], []
    for p in kept:
        stats = [r for r in p["records"] if r.get("kind") == "stats"]
        color = figures.color(variants.index(p["variant"]))
        log_z.append((p["run"], color, "val", [(r["step"], r["log_z"]) for r in stats]))
        if p["lr"] in top:
            largest = [
                max((v for v in r["attn_logit_max"] if figures.finite(v) and v > 0), default=None)
                for r in stats
            ]
            pts = [(r["step"], math.log10(v)) for r, v in zip(stats, largest, strict=True) if v]
            logits.append((p["run"], color, f"layer{top.index(p['lr'])}", pts))
    if not any(pts for *_, pts in log_z):  # the figure says why it is empty
        fig = figures.figure(2 * W, 40)
        fig.text(
            0.01,
            0.5,
            "No diagnostics in these runs' metrics: set "
            "logging.stats_interval > 0 in the sweep's base run.",
            va="center",
        )
        return fig
    fig = figures.figure(2 * W + 60 + 7 * max(40, *(len(v) for v in variants)), H)
    left, right = fig.subplots(1, 2)
    figures.panel(left, logits, "step", "log10 largest attention logit")
    figures.panel(right, log_z, "step", "mean log Z of the output")
    keys: list[tuple[str, str | None]] = [(v, figures.color(i)) for i, v in enumerate(variants)]
    lrs = ", ".join(f"{lr:g}" for lr in top)
    keys.append((f"left: learning rates {lrs} (solid: the largest)", None))
    left_out = len(points) - len(kept)
    keys.append(
        (f"right: every run{f' but the {left_out} that diverged' if left_out else ''}", None)
    )
    figures.legend(fig, keys, loc="outside right upper")
    return fig


def text_html(text: str, title: str) -> str:
    """A text file (samples, a resolved config) as a page the report shows inline."""
    return (
        "<!doctype html><html><head><meta charset='utf-8'><style>body{font-family:sans-serif}"
        "pre{white-space:pre-wrap;font-size:90%}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><pre>{html.escape(text)}</pre></body></html>\n"
    )


def evals_html(runs: dict[str, dict[str, Any]], title: str) -> str:
    """The eval metrics of each run as one table, runs side by side (rows), with each task's
    method stated under it; each task's columns are its metrics in the registry. A group's
    tasks (CORE's 22) have a table of their own (core_table)."""
    grouped = {t for g in _groups(runs) for t in [g, *evaltasks.get(g).options["tasks"]]}
    tasks = [
        t for t in evaltasks.names() if t not in grouped and any(t in m for m in runs.values())
    ]
    cols = [(t, c.key, c.heading, c.format) for t in tasks for c in evaltasks.get(t).columns()]
    head = "".join(f"<th>{html.escape(h)}</th>" for _, _, h, _ in cols)
    rows = []
    for name, metrics in runs.items():
        cells = []
        for task, key, _, fmt in cols:
            value = metrics.get(task, {}).get(key)
            cells.append(f"<td>{'' if value is None else format(value, fmt)}</td>")
        rows.append(f"<tr><td>{html.escape(name)}</td>{''.join(cells)}</tr>")
    methods = {
        t: m[t]["method"]
        for m in runs.values()
        for t in m
        if isinstance(m[t], dict) and "method" in m[t] and t not in grouped - set(_groups(runs))
    }
    notes = "".join(
        f"<p><b>{html.escape(t)}</b>: {html.escape(str(v))}</p>" for t, v in methods.items()
    )
    table = f"<table><tr><th>run</th>{head}</tr>{''.join(rows)}</table>" if tasks else ""
    cores = "".join(core_table(g, runs) for g in _groups(runs))
    return (
        "<!doctype html><html><head><meta charset='utf-8'><style>body{font-family:sans-serif}"
        "td,th{padding:0 .6em;text-align:right}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>{table}{cores}{notes}</body></html>\n"
    )


def _groups(runs: dict[str, dict[str, Any]]) -> list[str]:
    """The registry's groups (CORE) whose figure some run has."""
    names = [t for t in evaltasks.names() if any(t in m for m in runs.values())]
    return [t for t in names if evaltasks.get(t).kind == "group"]


def core_table(group: str, runs: dict[str, dict[str, Any]]) -> str:
    """A group's tasks as rows (label, shots, random baseline), each run's accuracy and
    centered accuracy as columns side by side; below them the group's figure (CORE, or a cut
    CORE named so) and each run's val loss."""

    def cells(m: dict[str, Any], keys: tuple[str, ...]) -> str:
        return "".join(
            f"<td>{'' if not isinstance(m.get(k), (int, float)) else format(m[k], '.4f')}</td>"
            for k in keys
        )

    g = evaltasks.get(group)
    head = "".join(f"<th>{html.escape(r)} acc</th><th>centered</th>" for r in runs)
    rows = []
    for t in g.options["tasks"]:
        task = evaltasks.get(t)
        o = task.options
        label = f"{task.label} ({o['shots']}-shot, b = {o['baseline']:g}%)"
        row = "".join(cells(m.get(t, {}), ("acc", "centered")) for m in runs.values())
        rows.append(f"<tr><td>{html.escape(label)}</td>{row}</tr>")
    total = []
    for m in runs.values():
        r = m.get(group, {})
        cut = "core_partial" in r
        value = r.get("core_partial" if cut else "core")
        text = "" if value is None else f"{value:.4f}" + (" (cut: not CORE)" if cut else "")
        total.append(f"<td></td><td><b>{text}</b></td>")
    loss = "".join(f"<td></td>{cells(m.get('val_loss', {}), ('loss',))}" for m in runs.values())
    return (
        f"<h2>{html.escape(g.label)}: {html.escape(g.about)}</h2><table><tr><th>task</th>"
        f"{head}</tr>{''.join(rows)}<tr><td><b>{html.escape(g.label)}</b></td>{''.join(total)}"
        f"</tr><tr><td>val loss</td>{loss}</tr></table>"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m nanogptx.report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="what", required=True)
    c = sub.add_parser("curves", help="loss curves of one or more runs as SVG")
    c.add_argument("--out", type=Path, required=True, help="the SVG file to write")
    c.add_argument("--title", default="loss", help="the figure's title")
    c.add_argument("metrics", nargs="+", metavar="NAME=METRICS_JSONL",
                   help="a run's name in the legend and its model/metrics.jsonl")  # fmt: skip
    h = sub.add_parser("chain", help="the provenance chain of a run as HTML")
    h.add_argument("--out", type=Path, required=True, help="the HTML file to write")
    h.add_argument("--run", required=True, help="the run's name, for the page's heading")
    for name in ("raw", "data", "model", "samples"):  # the download's, ..., the sample's
        h.add_argument(f"--{name}", type=Path, required=True, help=f"the {name} directory")
    t = sub.add_parser("text", help="a text file (samples, config) as an HTML page")
    t.add_argument("--out", type=Path, required=True, help="the HTML file to write")
    t.add_argument("--title", default="", help="the page's heading")
    t.add_argument("file", type=Path, help="the text file to show")
    v = sub.add_parser("sensitivity", help="a sweep's final loss against learning rate")
    v.add_argument("--out", type=Path, required=True, help="the SVG")
    v.add_argument("--table", type=Path, required=True, help="JSON: every point, L0, L*")
    v.add_argument("--csv", type=Path, help="CSV: every point")
    v.add_argument("--stats", type=Path, help="SVG: attention logits and log Z against step")
    v.add_argument("--lr-key", default="train.learning_rate", help="the learning rate's key")
    v.add_argument("--axes", default="", help="the sweep's axes, comma-separated")
    v.add_argument("--title", default="LR sensitivity", help="the figure's title")
    v.add_argument("runs", nargs="+", metavar="NAME=RESULTS_DIR",
                   help="a point's run name and its results/RUN directory")  # fmt: skip
    e = sub.add_parser("evals", help="the eval metrics of one or more runs as an HTML table")
    e.add_argument("--out", type=Path, required=True, help="the HTML file to write")
    e.add_argument("--title", default="evaluation", help="the page's heading")
    e.add_argument("metrics", nargs="+", metavar="NAME=METRICS_JSON",
                   help="a run's name in the table and its eval/metrics.json")  # fmt: skip
    return parser


def _pairs(items: list[str]) -> dict[str, str]:
    """NAME=PATH arguments as {name: path}."""
    return {name: path for name, _, path in (item.partition("=") for item in items)}


def sensitivity(args: argparse.Namespace) -> str:
    """Write the sweep's table (and CSV, diagnostics figure); return its sensitivity figure."""
    runs = {name: Path(path) for name, path in _pairs(args.runs).items()}
    points = sweep_points(runs, args.lr_key, [a for a in args.axes.split(",") if a])
    if args.stats:
        svg = sweep_stats_svg(points, f"{args.title}: diagnostics")
        provenance.write_bytes_atomic(args.stats, svg.encode())
    for p in points:
        del p["records"]
    result = lr_sensitivity(points)
    provenance.write_json_atomic(args.table, result)
    if args.csv:
        provenance.write_bytes_atomic(args.csv, points_csv(points).encode())
    return sensitivity_svg(result, args.title)


def main(argv: Sequence[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.what == "sensitivity":
            text = sensitivity(args)
        elif args.what == "text":
            text = text_html(args.file.read_text("utf-8", "backslashreplace"), args.title)
        elif args.what == "evals":
            runs = {
                name: provenance.read_json(path, what="eval metrics")
                for name, path in _pairs(args.metrics).items()
            }
            text = evals_html(runs, args.title)
        elif args.what == "curves":
            text = curves_svg(
                {n: read_metrics(p) for n, p in _pairs(args.metrics).items()}, args.title
            )
        else:
            text = chain_html(args.run, args.raw, args.data, args.model, args.samples)
    except (UserError, OSError) as e:  # a bug in the code shows its traceback
        parser.exit(1, f"{parser.prog}: error: {e}\n")
    provenance.write_bytes_atomic(args.out, text.encode())


if __name__ == "__main__":
    main()
