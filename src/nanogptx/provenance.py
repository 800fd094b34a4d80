"""provenance.json: which inputs (by sha256), which config and which code made a stage's outputs.

    rec = Record.start("prepare", config_sections)
    ... work ...
    rec.finish(out_dir, inputs=[...], outputs=[...], extra={...})   # writes out_dir/provenance.json

`verify(path, sha256)` refuses an input whose bytes differ from what produced it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FILENAME = "provenance.json"
_CHUNK = 1 << 20


class HashMismatch(ValueError):
    """A file whose sha256 is not the one recorded for it."""


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


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write to a temporary file beside path, fsync, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, obj: Any) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=2) + "\n").encode())


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
