"""The whole pipeline on the `tiny` run: four stages end to end, what reruns after an edit of a
config section or of a stage's code, the report, and the workflow's lint."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import report_browser
from test_workflow import ROOT, edit, make_workdir, planned_jobs, snakemake


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, assets: Path):
    """A workdir where `snakemake --config runs=tiny` has run to the end; with a copy of src/,
    whose files the workflow hashes to see code changes."""
    workdir = make_workdir(tmp_path_factory.mktemp("pipeline"))
    shutil.copytree(ROOT / "src", workdir / "src", ignore=shutil.ignore_patterns("*.egg-info"))
    r = snakemake(workdir, "--config", "runs=tiny", f"mirror={assets}")
    (workdir / "snakemake.stderr").write_text(r.stderr)
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


def test_the_terminal_shows_training_progress_and_the_log_path(tiny: Path) -> None:
    terminal = (tiny / "snakemake.stderr").read_text()
    line = "train tiny (log results/logs/train/tiny.log): step 300/300, loss "
    assert line in terminal and "tok/s, ETA 0:00" in terminal, terminal[-2000:]
    assert line not in (tiny / "results/logs/train/tiny.log").read_text()  # the log: full lines
    # Download and prepare tell the terminal too: per file, and tokens, documents and rate.
    assert re.search(r"download tinyshakespeare: \S+/input.txt: done.*sha256", terminal)
    prepare = r"prepare tinyshakespeare-char-\w+: [\d,]+ tokens, [\d,]+ documents, [\d,]+ tokens/s"
    assert re.search(prepare, terminal), terminal[-3000:]
    # Sample and eval too, from their start (they were silent through their compiles).
    sample = "sample tiny (log results/logs/sample/tiny.log): "
    assert f"{sample}compiling the generation loop ..." in terminal, terminal[-3000:]
    generating = "generating 2 samples of 200 tokens after a prompt of 1 token: done in 0:0"
    assert f"{sample}{generating}" in terminal
    evals = "eval tiny (log results/logs/eval/tiny.log): val_loss windows: "
    assert f"{evals}0/1,742, 0:00 in" in terminal and f"{evals}1,742/1,742 (" in terminal


def test_the_eval_stage_measures_the_whole_val_split(tiny: Path) -> None:
    metrics = json.loads((tiny / "results/tiny/eval/metrics.json").read_text())["val_loss"]
    assert metrics["whole_split"] and metrics["windows"] == (111_540 - 1) // 64
    assert 0 < metrics["bits_per_byte"] < 8 and "whole val split" in metrics["method"]
    page = (tiny / "results/tiny/report/eval.html").read_text()
    assert f"{metrics['loss']:.4f}" in page


def test_second_invocation_starts_no_job(tiny: Path) -> None:
    assert planned_jobs(tiny, "--config", "runs=tiny") == {}


@pytest.mark.parametrize(
    ("section_edit", "expected"),
    [
        (("num_samples = 2", "num_samples = 3"), {"sample_run", "report_run", "all"}),
        (
            ("n_embd = 64", "n_embd = 32"),
            {"train_run", "sample_run", "eval_run", "report_run", "all"},
        ),  # fmt: skip
        (  # a model variant
            ("dropout = 0.0", 'dropout = 0.0\nposition = "rope"'),
            {"train_run", "sample_run", "eval_run", "report_run", "all"},
        ),
        (
            ("learning_rate = 1e-2", "learning_rate = 5e-3"),
            {"train_run", "sample_run", "eval_run", "report_run", "all"},
        ),
        (  # the eval section: evaluation only
            ("log_interval = 25", "log_interval = 25\n\n[eval]\nmax_windows = 10"),
            {"eval_run", "report_run", "all"},
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


EVERY_STAGE = {
    "download_dataset",
    "prepare_dataset",
    "train_run",
    "sample_run",
    "eval_run",
    "report_run",
    "all",
}


@pytest.mark.parametrize(
    ("module", "expected"),
    [
        ("sample.py", {"sample_run", "report_run", "all"}),
        ("model.py", {"train_run", "sample_run", "eval_run", "report_run", "all"}),
        (
            "tokenizer.py",
            {"prepare_dataset", "train_run", "sample_run", "eval_run", "report_run", "all"},
        ),  # fmt: skip
        ("report.py", {"report_run", "all"}),
        ("config.py", EVERY_STAGE),  # every stage parses its config with it
        ("datasets.py", EVERY_STAGE),  # config.py checks data.dataset against the registry
        ("evaltasks.py", EVERY_STAGE),  # and eval.tasks against the task registry
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


def test_a_config_edit_is_named_with_its_values_in_the_dry_run(tiny: Path) -> None:
    toml = tiny / "config/tiny.toml"
    original = toml.read_text()
    try:
        edit(toml, "learning_rate = 1e-2", "learning_rate = 3e-3")
        out = snakemake(tiny, "-n", "--config", "runs=tiny").stdout
        reason = next(line for line in out.splitlines() if "Params have changed" in line)
        assert reason.endswith(
            "before: 'train.learning_rate=0.01' now: 'train.learning_rate=0.003' "
        )
    finally:
        toml.write_text(original)


def test_a_retraining_cut_short_reruns_with_the_stages_after_it(tiny: Path) -> None:
    """An edit reruns train, and its job is cut short (here: its checkpoint directory is a file;
    a kill or Ctrl-C does the same): Snakemake deletes the job's outputs, the model. Its samples
    and evaluation of the earlier model were left, looked up to date, and the same command then
    planned nothing: the edit was never trained. (docs/workflow.md: After a kill.)"""
    toml, model = tiny / "config/tiny.toml", tiny / "results/tiny/model"
    meta, kept = tiny / ".snakemake/metadata", tiny / "kept"
    original = toml.read_text()
    # The model and Snakemake's records as they were (copy2 keeps the times), for the tests after.
    shutil.copytree(model, kept / "model")
    shutil.copytree(meta, kept / "metadata")
    try:
        edit(toml, "learning_rate = 1e-2", "learning_rate = 5e-3")
        out = snakemake(tiny, "-n", "--config", "runs=tiny").stdout
        cut = tiny / re.search(r"--checkpoints (results/tiny/checkpoints/\w+)", out)[1]
        cut.parent.mkdir(parents=True, exist_ok=True)
        cut.write_text("not a directory")
        r = snakemake(tiny, "--config", "runs=tiny", check=False)
        assert r.returncode != 0 and not (model / "params.safetensors").exists(), r.stdout
        assert (tiny / "results/tiny/samples/samples.txt").exists()  # of the earlier model
        cut.unlink()
        for target in ([], ["sample"], ["eval"], ["train"]):
            assert "train_run" in planned_jobs(tiny, *target, "--config", "runs=tiny"), target
        assert {"sample_run", "eval_run"} <= set(planned_jobs(tiny, "--config", "runs=tiny"))
    finally:
        toml.write_text(original)
        for path in (model, meta):
            shutil.rmtree(path, ignore_errors=True)
            (kept / path.name).rename(path)
    assert planned_jobs(tiny, "--config", "runs=tiny") == {}


@pytest.mark.slow  # about 14 s
def test_prepared_data_is_shared_whatever_runs_are_selected(tiny: Path) -> None:
    """The prepared data of tiny is the same as shakespeare-char's and the sweep runs': no
    selection or order of them re-tokenizes it, and none makes tiny's jobs stale."""
    unverified = tiny / "config/tiny-unverified.toml"
    unverified.write_text((tiny / "config/tiny.toml").read_text() + "\n")
    edit(unverified, "[data]\n", "[data]\nallow_unverified = true\n")  # same bytes: same id
    try:
        for runs in [
            "runs=shakespeare-char",
            "runs=[shakespeare-char,tiny]",
            "runs=[tiny,shakespeare-char]",
            "runs=[sweep-lr-3e-3,tiny,sweep-lr-1e-3]",
        ]:
            assert planned_jobs(tiny, "prepare", "--config", runs) == {}, runs
        snakemake(tiny, "prepare", "--config", "runs=[shakespeare-char,tiny-unverified]")
        assert planned_jobs(tiny, "--config", "runs=tiny") == {}
    finally:
        unverified.unlink()


@pytest.mark.slow  # about 35 s; resuming itself is tested in test_train.py
def test_an_extended_run_resumes_from_its_checkpoints_and_says_so(tiny: Path) -> None:
    run = tiny / "config/tiny-extended.toml"
    text = (tiny / "config/tiny.toml").read_text()
    run.write_text(text.replace("max_iters = 300", "max_iters = 200").replace(
        "lr_decay_iters = 300", "lr_decay_iters = 200"))  # fmt: skip
    snakemake(tiny, "train", "--config", "runs=tiny-extended")
    run.write_text(text)  # 300 steps, the schedule stretched to match
    status = subprocess.run(
        [sys.executable, "-m", "nanogptx.status", "--runs", "tiny-extended,tiny"],
        cwd=tiny, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    extended, done = status.split("\ntiny:")
    assert "tiny-extended: download done, prepare done, train done" in extended
    assert "training in progress or stopped: step 200 of 300" in extended
    assert re.search(r"resumes from \S+/step_00000200", extended), status
    assert "sample done" in done and "training finished: step 300 of 300" in done, status
    assert "eval done" in done and "eval: val loss" in status, status
    out = snakemake(tiny, "-n", "train", "--config", "runs=tiny-extended").stdout
    assert "'train.max_iters=200'" in out and "'train.max_iters=300'" in out
    snakemake(tiny, "train", "--config", "runs=tiny-extended")
    log = (tiny / "results/logs/train/tiny-extended.log").read_text()
    assert re.search(r"resumed from \S+/step_00000200 at step 200 of 300", log), log
    assert "train.max_iters: 200 -> 300, train.lr_decay_iters: 200 -> 300" in log
    assert "the learning-rate schedule changed (train.lr_decay_iters 200 -> 300)" in log
    lines = (tiny / "results/tiny-extended/model/metrics.jsonl").read_text().splitlines()
    steps = [r["step"] for r in map(json.loads, lines) if r["kind"] == "train"]
    assert steps == sorted(set(steps)) and steps[0] == 0 and steps[-1] == 299
    # Changing only how it logs: nothing left to train, the model is written again.
    edit(run, "log_interval = 25", "log_interval = 50")
    snakemake(tiny, "train", "--config", "runs=tiny-extended")
    log = (tiny / "results/logs/train/tiny-extended.log").read_text()
    assert "at step 300 of 300" in log and "logging.log_interval: 25 -> 50" in log
    run.unlink()


def status(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nanogptx.status", *args], cwd=workdir,
                          capture_output=True, text=True, check=check)  # fmt: skip


def test_status_takes_the_runs_as_snakemake_does(tiny: Path) -> None:
    """`--config runs=...` or `sweep=NAME` (it showed config/config.yaml's runs only)."""
    from nanogptx import config, sweep

    out = status(tiny, "--config", "runs=[tiny]").stdout
    assert out.startswith("tiny: download done, prepare done, train done, sample done, eval done")
    assert (
        status(tiny, "--config", "runs=tiny").stdout == out == status(tiny, "--runs", "tiny").stdout
    )
    path = tiny / "config/sweeps/status.toml"
    path.parent.mkdir(exist_ok=True)
    path.write_text('base = "tiny"\n[axes]\n"train.learning_rate" = [1e-3, 3e-3]\n')
    try:
        out = status(tiny, "--config", "sweep=status").stdout
        points = sweep.expand(sweep.load("status", path.parent))
        for name, overrides in points.items():  # each point with its own settings
            ckpt = config.checkpoint_id(config.load(tiny / "config/tiny.toml", overrides))
            assert f"{name}: download done, prepare done, train -" in out
            assert f"no checkpoint in results/{name}/checkpoints/{ckpt}:" in out, out
    finally:
        path.unlink()
    r = status(tiny, "--config", "run=tiny", check=False)
    assert (
        r.returncode == 2
        and "--config run=tiny: expected KEY=VALUE with KEY one of runs" in r.stderr
    )


def test_sample_and_eval_declare_every_file_they_read(tiny: Path) -> None:
    tokenizer = tiny / "results/tiny/model/tokenizer.json"
    original = tokenizer.read_bytes()
    tokenizer.write_bytes(original + b"\n")  # other bytes, same meaning
    try:
        expected = {"sample_run", "eval_run", "report_run", "all"}
        assert set(planned_jobs(tiny, "--config", "runs=tiny")) == expected
    finally:
        tokenizer.write_bytes(original)
    assert planned_jobs(tiny, "--config", "runs=tiny") == {}


@pytest.mark.slow  # about 20 s
def test_killed_snakemake_then_the_same_command_resumes(tiny: Path) -> None:
    """SIGKILL to Snakemake and its jobs mid-training: after `snakemake --unlock` (the stale
    lock is Snakemake's own; docs/workflow.md), the same command reruns the cut job (the profile's
    rerun-incomplete), which resumes from its checkpoint."""
    run = tiny / "config/tiny-killed.toml"
    run.write_text(
        (tiny / "config/tiny.toml").read_text().replace("max_iters = 300", "max_iters = 250")
    )
    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", "train", "--config",
           "runs=tiny-killed"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=tiny, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    deadline = time.time() + 300
    while not list((tiny / "results/tiny-killed/checkpoints").glob("*/step_00000100")):
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    r = snakemake(tiny, "train", "--config", "runs=tiny-killed", check=False)
    assert r.returncode != 0 and "--unlock" in r.stdout + r.stderr
    snakemake(tiny, "--unlock")
    # The same command (an IncompleteFilesException without rerun-incomplete).
    snakemake(tiny, "train", "--config", "runs=tiny-killed")
    log = (tiny / "results/logs/train/tiny-killed.log").read_text()
    assert re.search(r"resumed from \S+/step_00000\d00 at step \d00 of 250", log), log
    run.unlink()


def test_report_holds_curves_samples_configs_and_provenance_chain(tiny: Path) -> None:
    snakemake(tiny, "--config", "runs=tiny", "--report", "report.html")
    page = (tiny / "report.html").read_text()
    for needle in [
        "loss.svg",
        "samples.html",  # samples and config as pages shown inline, not .txt/.toml downloads
        "config.html",
        "eval.html",
        "provenance.html",
        "Loss curves of run",
        "provenance chain of run",
        "GPT language models trained in pure JAX",  # the workflow description on the home page
    ]:
        assert needle in page, needle
    samples = (tiny / "results/tiny/samples/samples.txt").read_text()
    first = samples.splitlines()[0]
    assert html.escape(first) in (tiny / "results/tiny/report/samples.html").read_text()
    assert "[model]" in (tiny / "results/tiny/report/config.html").read_text()
    svg = (tiny / "results/tiny/report/loss.svg").read_text()
    # Its size in pixels (an <img> in the report has none otherwise), narrowed to the window.
    w, h = re.search(r'width="(\d+)" height="(\d+)" viewBox="0 0 (\1) (\2)"', svg).groups()[:2]
    assert int(w) > 900 and int(h) > 500 and "max-width:100%" in svg
    # The home page names the runs as words, not as a Python list.
    assert re.search(r"of this report,(\s|\\n)+tiny:", page) and "['tiny']" not in page
    # Train and val against steps and against tokens; the diagnostics (logging.stats_interval)
    # below them: attention logit, parameter, gradient and relative update RMS for each of the
    # 2 layers, and log Z.
    assert svg.count('<g id="curve-') == 4 + 4 * 2 + 1
    assert "largest attention logit" in svg and "mean log Z" in svg and "gradient RMS" in svg
    chain = (tiny / "results/tiny/report/provenance.html").read_text()
    raw_sha = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
    params_sha = json.loads((tiny / "results/tiny/model/provenance.json").read_text())
    params_sha = next(
        o["sha256"] for o in params_sha["outputs"] if o["path"].endswith("params.safetensors")
    )
    assert raw_sha in chain and params_sha in chain
    assert re.search(r"train_000000\.npy", chain)


@pytest.fixture(scope="session")
def chromium() -> str:
    exe = report_browser.chromium()
    if exe is None:
        pytest.skip("chromium is not installed: the report's figures are checked as a reader "
                    "sees them, in headless Chromium (Debian: apt-get install chromium; .ci/run "
                    "installs it)")  # fmt: skip
    return exe


def check_shown(report: Path, expected: set[str]) -> None:
    """Every result of the report, opened in Chromium as its buttons open it, is shown at a
    visible size; every figure has drawn pixels (a loss figure was a 0 x 0 <img>)."""
    shown = report_browser.measure(report)
    assert expected <= {r["path"] for r in shown}, shown
    for r in shown:
        assert r["found"] and r["width"] >= 400 and r["height"] >= 200, r
        if r["figure"]:
            assert r["drawn"] >= 0.01 * r["width"] * r["height"], r


def test_every_figure_and_page_of_the_report_is_shown_in_a_browser(
    tiny: Path, chromium: str
) -> None:
    snakemake(tiny, "--config", "runs=tiny", "--report", "report-browser.html")
    pages = ("loss.svg", "samples.html", "config.html", "eval.html", "provenance.html")
    check_shown(tiny / "report-browser.html", {f"results/tiny/report/{p}" for p in pages})


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


@pytest.mark.slow  # about 11-15 s
def test_a_dataset_is_a_data_file_adding_one_reruns_nothing_else_and_local_files_work(
    tiny: Path,
) -> None:
    # A user's own corpus on disk, declared in config/datasets/ with no hash: accepted, its
    # sha256 recorded. Adding it plans only the new run's jobs.
    corpus = tiny / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("To be, or not to be, that is the question.\n" * 300)
    (corpus / "b.txt").write_text("Whether 'tis nobler in the mind to suffer.\n" * 300)
    entry = tiny / "config/datasets/my-corpus.toml"
    entry.write_text('about = "two plays"\nreader = "text"\nlocal_dir = "corpus"\n')
    run = tiny / "config/mine.toml"
    run.write_text((tiny / "config/tiny.toml").read_text().replace(
        'dataset = "tinyshakespeare"', 'dataset = "my-corpus"'))  # fmt: skip
    try:
        assert planned_jobs(tiny, "--config", "runs=tiny") == {}
        assert planned_jobs(tiny, "prepare", "--config", "runs=tiny,mine") == {
            "download_dataset": 1, "prepare_dataset": 1, "prepare": 1,
        }  # fmt: skip
        snakemake(tiny, "prepare", "--config", "runs=mine")
        prov = json.loads((tiny / "data/raw/my-corpus/provenance.json").read_text())
        assert [(Path(e["path"]).name, e["check"]) for e in prov["outputs"]] == [
            ("a.txt", "local"), ("b.txt", "local"),
        ]  # fmt: skip
        # Editing one dataset's entry reruns that dataset's stages only.
        edit(entry, '"two plays"', '"two plays, one file each"')
        assert planned_jobs(tiny, "prepare", "--config", "runs=tiny,mine") == {
            "download_dataset": 1, "prepare_dataset": 1, "prepare": 1,
        }  # fmt: skip
        assert planned_jobs(tiny, "--config", "runs=tiny") == {}
    finally:
        entry.unlink()
        run.unlink()
        shutil.rmtree(corpus)
        shutil.rmtree(tiny / "data/raw/my-corpus", ignore_errors=True)


def test_a_malformed_dataset_file_is_refused_naming_file_and_key(tiny: Path) -> None:
    # Refused for the runs that use it; the others go on (it blocked every run).
    refused_for_its_runs_only(
        tiny, "config/datasets/broken.toml",
        'reader = "txt"\n[[files]]\nurl = "https://example.org/a.txt"\n',
        '[data]\ndataset = "broken"\n', "reader = 'txt': expected one of",
    )  # fmt: skip


def refused_for_its_runs_only(tiny: Path, entry: str, text: str, run: str, error: str) -> None:
    """A registry file `entry` holding text: tiny, which does not use it, plans nothing; a run
    file holding run (which names it) is refused by Snakemake naming the file and the error."""
    (tiny / entry).write_text(text)
    (tiny / "config/uses-it.toml").write_text(run)
    try:
        assert planned_jobs(tiny, "--config", "runs=tiny") == {}
        r = snakemake(tiny, "-n", "--config", "runs=[tiny,uses-it]", check=False)
        assert r.returncode != 0
        assert f"{entry}: {error}" in r.stdout + r.stderr
    finally:
        (tiny / entry).unlink()
        (tiny / "config/uses-it.toml").unlink()


def test_an_eval_task_is_a_data_file_an_edit_reruns_the_evaluations_that_use_it(
    tiny: Path,
) -> None:
    """config/tasks/NAME.toml: editing val_loss's file reruns tiny's evaluation (and its
    report), editing hellaswag's, which tiny does not evaluate, reruns nothing; a malformed
    task file is refused naming file and key, for the runs that use it only."""
    for task, expected in (("hellaswag", set()), ("val_loss", {"eval_run", "report_run", "all"})):
        entry = tiny / f"config/tasks/{task}.toml"
        original = entry.read_text()
        try:
            edit(entry, 'about = "', 'about = "edited: ')
            assert set(planned_jobs(tiny, "--config", "runs=tiny")) == expected
        finally:
            entry.write_text(original)
    refused_for_its_runs_only(
        tiny, "config/tasks/broken.toml", 'kind = "multiple_choice"\nlabels = "x"\n',
        '[eval]\ntasks = ["broken"]\n', "key = 'labels': expected one of",
    )  # fmt: skip


@pytest.mark.slow  # about 35-45 s; tests/test_sweep.py runs by default
def test_a_sweep_runs_to_its_report_with_a_diverged_point_and_an_added_point_runs_alone(
    tiny: Path,
) -> None:
    from nanogptx import config, sweep

    sweeps = tiny / "config/sweeps"
    sweeps.mkdir(exist_ok=True)
    path = sweeps / "mini.toml"
    # 30 steps, warmup 20: at learning rate 100 the loss blows up within the warmup.
    axes = '"train.max_iters" = [30]\n"train.learning_rate" = [1e-2, 100]\n'
    path.write_text(f'base = "tiny"\n[axes]\n{axes}"model.qk_norm" = [false, true]\n')
    try:
        points = sweep.expand(sweep.load("mini", sweeps))
        names = [
            "mini.max_iters-30.learning_rate-0.01.qk_norm-false",
            "mini.max_iters-30.learning_rate-0.01.qk_norm-true",
            "mini.max_iters-30.learning_rate-100.qk_norm-false",
            "mini.max_iters-30.learning_rate-100.qk_norm-true",
        ]
        assert list(points) == names
        cfgs = [config.load(tiny / "config/tiny.toml", o) for o in points.values()]
        assert len({config.data_id(c) for c in cfgs}) == 1  # one prepared dataset for all
        assert [c.train.learning_rate for c in cfgs] == [1e-2, 1e-2, 100, 100]
        assert planned_jobs(tiny, "train", "--config", "sweep=mini") == {"train_run": 4, "train": 1}
        # Without QK-norm, for real (tiny's prepared data reused): the point at learning rate
        # 100 diverges, is recorded as diverged, and the sweep goes on to its report.
        path.write_text(path.read_text().replace("[false, true]", "[false]"))
        r = snakemake(tiny, "sweep", "--config", "sweep=mini")
        assert "prepare" not in r.stderr.split("Job stats:")[1].split("total")[0]
        ok, bad = (tiny / "results" / names[i] for i in (0, 2))
        assert config.load(ok / "model/config.toml").train.max_iters == 30
        summary = json.loads((bad / "model/provenance.json").read_text())["summary"]
        step = summary["diverged"]["step"]
        assert 0 < step < 30 and summary["step"] < 30, summary
        records = [json.loads(line) for line in (bad / "model/metrics.jsonl").open()]
        assert [r["step"] for r in records if r["kind"] == "diverged"] == [step]
        log = (tiny / f"results/logs/train/{names[2]}.log").read_text()
        assert f"diverged at step {step}: " in log and "written as the run's result" in log
        assert json.loads((ok / "model/provenance.json").read_text())["summary"]["diverged"] is None
        for run in (ok, bad):
            assert (run / "eval/metrics.json").exists() and (run / "samples/samples.txt").exists()
        table = json.loads((tiny / "results/report/lr-sensitivity-sweep-mini.json").read_text())
        by_run = {p["run"]: p for p in table["points"]}
        assert by_run[names[2]]["diverged"] == step and by_run[names[0]]["diverged"] is None
        # The diverged point counts as L0, never as the best.
        assert table["best"] == table["variants"]["all"]["L_star"] == by_run[names[0]]["final"]
        rows = (tiny / "results/report/lr-sensitivity-sweep-mini.csv").read_text().splitlines()
        assert len(rows) == 3 and any(row.startswith(f"{names[2]},") for row in rows)
        svg = (tiny / "results/report/lr-sensitivity-sweep-mini.svg").read_text()
        assert f"diverged at step {step}" in svg
        # QK-norm added to the axis: only its two new points would run; the finished ones are
        # kept.
        path.write_text(path.read_text().replace("[false]", "[false, true]"))
        planned = planned_jobs(tiny, "sweep", "--config", "sweep=mini")
        assert planned["train_run"] == 2 and "prepare" not in planned, planned
        # The same plan as SLURM jobs (the cluster profile; a dry run submits nothing).
        slurm = planned_jobs(tiny, "--profile", "profiles/slurm", "sweep", "--config", "sweep=mini")
        assert slurm == planned
    finally:
        path.unlink()


@pytest.mark.slow  # about 30 s
def test_a_sweeps_strings_reach_every_file_through_the_workflow_character_for_character(
    tiny: Path,
) -> None:
    # Sweep values pass to the stages as shell words of the workflow's commands; train writes
    # them into the model's config.toml (which every later stage loads) and provenance.json.
    from nanogptx import config, sweep

    starts = ['ROMEO 😀: e\u0301 "q" \\n\n', "a b", "a_b"]
    name = "run 😀 \t\\ 'x'"
    path = tiny / "config/sweeps/strings.toml"
    path.write_text(
        f'base = "tiny"\n[axes]\n"train.max_iters" = [2]\n"sample.start" = '
        f"[{', '.join(map(config._toml_value, starts))}]\n"
        f'"logging.wandb_run_name" = [{config._toml_value(name)}]\n'
    )
    points = sweep.expand(sweep.load("strings", tiny / "config/sweeps"))
    try:
        assert len(points) == 3
        snakemake(tiny, "train", "--config", "sweep=strings")
        found = []
        for run in points:
            model = tiny / "results" / run / "model"
            cfg = config.load(model / "config.toml")
            assert cfg.logging.wandb_run_name == name
            recorded = json.loads((model / "provenance.json").read_text())["config"]
            assert recorded["logging"]["wandb_run_name"] == name
            found.append(cfg.sample.start)
        assert sorted(found) == sorted(starts)
    finally:
        path.unlink()
        for run in points:
            shutil.rmtree(tiny / "results" / run, ignore_errors=True)


@pytest.mark.slow  # about 40 s
def test_every_figure_of_a_sweep_report_is_shown_in_a_browser(tiny: Path, chromium: str) -> None:
    """The sweep's figures (loss curves side by side, final loss against learning rate, its
    diagnostics) in the report, as a reader opens them."""
    path = tiny / "config/sweeps/figures.toml"
    path.parent.mkdir(exist_ok=True)
    axes = '"train.max_iters" = [30]\n"logging.stats_interval" = [10]\n'
    path.write_text(f'base = "tiny"\n[axes]\n{axes}"train.learning_rate" = [1e-2, 3e-3]\n')
    try:
        snakemake(tiny, "sweep", "--config", "sweep=figures")
        snakemake(tiny, "sweep", "--config", "sweep=figures", "--report", "sweep.html")
        check_shown(tiny / "sweep.html", {
            "results/report/loss-sweep-figures.svg",
            "results/report/lr-sensitivity-sweep-figures.svg",
            "results/report/lr-sensitivity-sweep-figures-diagnostics.svg",
        })  # fmt: skip
    finally:
        path.unlink()


@pytest.mark.slow  # about 35 s
def test_a_second_snakemake_leaves_a_running_jobs_log_and_metrics_alone(tiny: Path) -> None:
    """With a training running, `snakemake --unlock` (what Snakemake's lock message suggests)
    and the same command again: the second Snakemake refuses before it starts any job. (Its job
    used to start: Snakemake deleted the running job's log and metrics.jsonl as that job's
    outputs, and the refused stage's log replaced the log.)"""
    run = tiny / "config/tiny-busy.toml"
    run.write_text((tiny / "config/tiny.toml").read_text().replace(
        "max_iters = 300", "max_iters = 1000000"))  # fmt: skip
    log = tiny / "results/logs/train/tiny-busy.log"
    metrics = tiny / "results/tiny-busy/model/metrics.jsonl"
    cmd = ["train", "--config", "runs=tiny-busy"]
    first = subprocess.Popen([sys.executable, "-m", "snakemake", "--cores", "2", *cmd],
                             cwd=tiny, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)  # fmt: skip
    try:
        deadline = time.time() + 300
        while not (metrics.exists() and '"train"' in metrics.read_text()):
            assert first.poll() is None and time.time() < deadline
            time.sleep(0.2)
        before_log, before_metrics = log.read_text(), metrics.read_text()
        snakemake(tiny, "--unlock")
        r = snakemake(tiny, *cmd, check=False)
        assert r.returncode != 0
        out = r.stdout + r.stderr
        assert re.search(r"still writing into results/tiny-busy/model, \S+ \(held by pid \d+", out)
        assert "Nothing was changed" in out
        time.sleep(3)  # the first one goes on writing into the same files
        assert first.poll() is None
        assert log.read_text().startswith(before_log) and metrics.read_text().startswith(
            before_metrics
        )
        steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
        assert len(steps) > len(before_metrics.splitlines()) and steps == sorted(steps)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        snakemake(tiny, "--unlock")
        run.unlink()
        shutil.rmtree(tiny / "results/tiny-busy", ignore_errors=True)
