"""What a downloaded file must hash to: pinned in the registry, recorded in the lock file,
announced by its server (X-Linked-ETag) or its git blob id; the lock file, read and updated
under a lock that holds across processes.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nanogptx import datasets, provenance
from nanogptx.transport import CHUNK, SHA256, DownloadError

_LOCK_MUTEX = threading.Lock()  # flock serializes processes; this serializes our own threads


class HashMismatch(DownloadError, provenance.HashMismatch):
    """Downloaded bytes whose sha256 (or size) is not the expected one."""


@dataclass
class Expect:
    sha256: str | None
    # pinned | lock | announced | git-blob | local | first-download | unverified ("": the
    # server's announced one, else refused)
    check: str
    size: int | None
    git_sha1: str | None = None


def expect(f: datasets.RemoteFile, locked: dict[str, Any] | None) -> Expect:
    """The hash policy: pinned in the registry, else recorded in the lock, else the server's
    (where the registry says pin = "first-download": the first download's, recorded)."""
    if f.sha256:
        return Expect(f.sha256.lower(), "pinned", f.size)
    if locked:
        return Expect(locked["sha256"], "lock", locked["bytes"])
    if f.git_sha1:
        return Expect(None, "git-blob", f.size, f.git_sha1.lower())
    if f.local:  # the user's own file: its sha256 is recorded in the provenance
        return Expect(None, "local", f.size)
    if f.pin == "first-download":  # a server's announced hash still wins (_settled)
        return Expect(None, "first-download", f.size)
    return Expect(None, "", f.size)


def git_blob_sha1(path: Path) -> str:
    """The git blob id of a file: sha1 over b"blob <size>\0" + its bytes."""
    h = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def matches(path: Path, want: Expect) -> bool:
    if want.size is not None and path.stat().st_size != want.size:
        return False
    if want.git_sha1:
        return git_blob_sha1(path) == want.git_sha1
    return provenance.sha256_file(path) == want.sha256


def read_lock(path: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """{dataset: {file name: {"sha256": hex, "bytes": int}}}; a missing file is empty."""
    try:
        lock = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise DownloadError(f"lock file {path}: cannot read it as JSON: {e}") from None
    shape = '{"<dataset>": {"<file>": {"sha256": "<64 hex>", "bytes": <int>}}}'
    if not isinstance(lock, dict) or not all(isinstance(v, dict) for v in lock.values()):
        raise DownloadError(f"lock file {path}: expected {shape}")
    for dataset, entries in lock.items():
        for name, e in entries.items():
            ok = isinstance(e, dict) and type(e.get("bytes")) is int
            if not (ok and SHA256.fullmatch(str(e.get("sha256")))):
                raise DownloadError(
                    f"lock file {path}: {dataset}/{name}: expected {shape}, got {json.dumps(e)}"
                )
    return lock


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on path's directory: other processes and threads wait."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with _LOCK_MUTEX:
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the flock


def record_lock(path: Path, dataset: str, name: str, sha256: str, size: int) -> None:
    """Add dataset/name to the lock file (read, update, atomic rename, all under the lock)."""
    with _locked(path):
        lock = read_lock(path)
        entry = lock.setdefault(dataset, {}).get(name)
        if entry and entry.get("sha256") != sha256:
            raise HashMismatch(
                f"{dataset}/{name}: downloaded sha256 {sha256}, but {path} "
                f"meanwhile records {entry.get('sha256')}"
            )
        lock[dataset][name] = {"sha256": sha256, "bytes": size}
        lock[dataset] = dict(sorted(lock[dataset].items()))
        provenance.write_json_atomic(path, dict(sorted(lock.items())))
