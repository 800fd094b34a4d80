"""The code of a stage: its module and every nanogptx module it imports, read from the sources.

The workflow hashes these files as each stage's code (common.smk: code_hash); docs/workflow.md's
rerun table's rows for code are made from the same lists: python -m nanogptx.stagecode. Stdlib.
"""

from __future__ import annotations

import ast
from pathlib import Path

from nanogptx.schema import STAGES

SRC = Path(__file__).resolve().parent
# Stages outside the table's columns, and what an edit of their code alone reruns.
ALONE = {"export": "(the export only)", "report": "(the report only)"}
AFTER = {"prepare": "download", "train": "prepare", "sample": "train", "eval": "train"}


def _imports(name: str, src: Path) -> list[str]:
    """The nanogptx modules that <src>/<name>.py imports, anywhere in its source."""
    ours = lambda module: (module or "").startswith("nanogptx.")  # noqa: E731
    found = []
    for node in ast.walk(ast.parse((src / f"{name}.py").read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "nanogptx":
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            found += [node.module.split(".")[1]] if ours(node.module) else []
        elif isinstance(node, ast.Import):
            found += [a.name.split(".")[1] for a in node.names if ours(a.name)]
    return found


def stage_modules(module: str, src: Path = SRC) -> list[str]:
    """The files of nanogptx that `python -m nanogptx.<module>` runs: the module and every
    nanogptx module it imports, at any depth (so never out of date)."""
    found, todo = set(), [module]
    while todo:
        name = todo.pop()
        if name not in found and (src / f"{name}.py").is_file():
            found.add(name)
            todo += _imports(name, src)
    return sorted(f"{name}.py" for name in found)


def code_rows(src: Path = SRC) -> list[str]:
    """One row per set of stages an edit reruns (a stage reruns when its code changes or the
    outputs of the stage it follows do): the modules, and a mark per stage of the table."""
    runs = {stage: stage_modules(stage, src) for stage in [*STAGES, *ALONE]}
    rows: dict[tuple[str, ...], list[str]] = {}
    for path in sorted(p.name for p in src.glob("*.py") if p.name != "__init__.py"):
        reruns: dict[str, bool] = {}
        for stage in STAGES:  # in order: the stage each follows comes first
            reruns[stage] = path in runs[stage] or reruns.get(AFTER.get(stage, ""), False)
        marks = ["yes" if reruns[stage] else "" for stage in STAGES]
        if not any(marks):
            marks[-1] = " ".join(v for s, v in ALONE.items() if path in runs[s])
        rows.setdefault(tuple(marks), []).append(path)
    first = lambda marks: marks.index("yes") if "yes" in marks else len(marks)  # noqa: E731
    order = sorted(rows, key=lambda marks: (-marks.count("yes"), first(marks), not any(marks)))
    return [
        "|".join(["", f" {_cell(rows[m], any(m))} ", *(f" {x} " if x else " " for x in m), ""])
        for m in order
    ]


def _cell(paths: list[str], runs: bool) -> str:
    return ", ".join(f"`{p}`" for p in paths) + ("" if runs else " (no stage runs them)")


def code_table(src: Path = SRC) -> str:
    head = f"| you edit `src/nanogptx/` | {' | '.join(STAGES)} |"
    return "\n".join([head, "|---" * (len(STAGES) + 1) + "|", *code_rows(src)])


if __name__ == "__main__":
    print(code_table())
