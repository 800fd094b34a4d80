"""The workflow on a real SLURM cluster: each rule its own job, the same outputs as a local run.

Needs a cluster whose `sinfo` shows partition `debug` up: `bash tests/slurm/cluster.sh up` (as
root; .ci/run does it). Without one these tests skip and say why.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from test_workflow import make_workdir, snakemake

ROOT = Path(__file__).resolve().parents[1]
PARTITION = "debug"
# The shipped profile, then the CI cluster's overlay (one small node, no GPUs).
PROFILES = ("--profile", "profiles/slurm", "--profile", str(ROOT / "tests/slurm/ci"))
STAGE_RULES = {"download_dataset", "prepare_dataset", "train_run", "sample_run"}
READY = {"idle", "mixed", "allocated", "completing"}


@pytest.fixture(scope="module")
def cluster() -> str:
    """The partition to submit to, or a skip that says why there is none."""
    if shutil.which("sinfo") is None:
        pytest.skip("no SLURM cluster: `sinfo` not found (bash tests/slurm/cluster.sh up)")
    try:
        r = subprocess.run(
            ["sinfo", "-h", "-p", PARTITION, "-o", "%T"],
            capture_output=True,
            text=True,
            timeout=15,
        )
    except subprocess.TimeoutExpired:
        pytest.skip("no SLURM cluster: `sinfo` did not answer within 15 s")
    states = set(r.stdout.split())
    if r.returncode != 0 or not states & READY:
        why = r.stderr.strip() or f"node state {' '.join(states) or 'none'}"
        pytest.skip(
            f"no SLURM cluster with partition {PARTITION!r} ready ({why});"
            " start one with: bash tests/slurm/cluster.sh up (as root)"
        )
    return PARTITION


def run_bounded(workdir: Path, args: list[str], limit: float) -> tuple[int, str, float]:
    """(exit code, output, seconds) of snakemake; a run past `limit` is interrupted and fails.

    SIGINT, not SIGTERM: on SIGINT snakemake cancels its SLURM jobs and exits.
    """
    cmd = [sys.executable, "-m", "snakemake", *args]
    t0 = time.monotonic()
    proc = subprocess.Popen(
        cmd, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        out, _ = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        msg = f"{' '.join(cmd)} still running after {limit:.0f} s:\n{out[-4000:]}"
        raise AssertionError(msg) from None
    return proc.returncode, out, time.monotonic() - t0


def submitted_jobs(output: str) -> list[str]:
    """SLURM job ids that snakemake reports having submitted."""
    return re.findall(r"has been submitted with SLURM jobid (\d+)", output)


def slurm_jobs(ids: list[str]) -> dict[str, tuple[str, str]]:
    """{job id: (state, comment)} as slurmctld reports them (finished jobs: for MinJobAge)."""
    r = subprocess.run(
        ["squeue", "-h", "-t", "all", "-j", ",".join(ids), "-o", "%i|%T|%k"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    rows = (line.split("|", 2) for line in r.stdout.splitlines() if line)
    return {i: (state, comment) for i, state, comment in rows}


def output_hashes(workdir: Path) -> dict[str, str]:
    """sha256 of every output file a rerun must reproduce exactly.

    Left out: provenance.json (times, host, command line) and metrics.jsonl (timings).
    """
    files = [
        *(workdir / "data/raw").glob("*/*"),
        *(workdir / "data/prepared").glob("*/*"),
        *(workdir / "results/tiny/model").glob("*"),
        *(workdir / "results/tiny/samples").glob("*"),
    ]
    return {
        str(p.relative_to(workdir)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in files
        if p.is_file() and p.name not in ("provenance.json", "metrics.jsonl")
    }


@pytest.mark.slow  # about 85 s; test_multiprocess.py's srun test keeps SLURM in the default run
def test_tiny_run_through_slurm_runs_each_rule_as_a_job_and_matches_local_run(
    tmp_path: Path, assets: Path, cluster: str
) -> None:
    config = ["--config", "runs=tiny", f"mirror={assets}"]
    (tmp_path / "local").mkdir()
    (tmp_path / "slurm").mkdir()
    local = make_workdir(tmp_path / "local")
    remote = make_workdir(tmp_path / "slurm")
    # The local run goes alongside: the SLURM run mostly waits for status checks.
    with ThreadPoolExecutor(1) as pool:
        t0 = time.monotonic()
        local_done = pool.submit(lambda: (snakemake(local, *config), time.monotonic() - t0)[1])
        code, out, slurm_s = run_bounded(remote, [*PROFILES, *config], limit=600)
        local_s = local_done.result()
    logs = "".join(f"\n--- {p}\n{p.read_text()[-2000:]}" for p in remote.glob("results/logs/*/*"))
    assert code == 0, f"snakemake under SLURM failed:\n{out[-6000:]}{logs}"
    print(f"tiny run: local {local_s:.1f} s, SLURM {slurm_s:.1f} s")

    # Every job (not the target rules: snakemake's "localrule") ran as its own SLURM job, which
    # slurmctld saw complete, and left its log where the profile keeps them.
    job_rules = re.findall(r"^rule (\w+):$", out, re.M)
    assert STAGE_RULES <= set(job_rules), out[-4000:]
    ids = submitted_jobs(out)
    assert len(ids) == len(set(ids)) == len(job_rules), out[-4000:]
    jobs = slurm_jobs(ids)
    rules = [re.sub(r"^rule_(\w+?)(_wildcards_.*)?$", r"\1", c) for _, c in jobs.values()]
    assert sorted(rules) == sorted(job_rules), jobs
    assert {state for state, _ in jobs.values()} == {"COMPLETED"}, jobs
    slurm_logs = remote.glob(".snakemake/slurm_logs/rule_*/**/*.log")
    assert sorted(p.stem for p in slurm_logs) == sorted(ids)

    # The same bytes as the local run: data, shards, manifest, parameters, samples.
    want = output_hashes(local)
    for name in ("params.safetensors", "samples.txt", "manifest.json", "train_000000.npy"):
        assert any(Path(f).name == name for f in want), f"no {name} among {sorted(want)}"
    assert output_hashes(remote) == want


@pytest.mark.slow  # about 110 s
def test_a_sweep_runs_through_slurm_with_a_diverged_point_as_a_result(
    tmp_path: Path, assets: Path, cluster: str
) -> None:
    (tmp_path / "wf").mkdir()
    workdir = make_workdir(tmp_path / "wf")
    (workdir / "config/sweeps/mini.toml").write_text(
        'base = "tiny"\n[axes]\n"train.max_iters" = [30]\n"train.learning_rate" = [1e-2, 100]\n'
    )
    args = [*PROFILES, "sweep", "--config", "sweep=mini", f"mirror={assets}"]
    code, out, _ = run_bounded(workdir, args, limit=600)
    assert code == 0, out[-6000:]
    # Each point's train job (and every other stage) ran as a SLURM job, which completed.
    jobs = slurm_jobs(submitted_jobs(out))
    rules = sorted(re.sub(r"^rule_(\w+?)(_wildcards_.*)?$", r"\1", c) for _, c in jobs.values())
    assert rules.count("train_run") == 2 and "report_lr_sensitivity" in rules, rules
    assert {state for state, _ in jobs.values()} == {"COMPLETED"}, jobs
    rows = (workdir / "results/report/lr-sensitivity-sweep-mini.csv").read_text().splitlines()
    diverged = {r.split(",")[0]: r.split(",")[5] for r in rows[1:]}
    assert diverged["mini.max_iters-30.learning_rate-0.01"] == ""
    assert diverged["mini.max_iters-30.learning_rate-100"].isdigit(), rows


@pytest.mark.parametrize(
    "why, args",
    [
        pytest.param("the stage fails: its mirror has no files", [], marks=pytest.mark.slow),
        ("the job can never fit the node", ["--set-resources", "download_dataset:mem_mb=9999999"]),
    ],
)
def test_failing_job_is_reported_as_failed_within_bounded_time(
    tmp_path: Path, cluster: str, why: str, args: list[str]
) -> None:
    (tmp_path / "wf").mkdir()
    workdir = make_workdir(tmp_path / "wf")
    empty = tmp_path / "empty-mirror"
    empty.mkdir()
    config = ["--config", "runs=tiny", f"mirror={empty}"]
    code, out, seconds = run_bounded(workdir, [*PROFILES, "download", *args, *config], limit=120)
    assert code != 0, out[-4000:]
    assert "download_dataset" in out and "Error" in out, out[-4000:]
    print(f"{why}: reported after {seconds:.1f} s")
    ids = submitted_jobs(out)
    if args:  # sbatch refuses it at once (EnforcePartLimits=ALL): it never pends
        assert ids == [] and "sbatch" in out, out[-4000:]
        return
    # The job ran and failed in SLURM, and the stage's own log says why.
    assert len(ids) == 1, out[-4000:]
    assert slurm_jobs(ids)[ids[0]][0] == "FAILED"
    log = (workdir / "results/logs/download/tinyshakespeare.log").read_text()
    assert "does not exist" in log, log
