"""What every stage leaves in its output directories, run stage by stage as a user would:
permissions the umask gives, an interrupted run's temporaries removed by the next run and
nothing else, a directory another process is writing refused (its lock beside it), a bad --out
refused before any work (a file, or an input), and every file a stage reads that is damaged
named with what is wrong."""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from nanogptx import (
    checkpoint,
    config,
    datasets,
    download,
    eval,
    export,
    prepare,
    provenance,
    sample,
    status,
    train,
)

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
    "raw": [".nanogptx-tmp.4242.0badf00d.provenance.json"],
    "prepared": [".nanogptx-tmp.4242.0badf00d.train_000000.npy",
                 ".nanogptx-tmp.4242.1badf00d.manifest.json"],
    "model": [".nanogptx-tmp.4242.0badf00d.params.safetensors"],
    "checkpoints": [".nanogptx-tmpdir.4242.0badf00d.step_00000006/",
                    ".nanogptx-trash.4242.1badf00d.step_00000003/"],
    "samples": [".nanogptx-tmp.4242.0badf00d.samples.txt"],
}  # fmt: skip
# What a user may keep there, some named as nanogptx once named its temporaries: never removed.
MINE = [".tmp-work/thesis.tex", ".trash-old/notes.txt", ".thesis.tex.1.0badf00d.tmp",
        ".nanogptx-tmpdir.1.0badf00d.x/sub/mine.txt",
        ".nanogptx-tmp.1.0badf00d.dir/mine.txt"]  # fmt: skip


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


def test_a_rerun_removes_what_an_interrupted_run_left_and_nothing_else(
    finished: dict[str, Path], assets: Path, capsys: pytest.CaptureFixture
) -> None:
    # Every entry named .tmp-*, .trash-* or .*.tmp went, directories recursively: the user's
    # .tmp-work/thesis.tex too. Only what nanogptx makes goes now: marked names, of its kind.
    planted = plant(finished)
    mine = [finished[name] / path for name in finished for path in MINE]
    for path in mine:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("mine\n")
    stages(finished["raw"].parent, assets)
    assert [p for p in planted if p.exists()] == []
    assert all(p.read_text() == "mine\n" for p in mine)
    err = capsys.readouterr().err
    assert "left alone in" in err and ".thesis.tex.1.0badf00d.tmp, named as an older" in err
    assert not list(finished["model"].parent.rglob(".nanogptx-lock.*"))  # locks go too
    for name in finished:  # for the tests after this one
        for top in {Path(path).parts[0] for path in MINE}:
            target = finished[name] / top
            shutil.rmtree(target) if target.is_dir() else target.unlink()


def test_export_into_a_directory_of_the_users_leaves_their_files(
    finished: dict[str, Path], tmp_path: Path
) -> None:
    # The case: mkdir -p U/.tmp-work; echo x > U/.tmp-work/thesis.tex; export --out U.
    thesis = tmp_path / "U/.tmp-work/thesis.tex"
    thesis.parent.mkdir(parents=True)
    thesis.write_text("x\n")
    export.main(["--model", str(finished["model"]), "--out", str(tmp_path / "U")])
    assert thesis.read_text() == "x\n" and (tmp_path / "U/model.safetensors").is_file()


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
    live = out / provenance.temp_name("tmp", "train_000000.npy")  # the holder's, in the making
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
    """What the workflow asks before it starts jobs (docs/reliability.md)."""
    out = tmp_path / "out"
    assert provenance.holder(out) is None  # no directory yet
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == b"held\n"
        assert provenance.holder(out).startswith(f"pid {holder.pid} on ")
        shutil.rmtree(out)  # as Snakemake deletes a job's outputs: the lock beside it stays
        assert provenance.holder(out).startswith(f"pid {holder.pid} on ")
    finally:
        holder.kill()  # SIGKILL: its lock file stays behind, its lock does not
        holder.wait()
    assert provenance.lock_path(out).exists() and provenance.holder(out) is None
    with provenance.exclusive(out, "test"):  # the probe left the lock free to take
        assert provenance.holder(out).startswith(f"pid {os.getpid()} on ")


def test_a_probe_of_the_holder_never_makes_a_starting_stage_refuse(tmp_path: Path) -> None:
    # The workflow's probe (holder) takes a shared lock for a moment: a stage starting in that
    # moment refused, naming as the holder the dead process of a stale lock file.
    out = tmp_path / "out"
    lock = provenance.lock_path(out)
    lock.write_text("pid 999999 on a host since 2026-01-01\n")  # left by a killed stage
    fd = os.open(lock, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH)  # the probe, caught in its moment
    release = threading.Timer(0.2, os.close, [fd])
    release.start()
    try:
        with provenance.exclusive(out, "test"):
            assert provenance.holder(out).startswith(f"pid {os.getpid()} on ")
    finally:
        release.join()


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


def copy_of(finished: dict[str, Path], root: Path) -> dict[str, Path]:
    """The finished stages' directories copied under root (a test may damage them)."""
    return {name: Path(shutil.copytree(path, root / name)) for name, path in finished.items()}


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): provenance.sha256_file(p)
            for p in sorted(root.rglob("*")) if p.is_file()}  # fmt: skip


# Each stage: its main, the input an --out will overlap, its arguments but --out.
STAGES = {
    "prepare": (prepare.main, "raw", ["--raw", "{raw}"]),
    "train": (train.main, "prepared", ["--data", "{prepared}", "--checkpoints", "{checkpoints}"]),
    "sample": (sample.main, "model", ["--model", "{model}"]),
    "eval": (eval.main, "prepared", ["--model", "{model}", "--data", "{prepared}"]),
    "export": (export.main, "model", ["--model", "{model}"]),
}


def command(stage: str, dirs: dict[str, Path]) -> tuple[Any, list[str]]:
    main, _, args = STAGES[stage]
    settings = [] if stage == "export" else SETTINGS
    return main, [a.format(**dirs) for a in args] + settings


@pytest.mark.parametrize("how", ["is", "inside", "holds", "symlink"])
@pytest.mark.parametrize("stage", list(STAGES))
def test_an_out_that_overlaps_an_input_is_refused_before_writing(
    finished: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture, stage: str, how: str
) -> None:
    # export --model D --out D (sample, eval too) overwrote the training's provenance.json,
    # after which the tamper check of the parameters no longer applied.
    dirs = copy_of(finished, tmp_path / "copy")
    name = STAGES[stage][1]
    (tmp_path / "link").symlink_to(dirs[name])
    out = {"is": dirs[name], "inside": dirs[name] / "out", "holds": tmp_path / "copy",
           "symlink": tmp_path / "link"}[how]  # fmt: skip
    before = snapshot(tmp_path)
    main, args = command(stage, dirs)
    with pytest.raises(SystemExit) as e:
        main([*args, "--out", str(out)])
    err = capsys.readouterr().err
    assert e.value.code == 1 and "a stage never writes where it reads" in err, err
    assert snapshot(tmp_path) == before
    if stage == "train":  # its checkpoints neither
        with pytest.raises(SystemExit):
            main([*args, "--out", str(tmp_path / "m"), "--checkpoints", str(out)])
        assert "--checkpoints" in capsys.readouterr().err and snapshot(tmp_path) == before


@pytest.mark.parametrize(("stage", "into"), [("export", "samples"), ("sample", "prepared"),
                                           ("eval", "model"), ("train", "raw")])  # fmt: skip
def test_an_out_that_holds_another_stages_outputs_is_refused_before_writing(
    finished: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture, stage: str, into: str
) -> None:
    # export --out results/RUN/samples replaced sample's record with export's; sample --out
    # data/prepared/ID replaced prepare's, and train then refused the data as unverified.
    dirs = copy_of(finished, tmp_path / "copy")
    main, args = command(stage, dirs)
    if stage == "eval":  # its input is the prepared data; the model of the run is another's
        args = ["--model", str(dirs["model"]), "--data", str(dirs["prepared"]), *SETTINGS]
        dirs["model2"] = Path(shutil.copytree(dirs["model"], tmp_path / "copy" / "model2"))
        into = "model2"
    before = snapshot(tmp_path / "copy")
    with pytest.raises(SystemExit) as e:
        main([*args, "--out", str(dirs[into])])
    err = capsys.readouterr().err
    theirs = {"samples": "sample", "prepared": "prepare", "model2": "train", "raw": "download"}
    assert e.value.code == 1 and f"--out {dirs[into]} holds the outputs of the {theirs[into]} " \
        "stage" in err, err  # fmt: skip
    assert snapshot(tmp_path / "copy") == before


@pytest.mark.parametrize("stage", list(STAGES))
def test_a_run_stopped_before_its_record_leaves_no_record_of_an_earlier_run(
    finished: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stage: str
) -> None:
    # Killed between its outputs and its record, sample (eval, export, train's model) left the
    # earlier run's provenance.json beside the new outputs: a record of other bytes and settings.
    dirs = copy_of(finished, tmp_path / "copy")
    main, args = command(stage, dirs)
    out = {"prepare": dirs["prepared"], "train": dirs["model"], "sample": dirs["samples"]}.get(
        stage, tmp_path / "out")  # fmt: skip
    if not (out / provenance.FILENAME).exists():
        main([*args, "--out", str(out)])
    assert (out / provenance.FILENAME).exists()

    def killed(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt  # as a SIGINT (or SIGKILL) between the outputs and the record

    monkeypatch.setattr(provenance.Record, "finish", killed)
    with pytest.raises(KeyboardInterrupt):
        main([*args, "--out", str(out), *([] if stage == "export" else ["sample.seed=7"])])
    assert not (out / provenance.FILENAME).exists()


def test_an_out_that_is_an_input_through_a_bind_mount_is_refused(
    finished: dict[str, Path], tmp_path: Path
) -> None:
    # A directory has other paths than its symlinks: through a bind mount (as cluster home and
    # scratch directories often are) the paths differ, and export --out wrote into --model,
    # replacing the training's provenance.json.
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"]).returncode:
        pytest.skip("no user and mount namespaces here (unshare -rm)")
    copy, view = tmp_path / "copy", tmp_path / "view"
    copy_of(finished, copy)
    view.mkdir()
    before = snapshot(copy)
    outs = {"is": view / "model", "inside": view / "model" / "hf", "holds": view}
    script = f"mount --bind {copy} {view}" + "".join(
        f"; {sys.executable} -m nanogptx.export --model {copy / 'model'} --out {out}"
        for out in outs.values()
    )
    r = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True)
    for how, out in outs.items():
        said = {"is": "is", "inside": "lies inside", "holds": "contains"}[how]
        assert f"--out {out} {said} --model {copy / 'model'} (one directory under two paths" \
            in r.stderr, r.stderr  # fmt: skip
    assert r.stderr.count("a stage never writes where it reads") == 3, r.stderr
    assert snapshot(copy) == before


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def cut_mid_value(path: Path) -> None:  # a file cut short inside a line
    data = path.read_bytes()
    path.write_bytes(data[: data.index(b"=", len(data) // 2) + 1])


def drop_last_line(path: Path) -> None:  # a file cut short at a line's end: still TOML
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:-1]))


def swap_splits(path: Path) -> None:
    path.write_text(path.read_text().replace('"train"', '"tmp"').replace('"val"', '"train"')
                    .replace('"tmp"', '"val"'))  # fmt: skip


DAMAGE = [  # stage, file, damage, what the error says after the path
    ("sample", "model/tokenizer.json", truncate, "not valid JSON"),
    ("eval", "model/tokenizer.json", lambda p: p.write_text('{"name": "bpe"}'),
     "unknown tokenizer 'bpe'"),
    ("export", "model/provenance.json", truncate, "not valid JSON"),
    ("sample", "model/config.toml", cut_mid_value, "not valid TOML"),
    ("sample", "model/config.toml", drop_last_line, "the model changed after training"),
    ("export", "model/params.safetensors", truncate, "cannot be read"),
    ("eval", "prepared/manifest.json", truncate, "not valid JSON"),
    ("train", "prepared/manifest.json", swap_splits, "sha256 is"),
    ("train", "prepared/provenance.json", truncate, "not valid JSON"),
    ("prepare", "raw/provenance.json", lambda p: p.write_text("[]"),
     "expected an object with a list of outputs"),
]  # fmt: skip


@pytest.mark.parametrize(("stage", "file", "damage", "says"), DAMAGE)
def test_a_damaged_file_a_stage_reads_is_named_with_what_is_wrong(
    finished: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture,
    stage: str, file: str, damage: Any, says: str,
) -> None:  # fmt: skip
    # A corrupt tokenizer.json gave a JSONDecodeError traceback.
    dirs = copy_of(finished, tmp_path / "copy")
    path = tmp_path / "copy" / file
    damage(path)
    main, args = command(stage, dirs)
    with pytest.raises(SystemExit) as e:
        main([*args, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert e.value.code == 1 and "Traceback" not in err
    assert str(path) in err.splitlines()[-1] and says in err.splitlines()[-1], err


def _workflow_files(root: Path) -> None:
    checkout = Path(__file__).resolve().parents[1]
    shutil.copy(checkout / "Snakefile", root / "Snakefile")
    shutil.copytree(checkout / "workflow" / "rules", root / "workflow" / "rules")


def test_status_names_a_damaged_eval_record(
    finished: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "config/run.toml").write_text("")
    (tmp_path / "results/run/eval").mkdir(parents=True)
    (tmp_path / "results/run/eval/metrics.json").write_text('{"val_loss": ')
    _workflow_files(tmp_path)  # status reads its stages from them
    monkeypatch.chdir(tmp_path)
    lines = status.run_status("run", Path("data"), Path("results"))
    assert lines[-1] == "  eval: eval metrics results/run/eval/metrics.json: not valid JSON: " \
        "Expecting value: line 1 column 14 (char 13)"  # fmt: skip


def test_status_shows_a_diverged_run_and_skips_lines_that_are_no_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A run that diverged to NaN has its losses as null (strict JSON): status ended in a
    # TypeError, as it did on a line that is JSON but no record, and on bytes not UTF-8.
    (tmp_path / "config").mkdir()
    (tmp_path / "config/run.toml").write_text("[train]\nmax_iters = 10\n")
    (tmp_path / "results/run/eval").mkdir(parents=True)
    (tmp_path / "results/run/model").mkdir()
    (tmp_path / "results/run/model/metrics.jsonl").write_bytes(
        b'{"kind": "train", "step": 3, "loss": 5.25}\n[1]\n"eval"\n\xff\xfe\n'
        b'{"kind": "eval", "step": 4, "val_loss": null, "train_loss": null}\n'
        b'{"kind": "train", "step": 4, "loss": null}\n{"kind": "train"\n'
    )
    (tmp_path / "results/run/eval/metrics.json").write_text(
        '{"val_loss": {"loss": null, "bits_per_byte": null}, "hellaswag": {"acc_norm": null, '
        '"items": 1}}'
    )
    _workflow_files(tmp_path)  # status reads its stages from them
    monkeypatch.chdir(tmp_path)
    lines = status.run_status("run", Path("data"), Path("results"))
    assert lines[1] == "  training in progress or stopped: step 5 of 10, loss not finite; " \
        "val loss not finite at step 4"  # fmt: skip
    assert lines[2] == "  eval: val loss not finite (not finite bits/byte, whole split); " \
        "HellaSwag acc_norm not finite over 1 item"  # fmt: skip


def test_a_model_loads_without_its_dataset_file_and_despite_a_broken_one(
    finished: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:  # fmt: skip
    # Loading a model directory parsed the whole registry: one broken or machine-specific file
    # in config/datasets/ blocked export, sample and status, and a model whose dataset file was
    # removed could not be loaded.
    registry = tmp_path / "config/datasets"
    registry.mkdir(parents=True)
    (registry / "other.toml").write_text('reader = "text"\nlocal_dir = "/not/on/this/machine"\n')
    monkeypatch.setenv("NANOGPTX_DATASETS", str(registry))  # tinyshakespeare.toml: gone
    monkeypatch.setattr(datasets, "REGISTRY", {})
    model, run = finished["model"], tmp_path / "run.toml"
    run.write_text('[data]\ndataset = "tinyshakespeare"\n')
    assert checkpoint.load_model(model)[1].data.dataset == "tinyshakespeare"
    sample.main(["--config", str(run), *SETTINGS, "--model", str(model), "--out",
                 str(tmp_path / "samples")])  # fmt: skip
    eval.main(["--config", str(run), *SETTINGS, "--model", str(model), "--data",
               str(finished["prepared"]), "--out", str(tmp_path / "eval")])  # fmt: skip
    export.main(["--model", str(model), "--out", str(tmp_path / "hf")])
    for out in ("samples", "eval", "hf"):
        assert provenance.read(tmp_path / out)["inputs"][0]["path"].startswith(str(model))
    _workflow_files(tmp_path)  # status reads its stages from them
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config/run.toml").write_text(run.read_text())
    lines = status.run_status("run", tmp_path / "data", tmp_path / "results")
    assert lines[0].startswith("run: download -") and "config error" not in lines[0]
    assert "error" not in capsys.readouterr().err


PREPARE = [sys.executable, "-m", "nanogptx.prepare", *SETTINGS, "--threads", "1"]


def test_two_prepares_into_one_directory_never_both_write_even_if_it_is_deleted_between(
    finished: dict[str, Path], tmp_path: Path
) -> None:
    # The lock lived inside the output directory, which Snakemake deletes before a job: two
    # clones sharing paths.data ran prepare into one directory at once, and both exit 0.
    out = tmp_path / "prepared"
    cmd = [*PREPARE, "--raw", str(finished["raw"]), "--out", str(out)]
    first = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    lock = provenance.lock_path(out)
    deadline = time.monotonic() + 60
    while not (lock.exists() and lock.read_text().startswith("pid")):
        assert first.poll() is None and time.monotonic() < deadline, "prepare ended too soon"
        time.sleep(0.001)
    os.kill(first.pid, signal.SIGSTOP)  # the first prepare holds the lock, mid-work
    try:
        shutil.rmtree(out)  # as a second Snakemake does before its job
        second = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    first_err = first.communicate(timeout=120)[1]
    assert second.returncode == 1, second.stderr
    assert f"is in use by another prepare (pid {first.pid} on " in second.stderr
    assert first.returncode == 1 and str(out) in first_err.splitlines()[-1], first_err
    assert not (out / "provenance.json").exists()  # no record of a complete output


@pytest.mark.parametrize(
    "command",
    [
        ["nanogptx.status", "--runs", "tiny,shakespeare-char"],
        ["nanogptx.sweep", "lr-tiny"],
        ["nanogptx.sweep", "lr-sensitivity-gpu", "--cost"],
        ["nanogptx.schema"],
    ],
)
def test_a_listing_into_a_reader_that_stops_early_ends_without_a_traceback(command) -> None:
    # `python -m nanogptx.status | head -1` ended in a BrokenPipeError traceback, and so did
    # `python -m nanogptx.sweep lr-tiny | head -3`.
    proc = subprocess.Popen(
        [sys.executable, "-m", *command],
        cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    proc.stdout.close()  # the reader is gone before status writes
    err = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert "Traceback" not in err and "BrokenPipe" not in err, err


@pytest.mark.parametrize(
    ("metrics", "says"),
    [("[]", "expected a JSON object, not list"),
     ('{"model_sha256": "ab"}', "no task's figures in it"),
     ('{"val_loss": 2.5, "hellaswag": {"acc_norm": 0.3}}',
      "val_loss: expected an object of its figures")],
)  # fmt: skip
def test_status_says_a_malformed_eval_record_is_so_and_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, metrics: str, says: str
) -> None:
    """Valid JSON that is no eval record printed an empty `eval:` line."""
    (tmp_path / "config").mkdir()
    (tmp_path / "config/run.toml").write_text("")
    (tmp_path / "results/run/eval").mkdir(parents=True)
    (tmp_path / "results/run/eval/metrics.json").write_text(metrics)
    _workflow_files(tmp_path)  # status reads its stages from them
    monkeypatch.chdir(tmp_path)
    lines = status.run_status("run", Path("data"), Path("results"))
    assert lines[-1] == f"  eval: eval metrics results/run/eval/metrics.json is malformed: {says}"


def test_status_refuses_a_bad_config_pair_in_one_line_and_shows_a_bugs_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Its main caught every ValueError: a bug in status printed as a one-line error."""
    checkout = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(checkout)  # status reads config/config.yaml and the workflow's rules
    with pytest.raises(SystemExit) as exit:
        status.main(["--config", "speed=3"])
    assert exit.value.code == 2
    assert capsys.readouterr().err.endswith("error: --config speed=3: expected KEY=VALUE with "
                                            "KEY one of runs, sweep, mirror, paths\n")  # fmt: skip

    def bug(workflow: dict) -> dict:
        raise ValueError("a bug in status")

    monkeypatch.setattr(status, "selected_runs", bug)
    with pytest.raises(ValueError, match="a bug in status"):
        status.main(["--runs", "tiny"])
