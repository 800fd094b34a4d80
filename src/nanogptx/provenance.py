"""provenance.json: which inputs (by sha256), which config and which code made a stage's outputs.

    rec = Record.start("prepare", config_sections)
    ... work ...
    rec.finish(out_dir, inputs=[...], outputs=[...], extra={...})   # writes out_dir/provenance.json

`verify(path, sha256)` refuses an input whose bytes differ from what produced it.
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
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FILENAME = "provenance.json"
LOCK_FILE = ".nanogptx.lock"
_CHUNK = 1 << 20
# Temporaries of write_bytes_atomic, prepare's shards (create_temp) and checkpoint saves.
_TEMPORARY = re.compile(r"\..+\.tmp|\.tmp-.+|\.trash-.+")


class HashMismatch(ValueError):
    """A file whose sha256 is not the one recorded for it."""


class OutputError(ValueError):
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


def create_temp(path: Path) -> tuple[int, Path]:
    """Open a new hidden file beside path for its bytes in the making (.NAME.PID.HEX.tmp); the
    umask gives its permissions, as for any file the user makes (mkstemp would make it 0600,
    unreadable to the user's group on a cluster)."""
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
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


@contextmanager
def exclusive(path: str | Path, what: str, flag: str = "--out") -> Iterator[list[Path]]:
    """Hold a lock on the directory path (flock on path/.nanogptx.lock, removed when done) while
    a stage writes there; a second process is refused at once, naming the holder. Holding it,
    remove what an interrupted run left (temporary files and directories; see _TEMPORARY),
    which no live process can still be writing; the removed paths are yielded."""
    root = output_dir(path, flag)
    lock = lock_file(root)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
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
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {_now()}\n".encode(), 0)
        yield remove_temporaries(root)
    finally:
        lock.unlink(missing_ok=True)  # before the release: a waiter then sees a removed file
        os.close(fd)


def lock_file(root: Path) -> Path:
    """The file whose flock a stage holds while it writes into directory root."""
    return root / LOCK_FILE


def holder(path: str | Path) -> str | None:
    """Who holds directory path ("pid N on HOST since TIME") while a stage writes there, or None.
    The workflow asks before it starts any job: a job's start deletes its outputs and its log,
    which a live stage (of another Snakemake, or run by hand) may be writing."""
    try:
        fd = os.open(lock_file(Path(path)), os.O_RDONLY)
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


def remove_temporaries(root: Path) -> list[Path]:
    """Remove the temporary files and directories of interrupted writes in root."""
    removed = sorted(p for p in root.iterdir() if _TEMPORARY.fullmatch(p.name))
    for p in removed:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)
    return removed


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
        """Write out_dir/provenance.json; inputs and outputs are `file_entry` dicts."""
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
    path = Path(out_dir) / FILENAME
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is missing: run the stage that makes it") from None
