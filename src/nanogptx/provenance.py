"""provenance.json: which inputs (by sha256), which config and which code made a stage's outputs;
`verify(path, sha256)` refuses an input whose bytes differ from what produced it.

    rec = Record.start("prepare", config_sections)   # ... work ..., then:
    rec.finish(out_dir, inputs=[...], outputs=[...], extra={...})   # writes out_dir/provenance.json
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import importlib.metadata
import json
import math
import os
import platform
import re
import secrets
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nanogptx.errors import UserError

FILENAME = "provenance.json"
# Every file or directory that a nanogptx process writes besides its outputs has a name that
# starts with this marker (.nanogptx-KIND....), which no user chooses: cleanup touches only those.
MARKER = ".nanogptx-"
_CHUNK = 1 << 20
# Temporaries of write_bytes_atomic and prepare's shards (tmp: a file), of checkpoint saves
# (tmpdir, trash: a directory of files): what an interrupted write leaves, removed by the next.
_LEFTOVER = re.compile(r"\.nanogptx-(tmp|tmpdir|trash)\.\d+\.[0-9a-f]{8}\..+")
# Names that nanogptx gave its temporaries before the marker: never removed (a user may have
# named a file so), only named, for the user to delete.
_OLD_TEMPORARY = re.compile(
    r"\..+\.\d+\.[0-9a-f]{8}\.tmp|\.(tmp|trash)-step_\d{8}-\d+-[0-9a-f]{8}|\..+\.part"
)
# The output directories this process holds (exclusive): an open descriptor of each, which
# keeps its inode from being reused, so that a directory deleted and made again is told apart.
_HELD: dict[Path, int] = {}


class HashMismatch(UserError, ValueError):
    """A file whose sha256 is not the one recorded for it."""


class OutputError(UserError, ValueError):
    """An output directory that cannot be used: a file, not writable, or in use by another run."""


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def verify(path: str | Path, expected: str, what: str = "file") -> None:
    """Raise HashMismatch naming the file and both hashes unless sha256(path) == expected."""
    actual = sha256_file(path)
    if actual != expected:
        raise HashMismatch(f"{what} {path}: sha256 is {actual}, expected {expected}")


class FileError(UserError, ValueError):
    """A file a stage reads that is not what it should be: names the path and what is wrong."""


def temp_name(kind: str, name: str) -> str:
    """The name of a temporary for name: .nanogptx-KIND.PID.HEX.NAME (see MARKER)."""
    return f"{MARKER}{kind}.{os.getpid()}.{secrets.token_hex(4)}.{name}"


def create_temp(path: Path) -> tuple[int, Path]:
    """Open a new hidden file beside path for its bytes in the making (temp_name "tmp"); the
    umask gives its permissions, as for any file the user makes (mkstemp would make it 0600,
    unreadable to the user's group on a cluster)."""
    tmp = path.parent / temp_name("tmp", path.name)
    return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write to a temporary file beside path, fsync, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = create_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def finite(value: Any) -> Any:
    """value with every NaN or inf float as None, so that it is strict JSON (a diverged run's
    losses are such floats)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    return value


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """obj as strict JSON (NaN and inf as null) at path, atomically."""
    write_bytes_atomic(path, (json.dumps(finite(obj), indent=2, allow_nan=False) + "\n").encode())


def read_json(path: str | Path, error: type[Exception] = FileError, what: str = "") -> Any:
    """The JSON value in path, or `error` naming the path and what is wrong (missing,
    unreadable, not UTF-8, not JSON: where)."""
    what = f"{what} " if what else ""
    try:
        return json.loads(Path(path).read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise error(f"{what}{path} is missing") from None
    except OSError as e:
        raise error(f"{what}{path} cannot be read: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise error(f"{what}{path}: not UTF-8 text (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise error(f"{what}{path}: not valid JSON: {e}") from None


def check_apart(
    out: str | Path, flag: str, inputs: Iterable[tuple[str, str | Path | None]]
) -> None:
    """Raise OutputError unless the output directory out is apart from every input (flag or
    description, path): not the same directory, not inside it, not holding it, by path with
    symlinks resolved and by identity (device and inode), which also sees one directory under
    two paths (a bind mount, a case-insensitive file system). Writing there would overwrite or
    delete what the stage reads (its record too)."""
    mine = Path(out).resolve()
    mine_id, above_mine = _identity(mine), _identities(mine.parents)
    for what, path in inputs:
        if path is None:
            continue
        theirs = Path(path).resolve()
        theirs_id = _identity(theirs)
        if mine == theirs or (mine_id is not None and mine_id == theirs_id):
            how = "is"
        elif mine.is_relative_to(theirs) or theirs_id in above_mine:
            how = "lies inside"
        elif theirs.is_relative_to(mine) or mine_id in _identities(theirs.parents):
            how = "contains"
        else:
            continue
        same = "" if str(mine) == str(out) and str(theirs) == str(path) else f" ({mine})"
        by_path = mine == theirs or mine.is_relative_to(theirs) or theirs.is_relative_to(mine)
        other = "" if by_path else " (one directory under two paths: a mount, or a file system "
        other += "" if by_path else "that ignores case)"
        raise OutputError(
            f"{flag} {out}{same} {how} {what} {path}{other}: a stage never writes where it "
            "reads; choose another output directory"
        )


def check_own(out: str | Path, flag: str, stage: str) -> None:
    """Raise OutputError if the directory out holds the record of another stage: writing there
    would replace that record (and the files it vouches for) with this stage's."""
    try:
        record = json.loads((Path(out) / FILENAME).read_bytes())
    except (OSError, ValueError):
        return  # no record there (or none that names a stage): nothing to lose but bytes
    theirs = record.get("stage") if isinstance(record, dict) else None
    if isinstance(theirs, str) and theirs != stage:
        raise OutputError(
            f"{flag} {out} holds the outputs of the {theirs} stage (its {FILENAME}): a stage "
            "writes only into a directory of its own; choose another output directory"
        )


def _identities(paths: Iterable[Path]) -> set[tuple[int, int]]:
    """The (device, inode) of each of paths that exists."""
    return {ident for p in paths if (ident := _identity(p)) is not None}


def output_dir(path: str | Path, flag: str = "--out") -> Path:
    """Create the output directory path (with its parents) or raise OutputError naming it: a
    stage checks this before any work, so that a bad --out never costs a training."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{flag} {path} is a file: expected a directory (or a new path)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{flag} {path} cannot be created: {e.strerror or e}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise OutputError(f"{flag} {path} is not writable")
    return path


def lock_path(root: str | Path) -> Path:
    """The lock file of an output directory: beside it (.nanogptx-lock.NAME), not inside, so
    that deleting the directory (as Snakemake does before a job) leaves the lock in place."""
    root = Path(root).resolve()
    return root.parent / f"{MARKER}lock.{root.name}"


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except (OSError, ValueError):  # missing, under a file, unreadable, a NUL in the path
        return None
    return st.st_dev, st.st_ino


def check_held(out_dir: str | Path) -> None:
    """Raise OutputError if out_dir, held by this process (exclusive), was deleted or replaced
    since: what was written there is lost, and a record of it would lie."""
    root = Path(out_dir).resolve()
    if root not in _HELD:
        return
    held = os.fstat(_HELD[root])
    if held.st_nlink == 0 or _identity(root) != (held.st_dev, held.st_ino):
        raise OutputError(
            f"{out_dir} was deleted or replaced while this process wrote into it (by another "
            "process: a second Snakemake, a user?): its outputs are incomplete; run the stage "
            "again"
        )


@contextmanager
def exclusive(
    path: str | Path,
    what: str,
    flag: str = "--out",
    inputs: Iterable[tuple[str, str | Path | None]] = (),
    stage: str | None = None,
) -> Iterator[list[Path]]:
    """Hold a lock on the directory path (flock on lock_path(path), removed when done) while a
    stage writes there; a second process is refused at once, naming the holder. The directory
    must be apart from the stage's inputs (check_apart), checked before anything is written.
    Holding it, remove an earlier run's provenance.json (the directory is the work of this run
    from now on) and what an interrupted run left (remove_temporaries), which no live process
    can still be writing; the removed paths are yielded. On leaving, the directory must still
    be the one locked (check_held). stage: the stage's name, as its record gives it; a
    directory that holds another stage's record is refused (check_own)."""
    check_apart(path, flag, inputs)
    if stage is not None:
        check_own(path, flag, stage)
    root = output_dir(path, flag)
    key, lock = root.resolve(), lock_path(root)
    made = os.open(key, os.O_RDONLY | os.O_DIRECTORY)  # what this process writes (check_held)
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            os.close(made)
            raise OutputError(
                f"{flag} {path}: cannot create its lock {lock}: {e.strerror}"
            ) from None
        if not _lock_now(fd):
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            os.close(made)
            raise OutputError(
                f"{root} is in use by another {what} ({holder}): wait for it to finish or use "
                "another directory"
            ) from None
        try:  # the lock is ours if its file was not removed by a holder that just finished
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    _HELD[key] = made
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {_now()}\n".encode(), 0)
        check_held(key)  # not deleted before the lock was ours
        # An earlier run's record goes before any output is replaced: a run stopped before
        # its own record (Record.finish) must not leave one that describes other bytes.
        (root / FILENAME).unlink(missing_ok=True)
        yield remove_temporaries(root)
        check_held(key)
    finally:
        _HELD.pop(key, None)
        lock.unlink(missing_ok=True)  # before the release: a waiter then sees a removed file
        os.close(fd)
        os.close(made)


# How long a stage tries for its lock before it refuses: holder() probes it with a shared lock
# for a moment (the workflow, before it starts jobs), which is no holder.
_PROBE_S = 1.0


def _lock_now(fd: int) -> bool:
    """Whether an exclusive flock on fd was taken: at once, or within _PROBE_S."""
    deadline = time.monotonic() + _PROBE_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)


def holder(path: str | Path) -> str | None:
    """Who holds directory path ("pid N on HOST since TIME") while a stage writes there, or None.
    The workflow asks before it starts any job: a job's start deletes its outputs and its log,
    which a live stage (of another Snakemake, or run by hand) may be writing."""
    try:
        fd = os.open(lock_path(path), os.O_RDONLY)
    except OSError:  # no lock file: nobody holds it
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # held for a moment only
    except OSError:
        return os.pread(fd, 200, 0).decode(errors="replace").strip() or "a process"
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _say(msg: str) -> None:
    print(f"nanogptx: {msg}", file=sys.stderr, flush=True)


def remove_temporaries(root: Path, say: Callable[[str], None] = _say) -> list[Path]:
    """Remove what interrupted writes of nanogptx left in root and return it: files named as
    temporary files (_LEFTOVER kind tmp) that are plain files, directories named as checkpoint
    temporaries that hold plain files only. Anything else is left alone, and said: a name with
    the marker that is not what nanogptx makes there, or a temporary of an older nanogptx."""
    removed = []
    for p in sorted(root.iterdir()):
        if not (m := _LEFTOVER.fullmatch(p.name)):
            if not p.name.startswith(MARKER) and _OLD_TEMPORARY.fullmatch(p.name):
                say(
                    f"left alone in {root}: {p.name}, named as an older nanogptx named its "
                    "temporaries: delete it if it is not yours"
                )
            continue
        st = os.lstat(p)
        if m[1] == "tmp" and stat.S_ISREG(st.st_mode):
            p.unlink()
        elif m[1] != "tmp" and stat.S_ISDIR(st.st_mode) and _remove_files_dir(p):
            pass
        else:
            say(f"left alone in {root}: {p.name}, not a temporary nanogptx wrote")
            continue
        removed.append(p)
    return removed


def _remove_files_dir(path: Path) -> bool:
    """Remove a directory of plain files (no subdirectory, no link: a checkpoint being written
    or pruned); anything else there leaves it untouched and gives False."""
    entries = list(path.iterdir())
    if not all(stat.S_ISREG(os.lstat(e).st_mode) for e in entries):
        return False
    for e in entries:
        e.unlink()
    path.rmdir()
    return True


def git_state(repo: Path | None = None) -> dict[str, Any]:
    """Commit and dirty flag of the code's checkout (None where it is not a git checkout)."""
    repo = repo or Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            r = subprocess.run(
                ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return r.stdout.strip() if r.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    dirty = None if commit is None else bool(git("status", "--porcelain", "--untracked-files=no"))
    return {"commit": commit, "dirty": dirty}


def versions(extra: tuple[str, ...] = ()) -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for pkg in ("nanogptx", "jax", "jaxlib", "optax", "numpy", "tiktoken", "pyarrow", *extra):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def devices() -> dict[str, Any] | None:
    """Device kind and count, only where jax is already imported (a data stage never loads it)."""
    jax = sys.modules.get("jax")
    if jax is None:
        return None
    devs = jax.devices()
    return {
        "platform": devs[0].platform,
        "kind": devs[0].device_kind,
        "count": len(devs),
        "processes": jax.process_count(),
    }


def file_entry(path: str | Path, sha256: str | None = None) -> dict[str, Any]:
    p = Path(path)
    return {"path": str(p), "bytes": p.stat().st_size, "sha256": sha256 or sha256_file(p)}


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


@dataclass
class Record:
    stage: str
    config: dict[str, Any]
    started: str = field(default_factory=_now)
    argv: list[str] = field(default_factory=lambda: [sys.executable, *sys.argv])

    @classmethod
    def start(cls, stage: str, config: dict[str, Any]) -> Record:
        return cls(stage=stage, config=config)

    def finish(
        self,
        out_dir: str | Path,
        inputs: list[dict[str, Any]],
        outputs: list[dict[str, Any]],
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Write out_dir/provenance.json; inputs and outputs are `file_entry` dicts. Never for a
        held directory that was deleted meanwhile (check_held): the record says the work is
        complete."""
        check_held(out_dir)
        record = {
            "stage": self.stage,
            "command": self.argv,
            "cwd": os.getcwd(),
            "config": self.config,
            "inputs": inputs,
            "outputs": outputs,
            **(extra or {}),
            "git": git_state(),
            "versions": versions(),
            "devices": devices(),
            "host": socket.gethostname(),
            "platform": platform.platform(),
            "started": self.started,
            "finished": _now(),
        }
        write_json_atomic(Path(out_dir) / FILENAME, record)
        return record


def read(out_dir: str | Path) -> dict[str, Any]:
    """The provenance record in out_dir; FileNotFoundError if there is none, FileError naming
    the file if it is not a record (not JSON, not an object, outputs not a list of objects)."""
    path = Path(out_dir) / FILENAME
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run the stage that makes it")
    record = read_json(path, FileError, "provenance record")
    outputs = record.get("outputs", []) if isinstance(record, dict) else None
    if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
        raise FileError(f"provenance record {path}: expected an object with a list of outputs")
    return record


def recorded_sha256(out_dir: str | Path, name: str) -> str | None:
    """The sha256 that out_dir's provenance records for its output file `name` (None: the
    record lists no such file); FileNotFoundError or FileError as `read`."""
    for entry in read(out_dir)["outputs"]:
        if Path(str(entry.get("path", ""))).name == name:
            sha = entry.get("sha256")
            return sha if isinstance(sha, str) else ""
    return None
