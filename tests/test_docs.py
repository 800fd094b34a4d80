"""The README and the pages under docs/: every link leads to a page and a heading that exist,
every page is linked from the README, and every page a message of the package names holds the
section it names."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from nanogptx import checkpoint, config, evaltasks, model, stagecode, tokenizer
from test_workflow import edit, make_workdir, planned_jobs

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").glob("*.md"))


def _anchor(heading: str) -> str:
    # GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens.
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _headings(page: Path) -> list[str]:
    lines = page.read_text("utf-8").split("\n")
    return [line.lstrip("#").strip() for line in lines if line.startswith("#")]


def test_every_link_of_the_readme_and_the_docs_leads_somewhere() -> None:
    broken = []
    for page in [ROOT / "README.md", *PAGES]:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text("utf-8")):
            if re.match(r"[a-z]+:", target):
                continue  # https: and the like
            name, _, anchor = target.partition("#")
            linked = (page.parent / name) if name else page
            if not linked.is_file():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and anchor not in {_anchor(h) for h in _headings(linked)}:
                broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, broken


def test_the_readme_links_every_page_of_docs() -> None:
    readme = (ROOT / "README.md").read_text("utf-8")
    assert PAGES, "docs/ holds the reference"
    assert [p.name for p in PAGES if f"](docs/{p.name})" not in readme] == []


# Where the code, the run files and the workflow point a reader: messages and comments.
POINTING = [
    *(ROOT / "src" / "nanogptx").glob("*.py"),
    *(ROOT / "config").glob("*.toml"),  # the runs (the registries' files: their bytes are params)
    *(ROOT / "workflow").rglob("*.smk"),
    ROOT / "Snakefile",
    *(ROOT / "benchmarks").glob("*.*"),
    *(ROOT / "profiles").rglob("*.yaml"),
    ROOT / ".ci" / "run",
]


def test_every_docs_section_the_package_names_exists() -> None:
    # Messages and comments say where to read on: "(docs/datasets.md: Offline use)", and
    # "(README: Tests)"; a section that moved from the README to docs/ leaves such a pointer
    # behind.
    named, readme = set(), set()
    for path in POINTING:
        text = path.read_text("utf-8")
        named |= set(re.findall(r"docs/(\w+\.md): ([A-Z][\w ]+)", text))
        readme |= {(path.name, s) for s in re.findall(r'\bREADME(?::|,? ")([^")]+)', text)}
    assert ("datasets.md", "Offline use") in named
    assert ("run", " Tests") in readme
    missing = [
        f"docs/{page}: {section}"
        for page, section in sorted(named)
        if not (ROOT / "docs" / page).is_file() or section not in _headings(ROOT / "docs" / page)
    ]
    missing += [
        f"{name}: README {section.strip()}"
        for name, section in sorted(readme)
        if section.strip() not in _headings(ROOT / "README.md")
    ]
    assert missing == []


def _commands(page: Path) -> list[str]:
    """The `python -m nanogptx.STAGE ...` commands of a page, continued lines joined."""
    text = page.read_text("utf-8").replace("\\\n", " ")
    return re.findall(r"python -m nanogptx\.\w+[^`\n|]*", text)


def test_every_stage_command_of_the_docs_takes_the_run_file() -> None:
    # A stage that reads a run's settings, run without the run's file, runs the defaults:
    # GPT-2 124M for 600,000 steps (the README's table of stages did, once).
    readers = [f"python -m nanogptx.{stage} " for stage in config.STAGE_SECTIONS]
    commands = [c for page in [ROOT / "README.md", *PAGES] for c in _commands(page)]
    runs = [c for c in commands if c.startswith(tuple(readers)) and "--out" in c]
    assert len(runs) >= 5, runs
    assert [c for c in runs if "--config" not in c] == []


def _worked_example(start: str, end: str) -> dict[str, str]:
    """{path: text} of the files a worked example of docs/pipeline.md writes: its indented
    blocks between two phrases, each file after a `# PATH` line."""
    page = (ROOT / "docs" / "pipeline.md").read_text("utf-8")
    part = page[page.index(start) : page.index(end)]
    code = "\n".join(line[4:] for line in part.split("\n") if line.startswith("    ") or not line)
    pieces = re.split(
        r"^# ((?:src|workflow|config|Snakefile)\S*?),?(?: in \w+)?$", code, flags=re.M
    )
    files = zip(pieces[1::2], pieces[2::2], strict=True)
    return {path: text.strip("\n") + "\n" for path, text in files}


def test_the_pipeline_pages_worked_examples_plan_and_run_as_it_says(tmp_path: Path) -> None:
    # docs/pipeline.md: a toy stage and a toy multiple-choice task, each "added in one place".
    work = make_workdir(tmp_path)
    shutil.copytree(ROOT / "src", work / "src", ignore=shutil.ignore_patterns("*.egg-info"))
    stage = _worked_example("A toy stage", "`snakemake --cores all charcount")
    task = _worked_example("A toy multiple-choice", "`snakemake --cores all --config runs=tiny`")
    assert sorted(stage) == ["Snakefile", "src/nanogptx/charcount.py", "workflow/rules/model.smk"]
    (work / "src/nanogptx/charcount.py").write_text(stage["src/nanogptx/charcount.py"])
    with open(work / "workflow/rules/model.smk", "a") as f:
        f.write("\n\n" + stage["workflow/rules/model.smk"])
    entry = '    "export": ("train", of_run(rules.export_run.output.weights), False),\n'
    edit(work / "Snakefile", entry, entry + stage["Snakefile"])
    for path, text in task.items():
        if path == "config/tiny.toml":
            with open(work / path, "a") as f:
                f.write("\n" + text)  # "and in config/tiny.toml"
        else:
            (work / path).write_text(text)
    assert sorted(task) == [
        "config/datasets/toy-choice.jsonl",
        "config/datasets/toy-choice.toml",
        "config/tasks/toy-choice.toml",
        "config/tiny.toml",
    ]
    # One dry run for both: the new target, and the task's download and evaluation.
    jobs = planned_jobs(work, "charcount", "all", "--config", "runs=tiny")
    assert {"charcount_run", "eval_run"} <= set(jobs) and jobs["download_dataset"] == 2, jobs
    # status reads the stages from the workflow's files: the new one is listed in its place.
    cmd = [sys.executable, "-m", "nanogptx.status", "--runs", "tiny"]
    out = subprocess.run(cmd, cwd=work, capture_output=True, text=True, check=True).stdout
    assert out.startswith("tiny: download -, prepare -, train -, sample -, eval -, export -, "
                          "charcount -, report -"), out  # fmt: skip
    # The stage runs as its docstring says.
    (work / "samples").mkdir()
    (work / "samples" / "samples.txt").write_text("aab\n", "utf-8")
    env = {**os.environ, "PYTHONPATH": str(work / "src")}
    cmd = [sys.executable, "-m", "nanogptx.charcount", "--samples", "samples", "--out", "counts"]
    subprocess.run(cmd, cwd=work, env=env, check=True, timeout=120)
    assert json.loads((work / "counts" / "counts.json").read_text()) == {"a": 2, "b": 1, "\n": 1}


def test_the_rerun_tables_rows_for_code_are_made_from_the_stages_imports() -> None:
    # They were written by hand, and said a module reruns what its stage runs: a new module,
    # or a stage that starts importing one, left them wrong.
    page = (ROOT / "docs" / "workflow.md").read_text("utf-8")
    assert stagecode.code_table() in page, "docs/workflow.md: paste `python -m nanogptx.stagecode`"
    cells = [[c.strip() for c in row.strip("|").split("|")] for row in stagecode.code_rows()]
    marks = {row[0]: row[1:] for row in cells}  # download, prepare, train, sample, eval
    assert marks["`sample.py`"] == ["", "", "", "yes", ""]  # eval does not follow sample
    train = next(row for cell, row in marks.items() if "`train.py`" in cell)
    assert train == ["", "", "yes", "yes", "yes"]  # and through its outputs, sample and eval


def _indented_block(page: Path, containing: str) -> str:
    """The indented code block of page that holds containing, dedented, continued lines joined."""
    blocks = re.findall(r"(?:^ {4}.*\n)+", page.read_text("utf-8"), re.M)
    [block] = [b for b in blocks if containing in b]
    return "\n".join(line[4:] for line in block.strip("\n").split("\n")).replace("\\\n", " ")


def _bash(work: Path, command: str, check: bool = True) -> subprocess.CompletedProcess:
    """command as a user types it in work, the package of this checkout installed."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_DATASETS_OFFLINE": "1"}
    env["HF_HUB_OFFLINE"] = "1"  # the harness's tasks never look for the hub
    r = subprocess.run(["bash", "-c", command], cwd=work, env=env, capture_output=True,
                       text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0 or not check, f"{command}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="module")
def core_walk(tmp_path_factory: pytest.TempPathFactory, gpt2_offline: None) -> Path:
    """A clone as docs/evaluation.md's "A first CORE, offline" leaves it, by its own commands:
    config/tiny-gpt2.toml (tiny in GPT-2 tokens with the page's [eval] section), a mirror
    holding the synthetic bundle, the bundle downloaded from it; a random model of that run
    in results/tiny-gpt2/model instead of the training (minutes)."""
    page = ROOT / "docs" / "evaluation.md"
    tmp = tmp_path_factory.mktemp("core-walk")
    (tmp / "shared").symlink_to(ROOT.parent / "shared")  # ../shared beside the clone
    (tmp / "clone").mkdir()
    work = make_workdir(tmp / "clone")
    for name in ("src", "tests"):
        (work / name).symlink_to(ROOT / name)
    run = (ROOT / "config" / "tiny.toml").read_text("utf-8")
    assert '[tokenizer]\nname = "char"' in run
    run = run.replace('[tokenizer]\nname = "char"', '[tokenizer]\nname = "gpt2"')  # "set name"
    section = _indented_block(page, "max_items = 20")  # "and add"
    (work / "config" / "tiny-gpt2.toml").write_text(run + "\n" + section + "\n", "utf-8")
    cfg = config.load(work / "config" / "tiny-gpt2.toml", ["model.vocab_size=50257"])
    params = model.init_params(cfg.model, 50257, jax.random.key(0))
    checkpoint.save_model(work / "results/tiny-gpt2/model", params, cfg,
                          tokenizer.gpt2().identity(), 0)  # fmt: skip
    # The mirror: the page's commands but the copy of the real bundle, the synthetic one instead
    # ("in place of the copy above"); tiktoken's files are seeded by conftest.
    offline = _indented_block(page, "mkdir -p mirror/").split("\n")
    synthetic = _indented_block(page, "corebundle.mirror(")
    for command in offline:
        if command.startswith(("mkdir", "cp ../shared")):
            _bash(work, command)
        elif command.startswith("cp "):
            _bash(work, synthetic)
    _bash(work, _download_command(page))
    return work


def _download_command(page: Path) -> str:
    [command] = re.findall(r"`(python -m nanogptx\.download --dataset eval-bundle [^`]*)`",
                           page.read_text("utf-8"))  # fmt: skip
    return command


def test_the_core_how_to_runs_offline_on_the_synthetic_bundle(core_walk: Path) -> None:
    # docs/evaluation.md's commands, keys and quoted messages, as a newcomer met them: its eval
    # command lacked --data for the val_loss its own [eval] example names, and its metrics.json
    # keys were not the file's.
    page = ROOT / "docs" / "evaluation.md"
    text = " ".join(page.read_text("utf-8").split())
    download = _download_command(page)
    block = _indented_block(page, "python -m nanogptx.eval").replace("RUN", "tiny-gpt2")
    [command] = [line for line in block.split("\n") if line.startswith("python -m nanogptx.eval")]
    out = _bash(core_walk, command)
    assert re.search(r"core: CORE -?\d\.\d+ over 22 tasks", out.stdout + out.stderr)
    metrics = json.loads(next((core_walk / "results/tiny-gpt2").glob("*/metrics.json")).read_text())
    listed = text[text.index("holds an entry per task") : text.index('and an entry `"core"`')]
    task_keys = set(re.findall(r"`(\w+)`", listed))
    assert {k: set(v) for k, v in metrics.items() if k.startswith("core-")} == {
        f"core-{t.label}": task_keys for t in map(evaltasks.get, evaltasks.expand(("core",)))
    }
    group = re.search(r'an entry `"core"` for the group: `(\{[^`]*\})`', text)[1]
    assert set(re.findall(r'"(\w+)":', group)) == set(metrics["core"])
    assert metrics["core"]["cut"] is False and metrics["core"]["tasks"] == 22
    # The refusals the page quotes: a cut below the shots, a character run.
    short = _bash(core_walk, command.replace("max_items=100", "max_items=4"), check=False)
    quoted = re.search(r"\(`(core-jeopardy: 10 few-shot [^`]*)`\)", text)[1]
    assert short.returncode != 0 and quoted in " ".join(short.stderr.split())
    # Another bundle after the synthetic one's pin (a baseline changed: other bytes), into a
    # new directory: the lock refuses it as the page says.
    corebundle = pytest.importorskip("corebundle", reason="the synthetic bundle of issue 26")
    corebundle.mirror(core_walk / "other", {"piqa": 50.5})
    fresh = download.replace("data/raw/eval-bundle", "fresh").replace("r mirror", "r other")
    assert "--out fresh" in fresh and "--mirror other" in fresh  # a new directory, the lock kept
    other = _bash(core_walk, fresh, check=False)
    quoted = re.search(r"the stage stops: `(eval-bundle/eval_bundle\.zip: [^`]*)`", text)[1]
    assert other.returncode != 0
    assert re.search(re.escape(quoted).replace(r"\.\.\.", ".*"), " ".join(other.stderr.split()))
    char = (ROOT / "config" / "tiny.toml").read_text() + '\n[eval]\ntasks = ["core"]\n'
    (core_walk / "config" / "tiny-char.toml").write_text(char)
    with pytest.raises(config.ConfigError) as e:
        config.load(core_walk / "config" / "tiny-char.toml")
    for part in re.search(r"\(`(eval\.tasks has core-[^`]*)`\)", text)[1].split("..."):
        assert part.strip(", ") in str(e.value)


def test_the_harness_pages_local_task_runs_offline(core_walk: Path) -> None:
    # docs/harness.md's task from a local jsonl file, on the bundle the CORE how-to unpacked,
    # through its command: the hub is out of reach here, as for a user without internet.
    pytest.importorskip("lm_eval", reason="the harness extra: pip install -e '.[harness]'")
    page = ROOT / "docs" / "harness.md"
    task = _indented_block(page, "task: my_piqa")
    assert task.startswith("# tasks/my_piqa.yaml\n")
    (core_walk / "tasks").mkdir(exist_ok=True)
    (core_walk / "tasks" / "my_piqa.yaml").write_text(task, "utf-8")
    command = _indented_block(page, "--tasks my_piqa").replace("RUN", "tiny-gpt2")
    out = _bash(core_walk, command).stdout
    assert re.search(r"\|my_piqa\s*\|.*\|\s*0\|acc\s*\|", out), out
    assert re.search(r"\|\s*\|.*\|\s*0\|acc_norm\|", out), out
