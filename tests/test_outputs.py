"""What every stage leaves in its output directories, run stage by stage as a user would:
permissions the umask gives, an interrupted run's temporaries removed by the next run, a
directory another process is writing refused, and a bad --out refused before any work."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from nanogptx import config, download, prepare, provenance, sample, train

SETTINGS = [
    "model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.block_size=16",
    "train.batch_size=4", "train.max_iters=6", "train.lr_decay_iters=6", "train.warmup_iters=1",
    "train.eval_interval=3", "train.eval_iters=1", "train.checkpoint_interval=3",
    "sample.num_samples=1", "sample.max_new_tokens=8", "data.max_docs=1",
]  # fmt: skip


@contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def stages(root: Path, assets: Path) -> dict[str, Path]:
    """download -> prepare -> train -> sample into root; their output directories."""
    cfg = config.load(None, SETTINGS)
    dirs = {name: root / name for name in ("raw", "prepared", "model", "checkpoints", "samples")}
    download.download(cfg, dirs["raw"], mirror=str(assets), lock=root / "lock.json")
    prepare.prepare(cfg, dirs["raw"], dirs["prepared"])
    train.train(cfg, dirs["prepared"], dirs["model"], dirs["checkpoints"])
    sample.sample(cfg, dirs["model"], dirs["samples"])
    return dirs


def modes(root: Path) -> dict[str, set[int]]:
    found: dict[str, set[int]] = {"files": set(), "dirs": {stat.S_IMODE(root.stat().st_mode)}}
    for path in root.rglob("*"):
        found["dirs" if path.is_dir() else "files"].add(stat.S_IMODE(path.stat().st_mode))
    return found


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_every_output_gets_the_permissions_of_the_umask(
    assets: Path, tmp_path: Path, mask: int
) -> None:
    # mkstemp and mkdtemp made provenance.json, params.safetensors, ... 0600 and checkpoint
    # directories 0700 whatever the umask: unreadable to the group on a shared cluster.
    with umask(mask):
        dirs = stages(tmp_path, assets)
    for name, path in dirs.items():
        assert modes(path) == {"files": {0o666 & ~mask}, "dirs": {0o777 & ~mask}}, name
    assert (dirs["model"] / "params.safetensors").is_file()


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, assets: Path) -> dict[str, Path]:
    return stages(tmp_path_factory.mktemp("stages"), assets)


LEFTOVERS = {
    "raw": [".provenance.json.4242.0badf00d.tmp"],
    "prepared": [".train_000000.npy.4242.0badf00d.tmp", ".manifest.json.4242.1badf00d.tmp"],
    "model": [".params.safetensors.4242.0badf00d.tmp"],
    "checkpoints": [".tmp-step_00000006-4242-0badf00d/", ".trash-step_00000003-4242-1badf00d/"],
    "samples": [".samples.txt.4242.0badf00d.tmp"],
}


def plant(dirs: dict[str, Path]) -> list[Path]:
    """What a SIGKILL during a write leaves: a temporary file (or checkpoint directory)."""
    planted = []
    for name, leftovers in LEFTOVERS.items():
        for leftover in leftovers:
            path = dirs[name] / leftover.rstrip("/")
            if leftover.endswith("/"):
                path.mkdir()
                (path / "state.safetensors").write_bytes(b"\0" * 100)
            else:
                path.write_bytes(b"\0" * 100)
            planted.append(path)
    return planted


def test_a_rerun_removes_what_an_interrupted_run_left(
    finished: dict[str, Path], assets: Path
) -> None:
    planted = plant(finished)
    stages(finished["raw"].parent, assets)
    assert [p for p in planted if p.exists()] == []
    assert not list(finished["model"].parent.rglob(provenance.LOCK_FILE))  # locks go too


HOLD = """
import sys, time
from nanogptx import provenance
with provenance.exclusive(sys.argv[1], "prepare"):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_directory_another_process_writes_is_refused_and_left_alone(
    finished: dict[str, Path], assets: Path
) -> None:
    out = finished["prepared"]
    live = out / ".train_000000.npy.1.0badf00d.tmp"  # the other process's shard in the making
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == b"held\n"
        live.write_bytes(b"\0" * 100)
        cfg = config.load(None, SETTINGS)
        with pytest.raises(provenance.OutputError) as e:
            prepare.prepare(cfg, finished["raw"], out)
        assert f"{out} is in use by another prepare (pid {holder.pid} on " in str(e.value)
        assert live.exists() and (out / "manifest.json").exists()
    finally:
        holder.kill()
        holder.wait()
    prepare.prepare(cfg, finished["raw"], out)  # the lock went with its holder
    assert not live.exists()


def test_the_holder_of_a_directory_is_named_while_it_lives_and_the_probe_takes_nothing(
    tmp_path: Path,
) -> None:
    """What the workflow asks before it starts jobs (README: Reliability)."""
    out = tmp_path / "out"
    assert provenance.holder(out) is None  # no directory yet
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == b"held\n"
        assert provenance.holder(out).startswith(f"pid {holder.pid} on ")
    finally:
        holder.kill()  # SIGKILL: its lock file stays behind, its lock does not
        holder.wait()
    assert provenance.lock_file(out).exists() and provenance.holder(out) is None
    with provenance.exclusive(out, "test"):  # the probe left the lock free to take
        assert provenance.holder(out).startswith(f"pid {os.getpid()} on ")


@pytest.mark.parametrize("stage", ["train", "sample"])
def test_out_pointing_at_a_file_is_refused_before_any_work(
    finished: dict[str, Path], tmp_path: Path, stage: str, capsys: pytest.CaptureFixture
) -> None:
    # It used to be found only when the outputs were written, after training or generating.
    (tmp_path / "file").write_text("mine")
    args = ["--config", str(tmp_path / "run.toml"), *SETTINGS, "--out", str(tmp_path / "file")]
    (tmp_path / "run.toml").write_text("")
    if stage == "train":
        args += ["--data", str(finished["prepared"]), "--checkpoints", str(tmp_path / "ckpt")]
    else:
        args += ["--model", str(finished["model"])]
    with pytest.raises(SystemExit) as e:
        (train.main if stage == "train" else sample.main)(args)
    out, err = capsys.readouterr()
    assert e.value.code == 1 and f"--out {tmp_path / 'file'} is a file" in err
    assert len(err.strip().splitlines()) == 1 and (tmp_path / "file").read_text() == "mine"
    assert "compiled" not in out and not (tmp_path / "ckpt").exists()
