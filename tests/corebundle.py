"""A miniature CORE eval bundle in the real format, for tests: eval_bundle/core.yaml listing the
22 tasks (their real labels, dataset_uri, shots, kinds and delimiters), a dozen small items per
eval_data/**/*.jsonl in each kind's item format (some not ASCII), eval_bundle/eval_meta_data.csv
with the random baselines in percent. The same bytes every time (fixed zip timestamps).

    from corebundle import TASKS, build, downloaded, mirror
    zip_path = build(tmp_path / "eval_bundle.zip")
    mirror_dir = mirror(tmp_path / "mirror")  # mirror_dir/eval-bundle/eval_bundle.zip
    raw = downloaded(tmp_path)  # the real download stage: raw/eval_bundle/core.yaml, ...
"""

from __future__ import annotations

import csv
import io
import json
import random
import zipfile
from dataclasses import dataclass
from pathlib import Path

from nanogptx import download
from nanogptx.config import DataConfig


@dataclass(frozen=True)
class CoreTask:
    label: str
    uri: str  # under eval_bundle/eval_data/
    kind: str  # multiple_choice | schema | language_modeling
    shots: int
    delimiter: str  # core.yaml's continuation_delimiter
    baseline: float  # eval_meta_data.csv's "Random baseline", in percent
    choices: int = 0  # multiple_choice: options per item; schema: contexts per item


ANSWER = "\nAnswer: "
MC, SCHEMA, LM = "multiple_choice", "schema", "language_modeling"
LU, WK, CR = "language_understanding", "world_knowledge", "commonsense_reasoning"
SP, RC = "symbolic_problem_solving", "reading_comprehension"
# core.yaml's order (/work/core-facts.md, from DCLM's and nanochat's files): label, dataset_uri,
# kind, shots, continuation_delimiter, random baseline (percent), choices or contexts per item.
# fmt: off
TASKS = tuple(CoreTask(*row) for row in (
    ("hellaswag_zeroshot",         f"{LU}/hellaswag.jsonl",                  MC,     0,  " ",    25.0, 4),  # noqa: E501
    ("jeopardy",                   f"{WK}/jeopardy_all.jsonl",               LM,     10, ANSWER, 0.0),  # noqa: E501
    ("bigbench_qa_wikidata",       f"{WK}/bigbench_qa_wikidata.jsonl",       LM,     10, " ",    0.0),  # noqa: E501
    ("arc_easy",                   f"{WK}/arc_easy.jsonl",                   MC,     10, ANSWER, 25.0, 4),  # noqa: E501
    ("arc_challenge",              f"{WK}/arc_challenge.jsonl",              MC,     10, ANSWER, 25.0, 4),  # noqa: E501
    ("copa",                       f"{CR}/copa.jsonl",                       MC,     0,  " ",    50.0, 2),  # noqa: E501
    ("commonsense_qa",             f"{CR}/commonsense_qa.jsonl",             MC,     10, " ",    20.0, 5),  # noqa: E501
    ("piqa",                       f"{CR}/piqa.jsonl",                       MC,     10, ANSWER, 50.0, 2),  # noqa: E501
    ("openbook_qa",                f"{CR}/openbook_qa.jsonl",                MC,     0,  " ",    25.0, 4),  # noqa: E501
    ("lambada_openai",             f"{LU}/lambada_openai.jsonl",             LM,     0,  " ",    0.0),  # noqa: E501
    ("hellaswag",                  f"{LU}/hellaswag.jsonl",                  MC,     10, " ",    25.0, 4),  # noqa: E501
    ("winograd",                   f"{LU}/winograd_wsc.jsonl",               SCHEMA, 0,  " ",    50.0, 2),  # noqa: E501
    ("winogrande",                 f"{LU}/winogrande.jsonl",                 SCHEMA, 0,  " ",    50.0, 2),  # noqa: E501
    ("bigbench_dyck_languages",    f"{SP}/bigbench_dyck_languages.jsonl",    LM,     10, " ",    0.0),  # noqa: E501
    ("agi_eval_lsat_ar",           f"{SP}/agi_eval_lsat_ar.jsonl",           MC,     3,  " ",    20.0, 5),  # noqa: E501
    ("bigbench_cs_algorithms",     f"{SP}/bigbench_cs_algorithms.jsonl",     LM,     10, " ",    0.0),  # noqa: E501
    ("bigbench_operators",         f"{SP}/bigbench_operators.jsonl",         LM,     10, " ",    0.0),  # noqa: E501
    ("bigbench_repeat_copy_logic", f"{SP}/bigbench_repeat_copy_logic.jsonl", LM,     10, " ",    0.0),  # noqa: E501
    ("squad",                      f"{RC}/squad.jsonl",                      LM,     10, " ",    0.0),  # noqa: E501
    ("coqa",                       f"{RC}/coqa.jsonl",                       LM,     0,  " ",    0.0),  # noqa: E501
    ("boolq",                      f"{RC}/boolq.jsonl",                      MC,     10, ANSWER, 62.0, 2),  # noqa: E501
    ("bigbench_language_identification", f"{LU}/bigbench_language_identification.jsonl", MC, 10, " ", 9.1, 4),  # noqa: E501
))
# fmt: on
ITEMS = 12  # per file: more than the most shots (10) plus the item itself
ROOT = "eval_bundle"
DATASET = "eval-bundle"  # config/datasets/eval-bundle.toml
ARCHIVE = "eval_bundle.zip"
_WHEN = (2024, 1, 1, 0, 0, 0)  # every member's timestamp: the same bytes on every build
_WORDS = (
    "the cat sat on a warm mat while rain fell over old stone roofs and a kettle sang "
    "in the kitchen before anyone woke up to read the morning paper about distant towns"
).split()
# Not ASCII: accents, another script, an emoji, a non-breaking space (what real items hold).
_UNICODE = ("café", "naïve", "Zürich", "東京", "🙂", "über\u00a0alles", "São Paulo", "Ελλάδα")


def _text(rng: random.Random, n: int, i: int) -> str:
    words = [rng.choice(_WORDS) for _ in range(n)]
    if i % 4 == 1:  # every fourth item carries a word that is not ASCII
        words[rng.randrange(n)] = rng.choice(_UNICODE)
    return " ".join(words)


def items(task: CoreTask, n: int = ITEMS) -> list[dict]:
    """n items of task's kind in the bundle's format, the same for every task of one file."""
    rng = random.Random(task.uri)
    out = []
    for i in range(n):
        if task.kind == MC:
            stem = _text(rng, 3, i)  # choices sharing their first words, as real ones do
            choices = [f"{stem} {_text(rng, 1 + (c + i) % 3, i + c)}" for c in range(task.choices)]
            item = {"query": f"Question {i}: {_text(rng, 8, i)}?", "choices": choices}
            out.append({**item, "gold": rng.randrange(task.choices)})
        elif task.kind == SCHEMA:
            options = [f"{_text(rng, 6, i + c)}, so {_text(rng, 2, i)}" for c in range(2)]
            item = {"context_options": options, "continuation": f"{_text(rng, 4, i)}."}
            out.append({**item, "gold": i % 2})
        else:
            out.append({"context": f"{_text(rng, 10, i)} ", "continuation": _text(rng, 2, i)})
    return out


def core_yaml() -> str:
    """core.yaml as the bundle writes it: icl_tasks, one mapping per task."""
    lines = ["icl_tasks:"]
    for t in TASKS:
        lines += [
            f"- label: {t.label}",
            f"  dataset_uri: {t.uri}",
            f"  num_fewshot: [{t.shots}]",
            f"  icl_task_type: {t.kind}",
            f"  continuation_delimiter: {json.dumps(t.delimiter)}",  # a YAML double-quoted string
        ]
    return "\n".join(lines) + "\n"


def meta_csv(baselines: dict[str, float] | None = None) -> str:
    """eval_meta_data.csv: a row per task, the baseline in percent (baselines: other values)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["Eval Task", "Task Category", "Task Type", "#shots", "Random baseline"])
    for t in TASKS:
        category = t.uri.split("/")[0]
        baseline = (baselines or {}).get(t.label, t.baseline)
        w.writerow([t.label, category, t.kind, t.shots, baseline])
    return buf.getvalue()


def members(baselines: dict[str, float] | None = None) -> dict[str, bytes]:
    """{path in the zip: bytes}, in the order they are written."""
    files = {f"{ROOT}/core.yaml": core_yaml().encode()}
    for t in TASKS:
        lines = [json.dumps(it, ensure_ascii=False) for it in items(t)]
        files[f"{ROOT}/eval_data/{t.uri}"] = ("\n".join(lines) + "\n").encode()
    files[f"{ROOT}/eval_meta_data.csv"] = meta_csv(baselines).encode()
    return files


def zip_bytes(files: dict[str, bytes]) -> bytes:
    """A deflated zip of files, written as on Unix (mode 0644), every timestamp _WHEN."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            info = zipfile.ZipInfo(name, _WHEN)
            info.create_system, info.external_attr = 3, 0o100644 << 16
            zf.writestr(info, data, zipfile.ZIP_DEFLATED)
    return buf.getvalue()


def build(path: Path, baselines: dict[str, float] | None = None) -> Path:
    """Write the bundle's zip to path (its parents made) and return path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(zip_bytes(members(baselines)))
    return path


def mirror(directory: Path, baselines: dict[str, float] | None = None) -> Path:
    """directory as a mirror holding the bundle: DIR/eval-bundle/eval_bundle.zip."""
    build(directory / DATASET / ARCHIVE, baselines)
    return directory


def downloaded(tmp: Path, baselines: dict[str, float] | None = None) -> Path:
    """The bundle through the real download stage (registry entry eval-bundle, a mirror
    directory, a lock file of its own) into tmp/data/raw/eval-bundle, which is returned."""
    out = tmp / "data" / "raw" / DATASET
    source = mirror(tmp / "mirror", baselines)
    download.download(DataConfig(), out, str(source), tmp / "lock.json", dataset=DATASET)
    return out
