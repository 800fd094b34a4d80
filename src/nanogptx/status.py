"""Where every configured run stands: the stages done, how far its training has come (from
metrics.jsonl, also while it runs) and the checkpoint a rerun resumes from. Reads files only.

    python -m nanogptx.status [--config runs=[a,b] | --config sweep=NAME | --runs a,b]
"""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path
from typing import Any

import yaml  # Snakemake's own dependency: config/config.yaml is YAML

from nanogptx import checkpoint, config, errors, evaltasks, progress, provenance
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


def _items(r: dict[str, Any]) -> str:
    return progress.plural(r["items"] if isinstance(r.get("items"), int) else 0, "item")


# How a task's figures are summed up, per kind of task (nanogptx.evaltasks.KINDS).
SUMMARIES = {
    "split_loss": lambda task, r: (
        f"{task.label} loss {_figure(r.get('loss'))} "
        f"({_figure(r.get('bits_per_byte'))} bits/byte, whole split)"
    ),
    "multiple_choice": lambda task, r: (
        f"{task.label} acc_norm {_figure(r.get('acc_norm'))} over {_items(r)}"
        if task.options["style"] == "llm.c"
        else _in_context(task, r)
    ),
    "schema": lambda task, r: _in_context(task, r),
    "language_modeling": lambda task, r: _in_context(task, r),
    "group": lambda task, r: (
        f"{task.label} {_figure(r.get('core'))} over {r.get('tasks')} tasks"
        if "core" in r
        else f"cut {task.label} {_figure(r.get('core_partial'))} (eval.max_items: not "
        f"{task.label}) over {r.get('tasks')} tasks"
    ),
}


def _in_context(task: evaltasks.Task, r: dict[str, Any]) -> str:
    """An in-context task: accuracy and centered accuracy (a CORE task's, briefly)."""
    return (
        f"{task.label} acc {_figure(r.get('acc'))} (centered {_figure(r.get('centered'))}, "
        f"{r.get('shots')}-shot, {_items(r)})"
    )


def eval_summary(metrics: Any) -> str:
    """The eval stage's metrics.json in one line: each task's figures, in the registry's order
    (a task the registry has no file for is named)."""
    metrics = metrics if isinstance(metrics, dict) else {}
    parts = []
    for name in evaltasks.in_order([n for n, r in metrics.items() if isinstance(r, dict)]):
        try:
            task = evaltasks.get(name)
        except evaltasks.TaskError:
            parts.append(f"{name} (no task file in {evaltasks.registry_dir()})")
            continue
        parts.append(SUMMARIES[task.kind](task, metrics[name]))
    return "; ".join(parts)


def malformed(metrics: Any) -> str | None:
    """What is wrong with an eval stage's metrics.json as status reads it (None: nothing): an
    object of each task's figures (an object), beside the model's model_sha256."""
    if not isinstance(metrics, dict):
        return f"expected a JSON object, not {type(metrics).__name__}"
    tasks = {k: v for k, v in metrics.items() if k != "model_sha256"}
    if not tasks:
        return "no task's figures in it"
    wrong = [k for k, v in tasks.items() if not isinstance(v, dict)]
    return f"{', '.join(wrong)}: expected an object of its figures" if wrong else None


def workflow_stages() -> dict[str, str | None]:
    """The stages of the workflow in its order (the Snakefile's STAGES), each with where its
    output of a run lies under results/RUN/ (None where no rule's output of a run says so: the
    data stages); read from the files, so a stage added there is listed without Snakemake."""
    outputs, rule = {}, None
    for smk in sorted(Path("workflow/rules").glob("*.smk")):
        for line in smk.read_text("utf-8").splitlines():
            if m := re.match(r"rule (\w+):", line):
                rule = m[1]
            elif m := re.match(r'\s+(\w+)=f"\{RESULTS\}/\{\{run\}\}/(.+)",$', line):
                outputs[rule, m[1]] = m[2]
    block = re.search(r"^STAGES = \{\n(.*?)^\}", Path("Snakefile").read_text("utf-8"), re.M | re.S)
    if block is None:
        raise config.ConfigError("Snakefile: no `STAGES = {` block, the workflow's list of stages")
    stages = {}
    for line in block[1].splitlines():
        if name := re.match(r'\s+"(\w+)":', line):
            output = re.search(r"of_run\(rules\.(\w+)\.output\.(\w+)\)", line)
            stages[name[1]] = outputs.get((output[1], output[2])) if output else None
    return stages


def run_status(
    run: str, data: Path, results: Path, base: str = "", overrides=(), stages=None
) -> list[str]:
    """Lines describing one run (a sweep's point: its base run's file and its overrides), at
    the workflow's stages (default: workflow_stages())."""
    try:
        path = Path("config") / f"{config.check_run_name(base or run)}.toml"
        # The registry is not read: a broken dataset file must not hide where the runs stand.
        cfg = config.load(path, overrides, registry=False)
    except config.ConfigError as e:
        return [f"{run}: config error: {e}"]
    model, t = results / run / "model", cfg.train
    # A stage is done when its output directory holds its provenance.json, written last.
    done_at = {
        "download": data / "raw" / cfg.data.dataset / "provenance.json",
        "prepare": data / "prepared" / config.data_id(cfg) / "provenance.json",
    }
    for stage, output in (workflow_stages() if stages is None else stages).items():
        if output is not None:
            done_at[stage] = results / run / Path(output).parent / "provenance.json"
        done_at.setdefault(stage, None)  # shown as "?": its output is not found in the rules
    done_at["report"] = results / run / "report" / "loss.svg"
    mark = lambda path: "?" if path is None else "done" if path.exists() else "-"  # noqa: E731
    done = [f"{stage} {mark(path)}" for stage, path in done_at.items()]
    lines = [f"{run}: {', '.join(done)}"]
    newest = last_records(model / "metrics.jsonl")
    if (train := newest.get("train")) is not None:
        step = train.get("step", -1) + 1
        finished = (model / "provenance.json").exists() and step >= t.max_iters
        text = (
            f"  training {'finished' if finished else 'in progress or stopped'}: step {step} "
            f"of {t.max_iters}, loss {_figure(train.get('loss'))}"
        )
        if isinstance(ms := train.get("ms_per_iter"), (int, float)) and ms:
            text += f", {ms:.1f} ms/iter"
        if (evaluation := newest.get("eval")) is not None:
            text += (
                f"; val loss {_figure(evaluation.get('val_loss'))} at step {evaluation.get('step')}"
            )
        lines.append(text)
    if (eval_metrics := results / run / "eval" / "metrics.json").exists():
        try:
            metrics = provenance.read_json(eval_metrics, what="eval metrics")
        except provenance.FileError as e:
            return [*lines, f"  eval: {e}"]
        if (wrong := malformed(metrics)) is not None:
            return [*lines, f"  eval: eval metrics {eval_metrics} is malformed: {wrong}"]
        lines.append(f"  eval: {eval_summary(metrics)}")
    ckpt_dir = results / run / "checkpoints" / config.checkpoint_id(cfg)
    usable = [p for s, p in checkpoint.list_checkpoints(ckpt_dir) if s <= t.max_iters]
    lines.append(
        f"  resumes from {usable[-1]}"
        if usable
        else f"  no checkpoint in {ckpt_dir}: training would start at step 0"
    )
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
            raise config.ConfigError(
                f"--config {pair}: expected KEY=VALUE with KEY one of {', '.join(WORKFLOW_KEYS)}"
            )
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
        prog="python -m nanogptx.status",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n")[1],
    )
    parser.add_argument(
        "--config",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="the runs as snakemake takes them: runs=[a,b] or runs=a,b, or "
        "sweep=NAME (default: config/config.yaml's)",
    )
    parser.add_argument("--runs", help="comma-separated run names (as --config runs=a,b)")
    args = parser.parse_args(argv)
    pairs = args.config + ([f"runs={args.runs}", "sweep=''"] if args.runs else [])
    try:
        workflow = workflow_config(pairs)
        runs = selected_runs(workflow)
        stages = workflow_stages()
    except OSError as e:
        parser.exit(1, f"{parser.prog}: error: run it in the checkout ({e})\n")
    except errors.UserError as e:  # a bug in the code shows its traceback
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    paths = {"data": "data", "results": "results", **(workflow.get("paths") or {})}
    with errors.reader_may_stop():
        for run, (base, overrides) in runs.items():
            data, results = Path(paths["data"]), Path(paths["results"])
            lines = run_status(run, data, results, base, overrides, stages)
            print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
