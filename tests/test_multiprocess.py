"""Training as several JAX processes joined by jax.distributed (gloo collectives on CPU): the
same losses as one process, checkpoints that restore with either process count, and a killed
process that fails the job at once, after which a rerun resumes.

Every run: two processes on 127.0.0.1 (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID).
With a SLURM cluster up (bash tests/slurm/cluster.sh up): the same under `srun --ntasks=2`, and
the tiny run's train job through the SLURM profile with tasks=2.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from nanogptx import checkpoint, steps
from prepared import synthetic_text, write_prepared
from test_slurm import PROFILES, cluster, run_bounded, slurm_jobs, submitted_jobs  # noqa: F401
from test_workflow import edit, make_workdir, snakemake

STEPS = 30
TINY = [
    "model.n_layer=2", "model.n_head=2", "model.n_embd=32", "model.block_size=16",
    "train.batch_size=8", "train.learning_rate=1e-2", "train.min_lr=1e-3",
    "train.warmup_iters=2", f"train.lr_decay_iters={STEPS}", f"train.max_iters={STEPS}",
    "train.eval_iters=2", "train.eval_interval=10", "train.checkpoint_interval=10",
    "logging.log_interval=1",
]  # fmt: skip
# After one process dies, the others must be gone within this many seconds (they fail at their
# next collective; a process that stops answering fails them after the heartbeat timeout).
FAIL_WITHIN_S = 2 * steps.HEARTBEAT_TIMEOUT_S
# 2 processes of 1 device against 1 device: each device sums half the batch, so float32 rounding
# differs (over 30 steps of TINY, by < 1e-6); against 1 process of 2 devices: equal bits.
RTOL = 1e-5


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_prepared(tmp_path_factory.mktemp("data"), synthetic_text(20_000), 4000)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Train subprocesses: CPU, wandb off, quick compiles (LLVM -O0 leaves float results alone)
    and a compilation cache that reruns share."""
    return {
        **os.environ,
        "XLA_FLAGS": "--xla_backend_optimization_level=0",
        "JAX_PLATFORMS": "cpu",
        "WANDB_MODE": "disabled",
        "PYTHONUNBUFFERED": "1",
        "JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.mktemp("jax-cache")),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    }


def train_args(data: Path, run: Path, *overrides: str) -> list[str]:
    return [
        sys.executable, "-m", "nanogptx.train", *TINY, *overrides, "--data", str(data),
        "--out", str(run / "model"), "--checkpoints", str(run / "ckpt"),
    ]  # fmt: skip


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as f:
        return subprocess.Popen(args, env=env, stdout=f, stderr=subprocess.STDOUT)


def start_processes(args: list[str], env: dict[str, str], n: int, log: Path) -> list:
    """n processes of one job, joined through a coordinator on 127.0.0.1; logs log.<i>.log."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    job = {"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": str(n)}
    return [
        start(args, {**env, **job, "JAX_PROCESS_ID": str(i)}, log.with_suffix(f".{i}.log"))
        for i in range(n)
    ]


def wait_all(procs: list[subprocess.Popen], logs: list[Path], timeout: float = 240) -> None:
    for p in procs:
        p.wait(timeout=timeout)
    text = "".join(f"\n--- {log}\n{log.read_text()[-3000:]}" for log in logs)
    assert all(p.returncode == 0 for p in procs), text


def losses(model_dir: Path) -> dict[int, float]:
    lines = (model_dir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines) if r["kind"] == "train"}


def assert_same_curve(got: dict[int, float], want: dict[int, float]) -> None:
    steps = sorted(want)
    assert sorted(got) == steps
    np.testing.assert_allclose([got[s] for s in steps], [want[s] for s in steps], rtol=RTOL)


@pytest.fixture(scope="module")
def reference(
    data_dir: Path, env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[int], dict[int, float]]]:
    """Losses of 1 process with 1 or 2 devices, by device count: both started at once, waited
    for when asked. 2 devices sum the gradient in the same order as 2 processes do."""
    runs, procs = {}, {}
    for devices in (1, 2):
        runs[devices] = tmp_path_factory.mktemp(f"one-process-{devices}-devices")
        flags = f"{env['XLA_FLAGS']} --xla_force_host_platform_device_count={devices}"
        procs[devices] = start(
            train_args(data_dir, runs[devices]), {**env, "XLA_FLAGS": flags}, runs[devices] / "log"
        )

    def result(devices: int) -> dict[int, float]:
        wait_all([procs[devices]], [runs[devices] / "log"])
        return losses(runs[devices] / "model")

    yield result
    for proc in procs.values():
        proc.kill()
        proc.wait()


def wait_for_checkpoint(ckpt: Path, procs: list[subprocess.Popen]) -> Path:
    deadline = time.monotonic() + 180
    while (path := checkpoint.latest(ckpt)) is None:
        assert all(p.poll() is None for p in procs), "the job ended before its first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint within 180 s"
        time.sleep(0.01)
    return path


def seconds_until_exit(procs: list[subprocess.Popen]) -> float:
    t0 = time.monotonic()
    for p in procs:
        try:
            p.wait(timeout=FAIL_WITHIN_S)
        except subprocess.TimeoutExpired:
            p.kill()
            pytest.fail(f"a process still ran {FAIL_WITHIN_S} s after another was killed")
    return time.monotonic() - t0


def resumed_step(log: Path) -> int:
    found = re.findall(r"^resumed from \S+ at step (\d+) of \d+$", log.read_text(), re.M)
    assert len(found) == 1, log.read_text()[-3000:]
    return int(found[0])


@pytest.mark.slow  # about 25 s
def test_two_processes_match_one_survive_a_kill_and_their_checkpoint_restores_on_one(
    data_dir: Path,
    tmp_path: Path,
    env: dict[str, str],
    reference: Callable[[int], dict[int, float]],
) -> None:
    two, moved = tmp_path / "two", tmp_path / "moved"
    # 2 processes with 1 device each, the reference's global batch; process 1 is killed as soon
    # as a checkpoint exists.
    pair = start_processes(train_args(data_dir, two), env, 2, tmp_path / "two.log")
    wait_for_checkpoint(two / "ckpt", pair)
    os.kill(pair[1].pid, signal.SIGKILL)
    seconds = seconds_until_exit(pair)
    print(f"2 processes, process 1 killed: process 0 exited {seconds:.2f} s later")
    assert pair[0].returncode == 1
    assert not (two / "model" / "params.safetensors").exists(), "the kill came too late"
    ckpt = checkpoint.latest(two / "ckpt")
    step = int(ckpt.name.removeprefix("step_"))
    assert 0 < step < STEPS

    # Rerun on 2 processes: resumes. Meanwhile 1 process resumes from a copy of that checkpoint.
    shutil.copytree(ckpt, moved / "ckpt" / ckpt.name)
    pair = start_processes(train_args(data_dir, two), env, 2, tmp_path / "rerun.log")
    single = start(train_args(data_dir, moved), env, tmp_path / "moved.log")
    logs = [tmp_path / name for name in ("rerun.0.log", "rerun.1.log", "moved.log")]
    wait_all([*pair, single], logs)
    assert resumed_step(logs[0]) == resumed_step(logs[2]) == step

    want = reference(1)
    assert sorted(want) == list(range(STEPS))
    assert_same_curve(losses(two / "model"), want)
    assert_same_curve(losses(moved / "model"), want)
    assert losses(two / "model") == reference(2), "2 processes differ from 2 devices"
    summaries = [json.loads((d / "model" / "provenance.json").read_text())["summary"]
                 for d in (two, moved)]  # fmt: skip
    assert [s["devices"] for s in summaries] == [2, 1]
    # Only process 0 wrote the metrics: each record once (train, eval, and the diagnostics of
    # step 0, logging.stats_interval being 100).
    lines = (two / "model" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len(set(lines)) == STEPS + STEPS // 10 + 1 + 1
    assert sum('"kind": "stats"' in line for line in lines) == 1


# ---------------------------------------------------------------- under SLURM (cluster up)


def srun(args: list[str], partition: str, tasks: int) -> list[str]:
    """One job step of `tasks` processes; a task that fails ends the others (--kill-on-bad-exit)."""
    return [
        "srun", f"--partition={partition}", f"--ntasks={tasks}", "--cpus-per-task=1",
        "--kill-on-bad-exit=1", *args,
    ]  # fmt: skip


def task_pid(out_dir: Path, rank: int) -> int | None:
    """PID of the training process of SLURM task `rank` writing into out_dir, if one runs."""
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if str(out_dir).encode() in cmdline and f"SLURM_PROCID={rank}".encode() in environ:
            return int(entry.name)
    return None


@pytest.mark.slow  # about 15-25 s
def test_srun_two_tasks_match_one_process_and_a_killed_task_ends_the_step(
    data_dir: Path,
    tmp_path: Path,
    env: dict[str, str],
    reference: Callable[[int], dict[int, float]],
    cluster: str,  # noqa: F811 (fixture)
) -> None:
    two = tmp_path / "two"
    args = srun(train_args(data_dir, two), cluster, 2)
    job = start(args, env, tmp_path / "srun.log")
    wait_for_checkpoint(two / "ckpt", [job])
    pids = [task_pid(two / "model", rank) for rank in (0, 1)]
    assert None not in pids, pids
    os.kill(pids[0], signal.SIGKILL)  # task 0 hosts jax.distributed's coordinator
    seconds = seconds_until_exit([job])
    print(f"srun --ntasks=2, task 0 killed: srun exited {seconds:.2f} s later")
    assert job.returncode != 0
    assert not (two / "model" / "params.safetensors").exists(), "the kill came too late"
    deadline = time.monotonic() + 10
    while task_pid(two / "model", 1) is not None:
        assert time.monotonic() < deadline, "task 1 outlived its step by 10 s"
        time.sleep(0.1)
    step = int(checkpoint.latest(two / "ckpt").name.removeprefix("step_"))

    rerun = start(args, env, tmp_path / "rerun.log")
    wait_all([rerun], [tmp_path / "rerun.log"])
    assert resumed_step(tmp_path / "rerun.log") == step
    assert "Rank 1 is connected" in (tmp_path / "rerun.log").read_text()
    assert_same_curve(losses(two / "model"), reference(1))
    assert losses(two / "model") == reference(2), "2 tasks differ from 2 devices"


@pytest.mark.slow  # srun with two tasks is tested above; this adds the profile
def test_tiny_run_trains_as_two_slurm_tasks_through_the_profile(
    tmp_path: Path,
    assets: Path,
    monkeypatch: pytest.MonkeyPatch,
    cluster: str,  # noqa: F811 (fixture)
) -> None:
    """train_run with tasks=2 and mpi=srun: one SLURM job, whose two tasks train together."""
    monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=0")  # the job inherits it
    workdir = make_workdir(tmp_path)
    tiny = workdir / "config" / "tiny.toml"
    edit(tiny, "max_iters = 300", f"max_iters = {STEPS}")
    edit(tiny, "lr_decay_iters = 300", f"lr_decay_iters = {STEPS}")
    config = ["--config", "runs=tiny", f"mirror={assets}"]
    snakemake(workdir, "prepare", *config)  # locally: only the train job goes to SLURM
    data = next((workdir / "data" / "prepared").iterdir())
    two_tasks = [
        "--set-resources", "train_run:gpu=0", "train_run:tasks=2", "train_run:mpi=srun",
        "--set-threads", "train_run=1",
    ]  # fmt: skip
    # Meanwhile the reference: 1 process with 2 devices, in the environment the job inherits.
    one = [
        sys.executable, "-m", "nanogptx.train", "--config", str(tiny), "--data", str(data),
        "--out", str(tmp_path / "one"), "--checkpoints", str(tmp_path / "one-ckpt"),
    ]  # fmt: skip
    flags = f"{os.environ['XLA_FLAGS']} --xla_force_host_platform_device_count=2"
    with ThreadPoolExecutor(1) as pool:
        ref = pool.submit(
            subprocess.run, one, env={**os.environ, "XLA_FLAGS": flags}, capture_output=True
        )
        code, out, seconds = run_bounded(workdir, [*PROFILES, "train", *two_tasks, *config], 400)
        ref = ref.result()
    log = (workdir / "results/logs/train/tiny.log").read_text()
    assert code == 0, f"{out[-4000:]}\n--- train log\n{log[-3000:]}"
    assert ref.returncode == 0, ref.stdout[-3000:].decode()
    print(f"tiny run ({STEPS} steps) as 2 SLURM tasks through the profile: {seconds:.1f} s")
    assert re.search(r"srun --ntasks=2 .*python -m nanogptx\.train", out), out[-4000:]
    ids = submitted_jobs(out)
    assert len(ids) == 1 and slurm_jobs(ids)[ids[0]][0] == "COMPLETED", out[-4000:]
    assert "Rank 1 is connected" in log, log[-3000:]
    model = workdir / "results" / "tiny" / "model"
    assert json.loads((model / "provenance.json").read_text())["summary"]["devices"] == 2
    assert losses(model) == losses(tmp_path / "one"), "2 tasks differ from 2 devices"
