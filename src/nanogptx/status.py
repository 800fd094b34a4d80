"""Where every configured run stands: which stages are done, how far its training has come
(from metrics.jsonl, also while it runs) and the checkpoint a rerun would resume from.

    python -m nanogptx.status [--runs a,b]    # in the checkout; default: config/config.yaml's runs

Reads files only: it starts nothing and changes nothing, and needs no Snakemake.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml  # Snakemake's own dependency: config/config.yaml is YAML

from nanogptx import checkpoint, config, provenance


def last_records(metrics: Path) -> dict[str, dict[str, Any]]:
    """The newest record of each kind in a metrics.jsonl (none if it is missing), skipping a
    line still being written."""
    try:
        lines = metrics.read_text().splitlines()
    except OSError:
        return {}
    newest = {}
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        newest[record.get("kind")] = record
    return newest


def run_status(run: str, data: Path, results: Path) -> list[str]:
    """Lines describing one run."""
    try:
        # The registry is not read: a broken dataset file must not hide where the runs stand.
        cfg = config.load(Path("config") / f"{config.check_run_name(run)}.toml", registry=False)
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
        step = train["step"] + 1
        finished = stages["train"].exists() and step >= t.max_iters
        text = (f"  training {'finished' if finished else 'in progress or stopped'}: step {step} "
                f"of {t.max_iters}, loss {train['loss']:.4f}")  # fmt: skip
        if train.get("ms_per_iter"):
            text += f", {train['ms_per_iter']:.1f} ms/iter"
        if (evaluation := newest.get("eval")) is not None:
            text += f"; val loss {evaluation['val_loss']:.4f} at step {evaluation['step']}"
        lines.append(text)
    if stages["eval"].exists():
        try:
            ev = provenance.read_json(stages["eval"], what="eval metrics")
            ev = ev if isinstance(ev, dict) else {}
        except provenance.FileError as e:
            return [*lines, f"  eval: {e}"]
        parts = [f"val loss {ev['val_loss']['loss']:.4f} ({ev['val_loss']['bits_per_byte']:.4f} "
                 "bits/byte, whole split)"] if "val_loss" in ev else []  # fmt: skip
        if "hellaswag" in ev:
            h = ev["hellaswag"]
            parts.append(f"HellaSwag acc_norm {h['acc_norm']:.4f} over {h['items']} items")
        lines.append(f"  eval: {'; '.join(parts)}")
    ckpt_dir = results / run / "checkpoints" / config.checkpoint_id(cfg)
    usable = [p for s, p in checkpoint.list_checkpoints(ckpt_dir) if s <= t.max_iters]
    lines.append(f"  resumes from {usable[-1]}" if usable else
                 f"  no checkpoint in {ckpt_dir}: training would start at step 0")  # fmt: skip
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m nanogptx.status", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--runs", help="comma-separated run names (default: config/config.yaml)")
    args = parser.parse_args(argv)
    try:
        workflow = yaml.safe_load(Path("config/config.yaml").read_text())
    except OSError as e:
        parser.exit(1, f"{parser.prog}: error: run it in the checkout ({e})\n")
    runs = args.runs.split(",") if args.runs else workflow["runs"]
    runs = runs.split(",") if isinstance(runs, str) else runs
    paths = workflow["paths"]
    for run in runs:
        print("\n".join(run_status(run.strip(), Path(paths["data"]), Path(paths["results"]))))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
