"""The whole pipeline on the `tiny` run: four stages end to end, what reruns after an edit of a
config section or of a stage's code, the report, and the workflow's lint."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from test_workflow import ROOT, edit, make_workdir, planned_jobs, snakemake


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, assets: Path):
    """A workdir where `snakemake --config runs=tiny` has run to the end; with a copy of src/,
    whose files the workflow hashes to see code changes."""
    workdir = make_workdir(tmp_path_factory.mktemp("pipeline"))
    shutil.copytree(ROOT / "src", workdir / "src", ignore=shutil.ignore_patterns("*.egg-info"))
    snakemake(workdir, "--config", "runs=tiny", f"mirror={assets}")
    return workdir


def test_tiny_run_goes_through_all_four_stages(tiny: Path) -> None:
    results = tiny / "results/tiny"
    for stage, out in [("train", results / "model"), ("sample", results / "samples")]:
        assert json.loads((out / "provenance.json").read_text())["stage"] == stage
    samples = (results / "samples/samples.txt").read_text()
    assert len(samples) > 200 and "---" in samples
    evals = [
        json.loads(line)
        for line in (results / "model/metrics.jsonl").read_text().splitlines()
        if '"eval"' in line
    ]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 1.0  # it learned something
    prov = json.loads((results / "samples/provenance.json").read_text())
    assert any(e["sha256"] for e in prov["inputs"])


def test_second_invocation_starts_no_job(tiny: Path) -> None:
    assert planned_jobs(tiny, "--config", "runs=tiny") == {}


@pytest.mark.parametrize(
    ("section_edit", "expected"),
    [
        (("num_samples = 2", "num_samples = 3"), {"sample_run", "report_run", "all"}),
        (("n_embd = 64", "n_embd = 32"), {"train_run", "sample_run", "report_run", "all"}),
        (
            ("learning_rate = 1e-2", "learning_rate = 5e-3"),
            {"train_run", "sample_run", "report_run", "all"},
        ),
    ],
)
def test_config_edit_reruns_only_the_stages_that_read_it(
    tiny: Path, section_edit: tuple[str, str], expected: set[str]
) -> None:
    toml = tiny / "config/tiny.toml"
    original = toml.read_text()
    try:
        edit(toml, *section_edit)
        assert set(planned_jobs(tiny, "--config", "runs=tiny")) == expected
    finally:
        toml.write_text(original)


@pytest.mark.parametrize(
    ("module", "expected"),
    [
        ("sample.py", {"sample_run", "report_run", "all"}),
        ("model.py", {"train_run", "sample_run", "report_run", "all"}),
        ("tokenizer.py", {"prepare_dataset", "train_run", "sample_run", "report_run", "all"}),
    ],
)
def test_code_edit_reruns_the_stages_that_run_it(tiny: Path, module: str, expected: set) -> None:
    source = tiny / "src/nanogptx" / module
    original = source.read_text()
    try:
        source.write_text(original + "\n# an edit\n")
        assert set(planned_jobs(tiny, "--config", "runs=tiny")) == expected
    finally:
        source.write_text(original)


def test_report_holds_curves_samples_configs_and_provenance_chain(tiny: Path) -> None:
    snakemake(tiny, "--config", "runs=tiny", "--report", "report.html")
    page = (tiny / "report.html").read_text()
    for needle in [
        "loss.svg",
        "samples.txt",
        "config.toml",
        "provenance.html",
        "Loss curves of run",
        "provenance chain of run",
    ]:
        assert needle in page, needle
    svg = (tiny / "results/tiny/report/loss.svg").read_text()
    assert svg.count("<polyline") == 4  # train and val, against steps and against tokens
    chain = (tiny / "results/tiny/report/provenance.html").read_text()
    raw_sha = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
    params_sha = json.loads((tiny / "results/tiny/model/provenance.json").read_text())
    params_sha = next(
        o["sha256"] for o in params_sha["outputs"] if o["path"].endswith("params.safetensors")
    )
    assert raw_sha in chain and params_sha in chain
    assert re.search(r"train_000000\.npy", chain)


def test_lint_is_clean(tiny: Path) -> None:
    r = snakemake(tiny, "--lint", "--config", "runs=tiny", check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Lints for" not in r.stdout + r.stderr


def test_snakefiles_are_formatted_with_snakefmt() -> None:
    files = [str(ROOT / "Snakefile"), *map(str, sorted((ROOT / "workflow/rules").glob("*.smk")))]
    r = subprocess.run(
        [sys.executable, "-m", "snakefmt", "--check", *files],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
