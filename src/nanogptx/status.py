"""Where every configured run stands: which stages are done, how far its training has come
(from metrics.jsonl, also while it runs) and the checkpoint a rerun would resume from.

    python -m nanogptx.status                           # config/config.yaml's runs
    python -m nanogptx.status --config runs=[a,b]       # the runs as snakemake takes them
    python -m nanogptx.status --config sweep=NAME       # a sweep's points
    python -m nanogptx.status --runs a,b                # the same as --config runs=a,b

Reads files only: it starts nothing and changes nothing, and needs no Snakemake.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import yaml  # Snakemake's own dependency: config/config.yaml is YAML

from nanogptx import checkpoint, config, progress, provenance
from nanogptx import sweep as nsweep


def last_records(metrics: Path) -> dict[str, dict[str, Any]]:
    """The newest record of each kind in a metrics.jsonl (none if it is missing), skipping a
    line still being written, or damaged: status shows where a run stands, whatever it finds."""
    try:
        lines = metrics.read_bytes().decode("utf-8", "replace").splitlines()
    except OSError:
        return {}
    newest = {}
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step", 0), int):
            newest[record.get("kind")] = record
    return newest


def _figure(value: Any) -> str:
    """A loss or an accuracy, 4 decimals; a value that is not a finite number (NaN and inf are
    written to JSON as null) says so."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return f"{value:.4f}" if ok else "not finite"


def run_status(run: str, data: Path, results: Path, base: str = "", overrides=()) -> list[str]:
    """Lines describing one run (a sweep's point: its base run's file and its overrides)."""
    try:
        path = Path("config") / f"{config.check_run_name(base or run)}.toml"
        # The registry is not read: a broken dataset file must not hide where the runs stand.
        cfg = config.load(path, overrides, registry=False)
    except config.ConfigError as e:
        return [f"{run}: config error: {e}"]
    model, t = results / run / "model", cfg.train
    stages = {
        "download": data / "raw" / cfg.data.dataset / "provenance.json",
        "prepare": data / "prepared" / config.data_id(cfg) / "provenance.json",
        "train": model / "provenance.json",
        "sample": results / run / "samples" / "provenance.json",
        "eval": results / run / "eval" / "metrics.json",
        "report": results / run / "report" / "loss.svg",
    }
    done = [f"{stage} {'done' if path.exists() else '-'}" for stage, path in stages.items()]
    lines = [f"{run}: {', '.join(done)}"]
    newest = last_records(model / "metrics.jsonl")
    if (train := newest.get("train")) is not None:
        step = train.get("step", -1) + 1
        finished = stages["train"].exists() and step >= t.max_iters
        text = (f"  training {'finished' if finished else 'in progress or stopped'}: step {step} "
                f"of {t.max_iters}, loss {_figure(train.get('loss'))}")  # fmt: skip
        if isinstance(ms := train.get("ms_per_iter"), (int, float)) and ms:
            text += f", {ms:.1f} ms/iter"
        if (evaluation := newest.get("eval")) is not None:
            text += (f"; val loss {_figure(evaluation.get('val_loss'))} at step "
                     f"{evaluation.get('step')}")  # fmt: skip
        lines.append(text)
    if stages["eval"].exists():
        try:
            ev = provenance.read_json(stages["eval"], what="eval metrics")
            ev = ev if isinstance(ev, dict) else {}
        except provenance.FileError as e:
            return [*lines, f"  eval: {e}"]
        v, h = ev.get("val_loss"), ev.get("hellaswag")
        parts = [f"val loss {_figure(v.get('loss'))} ({_figure(v.get('bits_per_byte'))} "
                 "bits/byte, whole split)"] if isinstance(v, dict) else []  # fmt: skip
        if isinstance(h, dict):
            items = h.get("items") if isinstance(h.get("items"), int) else 0
            parts.append(
                f"HellaSwag acc_norm {_figure(h.get('acc_norm'))} over "
                f"{progress.plural(items, 'item')}"
            )
        lines.append(f"  eval: {'; '.join(parts)}")
    ckpt_dir = results / run / "checkpoints" / config.checkpoint_id(cfg)
    usable = [p for s, p in checkpoint.list_checkpoints(ckpt_dir) if s <= t.max_iters]
    lines.append(f"  resumes from {usable[-1]}" if usable else
                 f"  no checkpoint in {ckpt_dir}: training would start at step 0")  # fmt: skip
    return lines


# The keys of config/config.yaml that `snakemake --config` may set (the workflow's schema).
WORKFLOW_KEYS = ("runs", "sweep", "mirror", "paths")


def workflow_config(pairs: list[str]) -> dict[str, Any]:
    """config/config.yaml with `--config KEY=VALUE` pairs on top, each value read as snakemake
    reads it (runs=[a,b], runs=a,b, sweep=NAME), checked against the workflow's schema as the
    Snakefile checks it."""
    workflow = yaml.safe_load(Path("config/config.yaml").read_text("utf-8"))
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or key not in WORKFLOW_KEYS:
            raise ValueError(f"--config {pair}: expected KEY=VALUE with KEY one of "
                             f"{', '.join(WORKFLOW_KEYS)}")  # fmt: skip
        config.update_workflow(workflow, key, config.workflow_value(value))
    config.check_workflow(workflow)
    return workflow


def selected_runs(workflow: dict[str, Any]) -> dict[str, tuple[str, list[str]]]:
    """{run: (base run, overrides)} as the Snakefile selects them: a sweep's points, else the
    runs (a list, or names separated by commas, each once)."""
    if workflow.get("sweep"):
        s = nsweep.load(str(workflow["sweep"]))
        return {run: (s.base, overrides) for run, overrides in nsweep.expand(s).items()}
    return {run: ("", []) for run in config.run_names(workflow["runs"])}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m nanogptx.status", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n")[1],
    )  # fmt: skip
    parser.add_argument("--config", nargs="+", default=[], metavar="KEY=VALUE",
                        help="the runs as snakemake takes them: runs=[a,b] or runs=a,b, or "
                        "sweep=NAME (default: config/config.yaml's)")  # fmt: skip
    parser.add_argument("--runs", help="comma-separated run names (as --config runs=a,b)")
    args = parser.parse_args(argv)
    pairs = args.config + ([f"runs={args.runs}", "sweep=''"] if args.runs else [])
    try:
        workflow = workflow_config(pairs)
        runs = selected_runs(workflow)
    except OSError as e:
        parser.exit(1, f"{parser.prog}: error: run it in the checkout ({e})\n")
    except (ValueError, config.ConfigError) as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    paths = {"data": "data", "results": "results", **(workflow.get("paths") or {})}
    try:
        for run, (base, overrides) in runs.items():
            lines = run_status(run, Path(paths["data"]), Path(paths["results"]), base, overrides)
            print("\n".join(lines), flush=True)
    except BrokenPipeError:  # a reader that stopped early (`| head`): Python's documented exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)


if __name__ == "__main__":
    main()
