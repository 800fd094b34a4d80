"""The Snakemake workflow, run for real on a copy of the repository's workflow files.

Data comes through the mirror setting from ../shared/assets, as an offline user would do it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def make_workdir(tmp: Path) -> Path:
    """A copy of what a clone holds for the workflow: Snakefile, workflow/, profiles/, config/."""
    for name in ("Snakefile", "workflow", "profiles", "config"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp / name)
    lock = tmp / "config" / "download.lock.json"
    lock.unlink(missing_ok=True)
    return tmp


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", *args]
    r = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=600)
    if check and r.returncode != 0:
        logs = "\n".join(
            f"--- {p}\n{p.read_text()[-3000:]}"
            for p in sorted(workdir.glob("results/logs/*/*.log"))
        )
        raise AssertionError(
            f"{' '.join(cmd)} failed:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}{logs}"
        )
    return r


def planned_jobs(workdir: Path, *args: str) -> dict[str, int]:
    """{rule: count} of the jobs a dry run would start."""
    out = snakemake(workdir, "-n", *args).stdout
    if "Nothing to be done" in out:
        return {}
    table = out.split("Job stats:")[1]
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)$", table, re.M))
    return {rule: int(n) for rule, n in jobs.items() if rule != "total"}


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def split_tokens(prepared: Path) -> dict[str, int]:
    manifest = json.loads((prepared / "manifest.json").read_text())
    counts = {"train": 0, "val": 0}
    for shard in manifest["shards"]:
        arr = np.load(prepared / shard["file"], mmap_mode="r")
        assert len(arr) == shard["tokens"]
        counts[shard["split"]] += len(arr)
    return counts


@pytest.fixture(scope="module")
def prepared_workdir(tmp_path_factory: pytest.TempPathFactory, assets: Path, gpt2_offline):
    """download + prepare of Tiny Shakespeare, char and GPT-2, through the mirror."""
    workdir = make_workdir(tmp_path_factory.mktemp("workflow"))
    runs = "runs=[shakespeare-char,shakespeare-gpt2]"
    snakemake(workdir, "prepare", "--config", runs, f"mirror={assets}")
    return workdir, runs


def test_prepare_through_mirror_gives_nanogpt_token_counts(prepared_workdir) -> None:
    workdir, _ = prepared_workdir
    raw = json.loads((workdir / "data/raw/tinyshakespeare/provenance.json").read_text())
    assert raw["outputs"][0]["sha256"] == (
        "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
    )
    prepared = {p.name.split("-")[1]: p for p in (workdir / "data/prepared").iterdir()}
    assert sorted(prepared) == ["char", "gpt2"]
    char = json.loads((prepared["char"] / "manifest.json").read_text())
    assert char["tokenizer"]["vocab_size"] == 65
    assert split_tokens(prepared["char"]) == {"train": 1_003_854, "val": 111_540}
    # nanoGPT's 301,966 / 36,059 GPT-2 tokens, plus one end-of-text token before each half.
    assert split_tokens(prepared["gpt2"]) == {"train": 301_967, "val": 36_060}
    for p in prepared.values():
        assert json.loads((p / "provenance.json").read_text())["stage"] == "prepare"


def test_nothing_reruns_when_nothing_changed(prepared_workdir) -> None:
    workdir, runs = prepared_workdir
    assert planned_jobs(workdir, "prepare", "--config", runs) == {}


def test_training_edit_reruns_no_data_stage(prepared_workdir) -> None:
    workdir, runs = prepared_workdir
    toml = workdir / "config/shakespeare-char.toml"
    original = toml.read_text()
    try:
        edit(toml, "learning_rate = 1e-3", "learning_rate = 2e-3")
        edit(toml, "n_layer = 4", "n_layer = 3")
        assert planned_jobs(workdir, "prepare", "--config", runs) == {}
    finally:
        toml.write_text(original)


def test_tokenizer_or_cleaning_edit_reruns_prepare_not_download(prepared_workdir) -> None:
    workdir, _ = prepared_workdir
    run = workdir / "config/edited.toml"
    try:
        run.write_text('[data]\ncleaning = ["strip"]\n')
        snakemake(workdir, "prepare", "--config", "runs=edited")
        assert planned_jobs(workdir, "prepare", "--config", "runs=edited") == {}
        run.write_text('[data]\ncleaning = ["strip"]\n[tokenizer]\nname = "gpt2"\n')
        assert planned_jobs(workdir, "prepare", "--config", "runs=edited") == {
            "prepare_dataset": 1,
            "prepare": 1,
        }
        run.write_text('[data]\ncleaning = ["strip", "normalize_newlines"]\n')
        assert planned_jobs(workdir, "prepare", "--config", "runs=edited") == {
            "prepare_dataset": 1,
            "prepare": 1,
        }
    finally:
        run.unlink()


def test_runs_sharing_data_settings_prepare_once(prepared_workdir) -> None:
    workdir, _ = prepared_workdir
    cfg = workdir / "config"
    shutil.copy(cfg / "shakespeare-char.toml", cfg / "lr-sweep-a.toml")
    edit(cfg / "lr-sweep-a.toml", "learning_rate = 1e-3", "learning_rate = 3e-3")
    try:
        runs = "runs=[shakespeare-char,shakespeare-gpt2,lr-sweep-a]"
        assert planned_jobs(workdir, "prepare", "--config", runs) == {}
    finally:
        (cfg / "lr-sweep-a.toml").unlink()


def test_bad_run_config_is_refused_before_any_job(tmp_path: Path) -> None:
    workdir = make_workdir(tmp_path)
    (workdir / "config/broken.toml").write_text("[model]\nn_layr = 3\n")
    r = snakemake(workdir, "-n", "--config", "runs=broken", check=False)
    assert r.returncode != 0
    assert "n_layr" in r.stderr + r.stdout and "n_layer" in r.stderr + r.stdout
    r = snakemake(workdir, "-n", "--config", "runs=nonexistent", check=False)
    assert r.returncode != 0 and "config/nonexistent.toml" in r.stderr + r.stdout


def test_run_names_follow_one_pattern_and_shell_arguments_are_quoted(tmp_path: Path) -> None:
    workdir = make_workdir(tmp_path)
    for runs in ("runs=my run", "runs=[tiny,my run]"):
        r = snakemake(workdir, "-n", "--config", runs, check=False)
        assert r.returncode != 0 and "'my run'" in r.stdout + r.stderr, r.stdout + r.stderr
    paths = "paths={data: 'my data', results: 'my results', lock: config/download.lock.json}"
    out = snakemake(workdir, "-n", "--config", "runs=tiny", paths).stdout
    assert "--out 'my results/tiny/model'" in out and "--raw 'my data/raw/tinyshakespeare'" in out


def test_a_sweep_report_name_stays_short_however_many_runs(tmp_path: Path) -> None:
    workdir = make_workdir(tmp_path)
    names = [f"sweep-point-with-a-long-name-{i:03d}" for i in range(40)]
    for name in names:
        shutil.copy(workdir / "config/tiny.toml", workdir / f"config/{name}.toml")
    out = snakemake(workdir, "-n", "--config", f"runs=[{','.join(names)}]").stdout
    (report,) = set(re.findall(r"results/report/(loss-\S+\.svg)", out))
    assert re.fullmatch(r"loss-40-runs-[0-9a-f]{10}\.svg", report), report
    out = snakemake(workdir, "-n", "--config", "runs=[tiny,shakespeare-char]").stdout
    assert "results/report/loss-tiny+shakespeare-char.svg" in out  # short: the names


def test_a_config_typo_is_one_line_naming_the_key_and_the_closest(tmp_path: Path) -> None:
    workdir = make_workdir(tmp_path)
    for args, line in [
        (["run=tiny"], "config: unknown key 'run' (did you mean 'runs'?); known keys: runs, "
         "sweep, mirror, paths"),
        (["runs=tiny", "paths={data: d, result: r}"], "config: unknown key 'paths.result' (did "
         "you mean 'results'?); known keys of paths: data, results, lock"),
        (["runs=tiny", "mirror=5"], "config mirror = 5: 5 is not of type 'string'"),
        (["runs=tiny", "n_layer=3"], "config: unknown key 'n_layer'; known keys: runs, sweep, "
         "mirror, paths; a run's settings go in its file config/RUN.toml"),
    ]:  # fmt: skip
        r = snakemake(workdir, "-n", "--config", *args, check=False)
        out = r.stdout + r.stderr
        assert r.returncode != 0 and line in out, out
        assert "Failed validating" not in out and "On instance" not in out, out  # no dump


def test_a_sweep_with_long_point_names_plans_with_them_cut(tmp_path: Path) -> None:
    # A point name over 255 bytes once ended `snakemake -n` in an OSError (a file name too
    # long) once results/ existed.
    workdir = make_workdir(tmp_path)
    names = ["".join(chr(97 + (i * 7 + j) % 26) for i in range(300)) for j in range(2)]
    (workdir / "config/sweeps/long.toml").write_text(
        f'base = "tiny"\n[axes]\n"logging.wandb_run_name" = ["{names[0]}", "{names[1]}"]\n'
    )
    (workdir / "results/logs/train").mkdir(parents=True)
    out = snakemake(workdir, "-n", "train", "--config", "sweep=long").stdout
    runs = set(re.findall(r"--out results/(long\.[^/]+)/model ", out))
    assert len(runs) == 2 and all(len(run) <= 200 for run in runs), runs


def test_a_local_file_touched_but_unchanged_reruns_nothing_and_an_edit_reruns_its_download(
    tmp_path: Path, assets: Path
) -> None:
    # A new modification time of the same bytes (a copy, a checkout) replanned download,
    # prepare, train, sample and eval, and overwrote the training's benchmark record. Over 1 MB,
    # as Tiny Shakespeare: Snakemake compares smaller inputs by checksum itself.
    workdir = make_workdir(tmp_path)
    corpus = workdir / "corpus.txt"
    corpus.write_bytes((assets / "tinyshakespeare" / "input.txt").read_bytes())
    (workdir / "config/datasets/mine.toml").write_text(
        'reader = "text"\n[[files]]\nname = "input.txt"\nurl = "file:corpus.txt"\n'
    )
    (workdir / "config/mine.toml").write_text('[data]\ndataset = "mine"\n')
    snakemake(workdir, "download", "--config", "runs=mine")
    stamp = corpus.stat().st_mtime_ns + 10**9
    os.utime(corpus, ns=(stamp, stamp))
    assert planned_jobs(workdir, "download", "--config", "runs=mine") == {}
    # Other bytes of the same size in the same file, its modification time put back (as
    # `tar --overwrite` of an archive with fixed times does): the kept sha256 was taken as the
    # file's, and nothing reran. The status change time tells.
    with open(corpus, "r+b") as f:
        f.write(b"ROMEO".lower())
    os.utime(corpus, ns=(stamp, stamp))
    assert planned_jobs(workdir, "download", "--config", "runs=mine") == {
        "download_dataset": 1, "download": 1,
    }  # fmt: skip
    corpus.write_bytes(corpus.read_bytes().replace(b"ROMEO", b"RomeO", 1))
    assert planned_jobs(workdir, "download", "--config", "runs=mine") == {
        "download_dataset": 1, "download": 1,
    }  # fmt: skip


def test_a_broken_dataset_file_blocks_only_the_runs_that_use_it(tmp_path: Path) -> None:
    # local_dir = 5 ended every snakemake -n in a TypeError in common.smk, whatever the runs.
    workdir = make_workdir(tmp_path)
    (workdir / "config/datasets/broken.toml").write_text('reader = "text"\nlocal_dir = 5\n')
    assert "download_dataset" in planned_jobs(workdir, "download", "--config", "runs=tiny")
    (workdir / "config/uses-it.toml").write_text('[data]\ndataset = "broken"\n')
    r = snakemake(workdir, "-n", "--config", "runs=uses-it", check=False)
    assert r.returncode != 0 and "TypeError" not in r.stdout + r.stderr
    says = "config/datasets/broken.toml: local_dir = 5: expected a directory path"
    assert says in r.stdout + r.stderr, r.stdout[-2000:]


def test_snakemake_and_status_take_the_same_config_and_refuse_the_same_in_one_line(
    tmp_path: Path,
) -> None:
    # paths.data = "" wrote data/raw/... to /raw/... at the file system's root; status read
    # values unlike snakemake and ended paths=x, paths={data: 5} or runs=[ in a traceback;
    # runs=, selected nothing without a word; a sweep's name was taken as a path
    # (sweep=../x) and a point that is not a run name was blamed instead of the sweep's.
    workdir = make_workdir(tmp_path)
    (workdir / "config/sweeps/my sweep.toml").write_text(
        'base = "tiny"\n[axes]\n"train.seed" = [1]\n'
    )
    (workdir / "config/sweeps/case.toml").write_text(
        'base = "tiny"\n[axes]\n"sample.start" = ["A", "a"]\n'
    )
    cases = [
        ("paths={data: ''}", "config paths.data = '': '' should be non-empty"),
        ("paths=x", "config paths = 'x': 'x' is not of type 'object'"),
        ("paths={data: [1]}", "config paths.data = ['1']: ['1'] is not of type 'string'"),
        ("runs=,", "runs = ',': expected at least one run name"),
        ("runs=[", "run name '[': expected letters, digits"),
        ("sweep=my sweep", "sweep name 'my sweep': expected letters, digits"),
        ("sweep=../sweeps/case", "sweep name '../sweeps/case': expected letters, digits"),
        ("sweep=case", "two points would be one run 'case.start-a'"),
    ]
    for pair, line in cases:
        r = snakemake(workdir, "-n", "--config", pair, check=False)
        out = r.stdout + r.stderr
        assert r.returncode != 0 and line in out and "ConfigError in" not in out, (pair, out)
        r = subprocess.run([sys.executable, "-m", "nanogptx.status", "--config", pair],
                           cwd=workdir, capture_output=True, text=True)  # fmt: skip
        assert r.returncode == 2 and line in r.stderr, (pair, r.stderr)
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    # A run named twice is one run: no sweep report of one run with itself.
    assert "report_sweep" not in planned_jobs(workdir, "--config", "runs=tiny,tiny")
    r = subprocess.run([sys.executable, "-m", "nanogptx.status", "--config", "runs=tiny,tiny"],
                       cwd=workdir, capture_output=True, text=True, check=True)  # fmt: skip
    assert r.stdout.count("tiny: ") == 1, r.stdout


def test_a_run_that_starts_from_its_own_export_is_refused(tmp_path: Path) -> None:
    # model.init_from = results/RUN/export/hf planned: each `snakemake export` wrote the export
    # anew, which made the training out of date, which trained again from the new export.
    workdir = make_workdir(tmp_path)
    hf = workdir / "results/self/export/hf"
    hf.mkdir(parents=True)
    (hf / "config.json").write_text(json.dumps({
        "model_type": "gpt2", "n_layer": 1, "n_head": 1, "n_embd": 8, "n_positions": 8,
        "vocab_size": 50257,
    }))  # fmt: skip
    (hf / "model.safetensors").write_bytes(b"")
    (workdir / "config/self.toml").write_text(
        '[tokenizer]\nname = "gpt2"\n[model]\ninit_from = "results/self/export/hf"\n'
    )
    r = snakemake(workdir, "-n", "--config", "runs=self", check=False)
    assert r.returncode != 0 and "lies in the run's own results" in r.stdout + r.stderr, r.stderr
    (workdir / "config/other.toml").write_text(
        '[tokenizer]\nname = "gpt2"\n[model]\ninit_from = "results/self/export/hf"\n'
    )
    assert "train_run" in planned_jobs(workdir, "--config", "runs=other")  # another run's: fine
