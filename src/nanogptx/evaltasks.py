"""The eval task registry: one data file per task, config/tasks/<name>.toml, naming its kind (how
it is scored), its input (the run's prepared data, or a file of a registry dataset) and the
metrics its table shows; a group (CORE) names tasks run together and their aggregate;
`eval.tasks` names tasks and groups. docs/pipeline.md has the keys.
Standard library only: config.py and the Snakefile read it.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nanogptx.errors import UserError, suggest


@dataclass(frozen=True)
class Metric:
    key: str  # in metrics.json
    heading: str  # in the report's table
    format: str  # format() spec


@dataclass(frozen=True)
class Kind:
    """How tasks of a kind are scored (nanogptx.eval has one scorer per kind): what they read,
    what they measure, and the keys of their files beyond the common ones (key: default)."""

    input: str  # "prepared": the run's prepared data; "dataset": a file of a registry dataset
    metrics: tuple[Metric, ...]
    keys: dict[str, Any]


# The in-context keys (CORE's: DCLM, nanochat's core_eval) of the kinds that read a registry file
# of items: few-shot examples, the text between context and continuation, BOS before every row,
# and the random baseline (percent, as eval_meta_data.csv has it) checked against `baselines`.
IN_CONTEXT = {"shots": 0, "delimiter": " ", "bos": False, "baseline": 0.0, "baselines": ""}
CORE_METRICS = (
    Metric("acc", "acc", ".4f"),
    Metric("centered", "centered", ".4f"),
    Metric("items", "items", ",d"),
    Metric("shots", "shots", "d"),
)
# How a multiple-choice task scores its choices: "llm.c" (context and each " " + choice tokenized
# apart, the sum and the mean of the choice's log-probabilities) or "core" (each whole prompt
# tokenized, the tokens after the choices' common prefix, the lowest mean loss wins).
STYLES = ("llm.c", "core")

# The kinds, in the order the report and status show their tasks.
KINDS: dict[str, Kind] = {
    "split_loss": Kind(  # mean next-token loss over a whole split, and bits per byte
        "prepared",
        (Metric("loss", "loss", ".4f"), Metric("bits_per_byte", "bits/byte", ".4f"),
         Metric("windows", "windows", ",d"), Metric("tokens", "tokens", ",d")),
        {"split": "val"},
    ),
    "multiple_choice": Kind(  # one context, several continuations: the likeliest one wins
        "dataset",
        (Metric("acc", "acc", ".4f"), Metric("acc_norm", "acc_norm", ".4f"), *CORE_METRICS[1:]),
        {"dataset": "", "file": "", "items": 0, "tokenizer": "", "choices": 0, "style": "llm.c",
         **IN_CONTEXT, "fields": {"context": "ctx", "choices": "endings", "label": "label"}},
    ),
    "schema": Kind(  # several contexts, one continuation: the context it is likeliest after wins
        "dataset",
        CORE_METRICS,
        {"dataset": "", "file": "", "items": 0, "tokenizer": "", "choices": 0, **IN_CONTEXT,
         "fields": {"contexts": "context_options", "continuation": "continuation",
                    "label": "gold"}},
    ),
    "language_modeling": Kind(  # right only if greedy decoding gives every continuation token
        "dataset",
        CORE_METRICS,
        {"dataset": "", "file": "", "items": 0, "tokenizer": "", **IN_CONTEXT,
         "fields": {"context": "context", "continuation": "continuation"}},
    ),
    "group": Kind(  # tasks named together, and their aggregate (CORE: the mean centered acc)
        "group",
        (Metric("core", "CORE", ".4f"), Metric("core_partial", "cut CORE", ".4f"),
         Metric("tasks", "tasks", "d")),
        {"tasks": []},
    ),
}  # fmt: skip
COMMON = {"about": "", "kind": "", "label": "", "metrics": []}
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# How a message names a tokenizer's tokens.
TOKENS = {"gpt2": "GPT-2", "char": "character"}
SPLITS = ("train", "val")  # a split_loss task's split: those prepare writes


class TaskError(UserError, ValueError):
    """An unknown task, or a task file that does not follow the schema (names file and key)."""


@dataclass(frozen=True)
class Task:
    name: str
    kind: str
    label: str  # how the report and status name it: "val", "HellaSwag"
    about: str
    metrics: tuple[str, ...]  # the report's columns, keys of the kind's metrics
    options: dict[str, Any]  # the kind's keys, with their defaults filled in

    @property
    def input(self) -> str:
        return KINDS[self.kind].input

    def columns(self) -> list[Metric]:
        """The report's columns: its metrics, the first heading led by the task's label."""
        known = {m.key: m for m in KINDS[self.kind].metrics}
        cols = [known[key] for key in self.metrics]
        return [
            Metric(c.key, f"{self.label} {c.heading}" if i == 0 else c.heading, c.format)
            for i, c in enumerate(cols)
        ]

    def centered(self) -> bool:
        """Whether it scores a centered accuracy (what a group averages)."""
        return self.kind in ("schema", "language_modeling") or (
            self.kind == "multiple_choice" and self.options["style"] == "core"
        )

    def tokens(self) -> str:
        """The tokens it is scored in, as a message names them."""
        name = self.options["tokenizer"]
        return f"{TOKENS.get(name, repr(name))} tokens"


def registry_dir() -> Path:
    """$NANOGPTX_TASKS, else config/tasks under the working directory, else the one beside this
    package's source (an editable install)."""
    if env := os.environ.get("NANOGPTX_TASKS"):
        return Path(env)
    here = Path("config/tasks")
    return here if here.is_dir() else Path(__file__).resolve().parents[2] / "config" / "tasks"


def entry_file(name: str) -> Path:
    return registry_dir() / f"{name}.toml"


def _need(ok: bool, where: str, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise TaskError(f"{where}: {key} = {value!r}: expected {expected}")


def _check_values(where: str, tree: dict[str, Any]) -> None:
    """Values beyond a key's type: a split the prepared data has, a tokenizer there is, a
    dataset's name, and a file inside its directory (names joined by /: an absolute path or ..
    would leave it), the items' and the baselines' (empty: none)."""
    if "split" in tree:
        _need(tree["split"] in SPLITS, where, "split", tree["split"], f"one of {list(SPLITS)}")
    if "tokenizer" in tree:
        known = ["", *TOKENS]
        _need(tree["tokenizer"] in known, where, "tokenizer", tree["tokenizer"], f"one of {known}")
    for key in ("dataset", "file", "baselines"):
        if key in tree and not (key == "baselines" and tree[key] == ""):
            parts = tree[key].split("/") if key != "dataset" else [tree[key]]
            ok = all(NAME.fullmatch(part) for part in parts)
            _need(ok, where, key, tree[key], "a name: letters, digits, '.', '_', '-'")


def _missing_inputs(tasks: tuple[str, ...]) -> str:
    """The first dataset that the files of tasks name and the registry lacks (empty: none)."""
    from nanogptx import datasets  # light: the registry is plain data

    try:
        tasks = tuple(expand(tasks))  # a group's members too
    except TaskError:
        pass  # problem() names it
    for name in tasks:
        try:
            task = get(name)
        except TaskError:
            continue  # problem() names it
        if task.input != "dataset":
            continue
        try:
            datasets.get(dataset := task.options["dataset"])
        except (datasets.UnknownDataset, datasets.RegistryError) as e:
            return f"eval.tasks has {name}: {entry_file(name)}: dataset = {dataset!r}: {e}"
    return ""


def _check_option(where: str, key: str, value: Any, default: Any) -> None:
    if isinstance(default, dict):
        _need(
            isinstance(value, dict) and set(value) == set(default),
            where,
            key,
            value,
            f"a table of {sorted(default)}",
        )
        for k, v in value.items():
            _need(isinstance(v, str) and v != "", where, f"{key}.{k}", v, "a key of the items")
    elif isinstance(default, list):  # a group's tasks
        _need(
            isinstance(value, list) and value != [] and len(set(map(str, value))) == len(value)
            and all(isinstance(v, str) and NAME.fullmatch(v) for v in value),
            where, key, value, "a list of task names, each once",
        )  # fmt: skip
    elif isinstance(default, bool):
        _need(isinstance(value, bool), where, key, value, "true or false")
    elif isinstance(default, float):  # a random baseline, in percent
        _need(
            isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 100,
            where, key, value, "a percentage >= 0 and < 100",
        )  # fmt: skip
    elif isinstance(default, int):
        _need(
            isinstance(value, int) and not isinstance(value, bool) and value >= 0,
            where,
            key,
            value,
            "a whole number >= 0",
        )
    else:
        _need(isinstance(value, str), where, key, value, "a string")


def _check_kind(where: str, kind: str, tree: dict[str, Any]) -> None:
    """What a kind asks of its keys beyond their types."""
    style = tree.get("style", "llm.c")
    if kind == "multiple_choice":
        _need(style in STYLES, where, "style", style, f"one of {list(STYLES)}")
    if kind in ("multiple_choice", "schema"):
        _need(tree.get("choices", 0) >= 2, where, "choices", tree.get("choices"), ">= 2")
    if kind == "multiple_choice" and style == "llm.c":
        items = tree.get("items", 0)
        _need(items >= 1, where, "items", items, "the number of items in its file (>= 1)")
        for key in ("shots", "bos", "baselines"):  # llm.c's rule has none of them
            value = tree.get(key, IN_CONTEXT[key])
            _need(not value, where, key, value, 'nothing with style = "llm.c" (use "core")')


def parse(path: Path) -> Task:
    """The task of one registry file, checked against its kind's keys."""
    where = str(path)
    try:
        tree = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise TaskError(f"{where}: cannot read it as TOML: {e}") from None
    kind = tree.get("kind")
    _need(isinstance(kind, str) and kind in KINDS, where, "kind", kind, f"one of {list(KINDS)}")
    keys = {**COMMON, **KINDS[kind].keys}
    for key, value in tree.items():
        hint = suggest(key, keys)
        _need(key in keys, where, "key", key, f"one of {sorted(keys)} for kind {kind}{hint}")
        if key in KINDS[kind].keys:
            _check_option(where, key, value, keys[key])
    _check_values(where, tree)
    for key in ("about", "label"):
        _need(
            isinstance(tree.get(key), str) and tree[key] != "",
            where,
            key,
            tree.get(key),
            "a string, not empty",
        )
    known = [m.key for m in KINDS[kind].metrics]
    metrics = tree.get("metrics")
    _need(
        isinstance(metrics, list)
        and metrics
        and all(m in known for m in metrics)
        and len(set(metrics)) == len(metrics),
        where,
        "metrics",
        metrics,
        f"a list of some of {known}, each once",
    )
    if KINDS[kind].input == "dataset":
        for key in ("dataset", "file"):
            _need(bool(tree.get(key)), where, key, tree.get(key), "a name, not empty")
    _check_kind(where, kind, tree)
    options = {key: tree.get(key, default) for key, default in KINDS[kind].keys.items()}
    return Task(path.stem, kind, tree["label"], tree["about"], tuple(metrics), options)


# Each task's entry, parsed from its file on the first get() of it, by directory and name
# (another $NANOGPTX_TASKS in the same process reads its own files).
REGISTRY: dict[tuple[Path, str], Task] = {}


def get(name: str) -> Task:
    """The entry for name, from its file alone; an unknown name raises TaskError with the list
    of known ones, a malformed file TaskError naming it (other files are not read)."""
    key = (registry_dir().resolve(), name)
    if key not in REGISTRY:
        path = entry_file(name)
        if not (NAME.fullmatch(name) and path.is_file()):
            raise TaskError(
                f"unknown eval task {name!r}{suggest(name, names())}; known tasks: "
                f"{', '.join(names())} (files in {registry_dir()})"
            )
        REGISTRY[key] = parse(path)
    return REGISTRY[key]


def _order(name: str) -> tuple[int, int, str]:
    """Tasks first, then groups, then the groups' members (CORE's 22 after the rest)."""
    try:
        kind = get(name).kind
    except TaskError:
        return 3, 0, name  # a broken file: last
    member = any(name in get(g).options["tasks"] for g in _groups())
    return (2 if member else int(kind == "group")), list(KINDS).index(kind), name


def _files() -> list[str]:
    """The names of the registry's task files (`my task.toml` is no task's name: not one)."""
    paths = registry_dir().glob("*.toml")
    return sorted(p.stem for p in paths if NAME.fullmatch(p.stem) and p.is_file())


def _groups() -> list[str]:
    out = []
    for name in _files():
        try:
            if get(name).kind == "group":
                out.append(name)
        except TaskError:
            continue
    return out


def names() -> list[str]:
    """Every task of the registry, in the order tables show them: tasks by kind, then by name;
    then groups; then the groups' members."""
    return sorted(_files(), key=_order)


def in_order(tasks: list[str]) -> list[str]:
    """tasks in the order tables show them (as names()), any the registry lacks last."""
    rank = {name: i for i, name in enumerate(names())}
    return sorted(tasks, key=lambda name: (rank.get(name, len(rank)), name))


def expand(tasks: tuple[str, ...] | list[str]) -> list[str]:
    """The tasks that eval.tasks runs: a group's members in its place, each task once (a member
    without a centered accuracy, a group among them, is a TaskError naming the group's file)."""
    out: dict[str, None] = {}
    for name in tasks:
        task = get(name)
        if task.kind != "group":
            out[name] = None
            continue
        for member in task.options["tasks"]:
            try:
                scored = get(member)
            except TaskError as e:
                raise TaskError(f"{entry_file(name)}: tasks has {member!r}: {e}") from None
            if not scored.centered():
                raise TaskError(
                    f"{entry_file(name)}: tasks has {member!r}: expected tasks with a centered "
                    "accuracy (schema, language_modeling, multiple_choice of style core)"
                )
            out[member] = None
    return list(out)


def problem(
    tasks: tuple[str, ...], tokenizer: str | None, registry: bool = True, max_items: int = 0
) -> str:
    """What is wrong with an eval.tasks (empty: nothing), for config's checks: with registry,
    each task against its file, and against tokenizer (None: not known)."""
    if not tasks:
        return f"eval.tasks = []: expected at least one of {names()}"
    if len(set(tasks)) != len(tasks):
        return f"eval.tasks = {list(tasks)}: expected no task twice"
    if registry and (missing := _missing_inputs(tasks)):
        return missing
    for name in tasks if registry else ():
        if not NAME.fullmatch(name) or not entry_file(name).is_file():
            return f"eval.tasks = {name!r}: expected one of {names()}"
    try:
        scored = [get(name) for name in expand(tasks)] if registry else []
    except TaskError as e:
        return f"eval.tasks: {e}"
    for task in scored:
        name = task.name
        if 0 < max_items <= (shots := task.options.get("shots", 0)):
            return (
                f"eval.max_items = {max_items}: {name} draws {shots} few-shot examples per item "
                f"from the other items kept: expected 0 (all) or at least {shots + 1}"
            )
        needs = task.options.get("tokenizer", "")
        if tokenizer is not None and needs not in ("", tokenizer):
            return (
                f"eval.tasks has {name}, which is scored in {task.tokens()}, but "
                f'tokenizer.name = {tokenizer!r}: set tokenizer.name = "{needs}" or '
                f"remove {name} from eval.tasks"
            )
        if tokenizer == "char" and task.options.get("bos"):
            return (
                f"eval.tasks has {name}, which puts a BOS token before every row (bos = true "
                f"in {entry_file(name)}), but the character tokenizer has none: remove "
                f'{name} from eval.tasks or set tokenizer.name = "gpt2"'
            )
    return ""
