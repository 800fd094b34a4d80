"""Figures and pages for `snakemake --report`: loss curves as SVG and each run's provenance chain.

    python -m nanogptx.report curves --out loss.svg NAME=results/NAME/model/metrics.jsonl ...
    python -m nanogptx.report chain --out chain.html --run NAME --raw DIR --data DIR --model DIR
        --samples DIR
    python -m nanogptx.report evals --out eval.html NAME=results/NAME/eval/metrics.json ...
    python -m nanogptx.report text --out samples.html --title TITLE results/NAME/samples/samples.txt

Plain SVG and HTML written here: no plotting library needed for a few lines.
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
from typing import Any

from nanogptx import evaltasks, provenance

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]
W, H, PAD = 460, 300, 48  # one panel, in pixels


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl; a line that is not a JSON object raises ValueError
    naming the file and line."""
    records = []
    for i, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as e:
            raise ValueError(f"{path}:{i}: not a JSON record: {e}") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{i}: expected a JSON object")
        records.append(record)
    return records


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About n round tick values covering [lo, hi]."""
    span = hi - lo or abs(hi) or 1.0
    step = 10 ** math.floor(math.log10(span / n))
    step *= next(m for m in (1, 2, 5, 10) if span / (step * m) <= n)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _fmt(v: float) -> str:
    return f"{v / 1e6:g}M" if abs(v) >= 1e6 else f"{v / 1e3:g}k" if abs(v) >= 1e4 else f"{v:g}"


def _svg(width: int, height: int, title: str, parts: list[str]) -> str:
    """A figure: its parts in a viewBox of width x height. Its size in pixels is stated, for
    an <img> that shrinks to fit its content (the Snakemake report's) has none otherwise and
    shows it at 0 x 0; opened alone it still narrows to the window (max-width)."""
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" style="max-width:100%;height:auto" '
        f'font-family="sans-serif" font-size="11"><title>{html.escape(title)}</title>'
        + "".join(parts)
        + "</svg>\n"
    )


def _legend(labels: Sequence[str], x: int) -> list[str]:
    """A color key at x: one line in the i-th color and its label per entry."""
    return [
        f'<line x1="{x}" x2="{x + 30}" y1="{14 + 16 * i}" y2="{14 + 16 * i}" '
        f'stroke="{COLORS[i % len(COLORS)]}" stroke-width="2"/>'
        f'<text x="{x + 36}" y="{18 + 16 * i}">{html.escape(label)}</text>'
        for i, label in enumerate(labels)
    ]


def _panel(
    series: list[tuple[str, str, str, list[tuple[float, float]]]],
    x_label: str,
    x0: int,
    y_label: str = "loss",
    y0: int = 0,
) -> list[str]:
    """One plot at offset (x0, y0); series are (label, color, style, points); style "train"
    draws dashed, "val" solid, "layer<i>" solid with a dash pattern per layer, "marks" a cross
    at each point, "band" a shaded polygon through the points. Points that are not finite are
    left out."""
    series = [(label, color, style, [(x, y) for x, y in pts if _finite(x) and _finite(y)])
              for label, color, style, pts in series]  # fmt: skip
    points = [p for *_, pts in series for p in pts]
    if not points:
        return []
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    (xlo, xhi), (ylo, yhi) = (min(xs), max(xs)), (min(ys), max(ys))
    if xhi == xlo:
        xhi = xlo + 1.0
    if yhi == ylo:
        ylo, yhi = ylo - 0.5, yhi + 0.5

    def sx(x: float) -> float:
        return x0 + PAD + (x - xlo) / ((xhi - xlo) or 1.0) * (W - 1.5 * PAD)

    def sy(y: float) -> float:
        return y0 + H - PAD - (y - ylo) / (yhi - ylo) * (H - 1.6 * PAD)

    out = [
        f'<rect x="{x0 + PAD}" y="{y0 + 0.6 * PAD}" width="{W - 1.5 * PAD}" '
        f'height="{H - 1.6 * PAD}" fill="none" stroke="#999"/>'
    ]
    for t in _ticks(xlo, xhi):
        out.append(
            f'<text x="{sx(t):.1f}" y="{y0 + H - PAD + 16}" text-anchor="middle">{_fmt(t)}</text>'
        )
    for t in _ticks(ylo, yhi):
        out.append(
            f'<line x1="{x0 + PAD}" x2="{x0 + W - PAD / 2}" y1="{sy(t):.1f}" '
            f'y2="{sy(t):.1f}" stroke="#eee"/>'
        )
        out.append(f'<text x="{x0 + PAD - 4}" y="{sy(t) + 4:.1f}" text-anchor="end">{t:g}</text>')
    out.append(
        f'<text x="{x0 + W / 2 + PAD / 4}" y="{y0 + H - 8}" text-anchor="middle">{x_label}</text>'
    )
    ym = y0 + H / 2
    out.append(
        f'<text x="{x0 + 12}" y="{ym}" transform="rotate(-90 {x0 + 12} {ym})" '
        f'text-anchor="middle">{html.escape(y_label)}</text>'
    )
    for label, color, style, pts in series:
        if style == "marks":
            out += [
                f'<path d="M{sx(x) - 5:.1f},{sy(y) - 5:.1f}l10,10m0,-10l-10,10" stroke="{color}" '
                f'stroke-width="2"><title>{html.escape(label)}</title></path>'
                for x, y in pts
            ]
            continue
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        if style == "band":
            out.append(
                f'<polygon points="{path}" fill="{color}" fill-opacity="0.15" '
                f'stroke="none"><title>{html.escape(label)}</title></polygon>'
            )
            continue
        dash = ' stroke-dasharray="4 3" stroke-opacity="0.6"' if style == "train" else ""
        if style.startswith("layer") and int(style[5:]):
            dash = f' stroke-dasharray="{2 * int(style[5:])} 2"'
        out.append(
            f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="1.6"'
            f"{dash}><title>{html.escape(label)}</title></polyline>"
        )
    return out


def curves_svg(runs: dict[str, list[dict[str, Any]]], title: str) -> str:
    """Train (dashed) and validation (solid) loss against steps and against tokens."""
    panels = []
    for x_key, x_label in (("step", "step"), ("tokens", "tokens")):
        series = []
        for i, (name, records) in enumerate(runs.items()):
            color = COLORS[i % len(COLORS)]
            train = [(r[x_key], r["loss"]) for r in records if r.get("kind") == "train"]
            val = [(r[x_key], r["val_loss"]) for r in records if r.get("kind") == "eval"]
            series += [(f"{name} train", color, "train", train)] if train else []
            series += [(f"{name} val", color, "val", val)] if val else []
        panels.append((series, x_label))
    if not any(s for s, _ in panels):
        raise ValueError(f"no loss records in the metrics of {', '.join(runs)}")
    body = []
    for i, (series, x_label) in enumerate(panels):
        body += _panel(series, x_label, i * W)
    diagnostics = stats_panels(runs)
    for i, (series, y_label) in enumerate(diagnostics):  # rows of three under the losses
        body += _panel(series, "step", i % 3 * W, y_label, (1 + i // 3) * H)
    legend = _legend(list(runs), 2 * W + 10)
    n = len(runs)
    legend.append(f'<text x="{2 * W + 10}" y="{30 + 16 * n}">solid: val, dashed: train</text>')
    if diagnostics:
        legend.append(
            f'<text x="{2 * W + 10}" y="{46 + 16 * n}">below: diagnostics per layer '
            "(longer dashes: later layers)</text>"
        )
    columns = max(2, min(3, len(diagnostics)))
    width = columns * W + 60 + 7 * max(26, *(len(name) for name in runs))
    height = (1 + -(-len(diagnostics) // 3)) * H
    return _svg(width, height, title, body + legend)


def stats_panels(
    runs: dict[str, list[dict[str, Any]]],
) -> list[tuple[list[tuple[str, str, str, list[tuple[float, float]]]], str]]:
    """The diagnostics (records of kind "stats") against step: the largest attention logit
    per layer, the mean log Z of the output, and per layer, averaged over the layer's
    matrices, the RMS of the parameters, of their gradients, and the relative update size
    (update RMS over parameter RMS). Empty without such records."""

    def rms(r: dict[str, Any], kind: str, k: str, i: int) -> float:  # nan: not finite
        return r[kind][k][i] if _finite(r[kind][k][i]) else math.nan

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
        color = COLORS[i % len(COLORS)]
        stats = [r for r in records if r.get("kind") == "stats"]
        if not stats:
            continue
        log_z.append((f"{name} log Z", color, "val", [(r["step"], r["log_z"]) for r in stats]))
        names = [k for k in stats[0]["param_rms"] if k.startswith("blocks.") and k.endswith("_w")]
        for layer in range(len(stats[0]["attn_logit_max"])):
            label = f"{name} layer {layer}"
            logits.append((label, color, f"layer{layer}",
                           [(r["step"], r["attn_logit_max"][layer]) for r in stats]))  # fmt: skip
            for measure, value in measures.items():
                points = [(r["step"], sum(value(r, k, layer) for k in names) / len(names))
                          for r in stats]  # fmt: skip
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
        return p.get("diverged") is None and _finite(p["final"])

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
        out[v] = {"lrs": lrs, "losses": losses, "seeds": [len(by_lr[lr]) for lr in lrs],
                  "low": [min(by_lr[lr]) for lr in lrs], "high": [max(by_lr[lr]) for lr in lrs],
                  "L_star": best,
                  "sensitivity": None if best is None else sum(L - best for L in losses)
                  / len(losses)}  # fmt: skip
    finals = [p["final"] for p in points if ok(p)]
    return {"L0": L0, "best": min(finals) if finals else None, "variants": out, "points": points}


def sensitivity_svg(result: dict[str, Any], title: str) -> str:
    """Final loss (capped at L0) against log10 of the learning rate, one curve per variant (the
    mean over seeds, in a shaded band from their lowest to their highest), its sensitivity in
    the legend."""
    bands = [
        (f"{name}: seeds' range", COLORS[i % len(COLORS)], "band",
         [(math.log10(lr), L) for lr, L in zip(v["lrs"], v["low"], strict=True)]
         + [(math.log10(lr), L) for lr, L in reversed(list(zip(v["lrs"], v["high"],
                                                              strict=True)))])
        for i, (name, v) in enumerate(result["variants"].items()) if v["low"] != v["high"]
    ]  # fmt: skip
    series = [
        (name, COLORS[i % len(COLORS)], "val",
         [(math.log10(lr), L) for lr, L in zip(v["lrs"], v["losses"], strict=True)])
        for i, (name, v) in enumerate(result["variants"].items())
    ]  # fmt: skip
    crosses = [
        (
            f"{p['run']}: diverged at step {p['diverged']}",
            COLORS[i % len(COLORS)],
            "marks",
            [(math.log10(p["lr"]), result["L0"])],
        )
        for i, name in enumerate(result["variants"])
        for p in result["points"]
        if p["variant"] == name and p.get("diverged") is not None
    ]
    body = _panel(
        bands + series + crosses, "log10 learning rate", 0, "final val loss (capped at L0)"
    )

    def key(name: str, v: dict[str, Any]) -> str:
        if v["sensitivity"] is None:
            return f"{name}: every run diverged (no LR sensitivity)"
        return f"{name}: LR sensitivity {v['sensitivity']:.4f} (L* {v['L_star']:.4f})"

    legend = _legend([key(name, v) for name, v in result["variants"].items()], W + 10)
    n = len(result["variants"])
    stated = (f"L0 = {result['L0']:.4f} (at initialisation); L*: the variant's lowest point; "
              "sensitivity: the mean of its curve less L*")  # fmt: skip
    legend.append(f'<text x="{W + 10}" y="{30 + 16 * n}">{stated}</text>')
    if crosses:
        legend.append(f'<text x="{W + 10}" y="{46 + 16 * n}">x: a diverged run (counted as '
                      "L0)</text>")  # fmt: skip
    width = 2 * W + 200
    return _svg(width, H, title, body + legend)


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
    varied = [k for k in axes if k not in (lr_key, "train.seed")
              and len({s[k] for s in settings.values()}) > 1]  # fmt: skip
    for name, root in runs.items():
        variant = ", ".join(f"{k}={settings[name][k]}" for k in varied) or "all"
        records = read_metrics(root / "model" / "metrics.jsonl")
        first = next(r for r in records if r.get("kind") == "eval")
        final = provenance.read_json(root / "eval" / "metrics.json")["val_loss"]["loss"]
        diverged = provenance.read(root / "model").get("summary", {}).get("diverged")
        stats = [r for r in records if r.get("kind") == "stats"]
        logits = [v for r in stats for v in r["attn_logit_max"] if _finite(v)]
        points.append({
            "run": name, "variant": variant, "lr": float(settings[name][lr_key]),
            "final": final if _finite(final) else math.nan, "initial": first["val_loss"],
            "diverged": None if diverged is None else diverged["step"],
            "max_attn_logit": max(logits) if logits else None,
            "final_log_z": stats[-1]["log_z"] if stats else None,
            "records": records,
        })  # fmt: skip
    return points


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
        color = COLORS[variants.index(p["variant"]) % len(COLORS)]
        log_z.append((p["run"], color, "val", [(r["step"], r["log_z"]) for r in stats]))
        if p["lr"] in top:
            largest = [max((v for v in r["attn_logit_max"] if _finite(v) and v > 0), default=None)
                       for r in stats]  # fmt: skip
            pts = [(r["step"], math.log10(v)) for r, v in zip(stats, largest, strict=True) if v]
            logits.append((p["run"], color, f"layer{top.index(p['lr'])}", pts))
    if not any(pts for *_, pts in log_z):  # the figure says why it is empty
        why = ('<text x="10" y="24">No diagnostics in these runs\' metrics: set '
               "logging.stats_interval &gt; 0 in the sweep's base run.</text>")  # fmt: skip
        return _svg(2 * W, 40, title, [why])
    body = _panel(logits, "step", 0, "log10 largest attention logit") + _panel(
        log_z, "step", W, "mean log Z of the output"
    )
    legend = _legend(variants, 2 * W + 10)
    lrs = ", ".join(f"{lr:g}" for lr in top)
    n = len(variants)
    legend.append(f'<text x="{2 * W + 10}" y="{30 + 16 * n}">left: learning rates {lrs} '
                  "(solid: the largest)</text>")  # fmt: skip
    left_out = len(points) - len(kept)
    rest = f" but the {left_out} that diverged" if left_out else ""
    legend.append(f'<text x="{2 * W + 10}" y="{46 + 16 * n}">right: every run{rest}</text>')
    width = 2 * W + 60 + 7 * max(40, *(len(v) for v in variants))
    return _svg(width, H, title, body + legend)


def text_html(text: str, title: str) -> str:
    """A text file (samples, a resolved config) as a page the report shows inline."""
    return (
        "<!doctype html><html><head><meta charset='utf-8'><style>body{font-family:sans-serif}"
        "pre{white-space:pre-wrap;font-size:90%}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><pre>{html.escape(text)}</pre></body></html>\n"
    )


def evals_html(runs: dict[str, dict[str, Any]], title: str) -> str:
    """The eval metrics of each run as one table, runs side by side (rows), with each task's
    method stated under it; each task's columns are its metrics in the registry."""
    tasks = [t for t in evaltasks.names() if any(t in m for m in runs.values())]
    cols = [(t, c.key, c.heading, c.format) for t in tasks for c in evaltasks.get(t).columns()]
    head = "".join(f"<th>{html.escape(h)}</th>" for _, _, h, _ in cols)
    rows = []
    for name, metrics in runs.items():
        cells = []
        for task, key, _, fmt in cols:
            value = metrics.get(task, {}).get(key)
            cells.append(f"<td>{'' if value is None else format(value, fmt)}</td>")
        rows.append(f"<tr><td>{html.escape(name)}</td>{''.join(cells)}</tr>")
    methods = {t: m[t]["method"] for m in runs.values() for t in m if isinstance(m[t], dict)}
    notes = "".join(
        f"<p><b>{html.escape(t)}</b>: {html.escape(str(v))}</p>" for t, v in methods.items()
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><style>body{font-family:sans-serif}"
        "td,th{padding:0 .6em;text-align:right}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><table><tr><th>run</th>{head}</tr>{''.join(rows)}"
        f"</table>{notes}</body></html>\n"
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m nanogptx.report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="what", required=True)
    c = sub.add_parser("curves", help="loss curves of one or more runs as SVG")
    c.add_argument("--out", type=Path, required=True)
    c.add_argument("--title", default="loss")
    c.add_argument("metrics", nargs="+", metavar="NAME=METRICS_JSONL")
    h = sub.add_parser("chain", help="the provenance chain of a run as HTML")
    h.add_argument("--out", type=Path, required=True)
    h.add_argument("--run", required=True)
    for name in ("raw", "data", "model", "samples"):
        h.add_argument(f"--{name}", type=Path, required=True)
    t = sub.add_parser("text", help="a text file (samples, config) as an HTML page")
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--title", default="")
    t.add_argument("file", type=Path)
    v = sub.add_parser("sensitivity", help="a sweep's final loss against learning rate")
    v.add_argument("--out", type=Path, required=True, help="the SVG")
    v.add_argument("--table", type=Path, required=True, help="JSON: every point, L0, L*")
    v.add_argument("--csv", type=Path, help="CSV: every point")
    v.add_argument("--stats", type=Path, help="SVG: attention logits and log Z against step")
    v.add_argument("--lr-key", default="train.learning_rate")
    v.add_argument("--axes", default="", help="the sweep's axes, comma-separated")
    v.add_argument("--title", default="LR sensitivity")
    v.add_argument("runs", nargs="+", metavar="NAME=RESULTS_DIR")
    e = sub.add_parser("evals", help="the eval metrics of one or more runs as an HTML table")
    e.add_argument("--out", type=Path, required=True)
    e.add_argument("--title", default="evaluation")
    e.add_argument("metrics", nargs="+", metavar="NAME=METRICS_JSON")
    args = parser.parse_args(argv)
    try:
        if args.what == "sensitivity":
            runs = {n: Path(p) for n, _, p in (item.partition("=") for item in args.runs)}
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
            text = sensitivity_svg(result, args.title)
        elif args.what == "text":
            text = text_html(args.file.read_text("utf-8", "backslashreplace"), args.title)
        elif args.what == "evals":
            runs = {}
            for item in args.metrics:
                name, _, path = item.partition("=")
                runs[name] = provenance.read_json(path, what="eval metrics")
            text = evals_html(runs, args.title)
        elif args.what == "curves":
            runs = {}
            for item in args.metrics:
                name, _, path = item.partition("=")
                runs[name] = read_metrics(path)
            text = curves_svg(runs, args.title)
        else:
            text = chain_html(args.run, args.raw, args.data, args.model, args.samples)
    except (OSError, ValueError, KeyError) as e:
        parser.exit(1, f"{parser.prog}: error: {e}\n")
    provenance.write_bytes_atomic(args.out, text.encode())


if __name__ == "__main__":
    main()
