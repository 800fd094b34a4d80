"""Download every file of a registry dataset, hash-verified, resumable, in parallel.

    python -m nanogptx.download --config config/shakespeare-char.toml \
        --out data/raw/tinyshakespeare [--mirror DIR_OR_URL] [--lock config/download.lock.json] \
        [--threads N]

Writes <out>/<file name> for every file and <out>/provenance.json saying which check applied.
A file in the making is <out>/.nanogptx-part.<name>, resumed by a later run only when its source
is provably the one it started from (.nanogptx-source.<name>: a local file's size and
modification time, a server's ETag or Last-Modified, sent back as If-Range), or when the whole
file's sha256 is known beforehand; a resumed local file is checked against its source's sha256.
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import hashlib
import http.client
import json
import os
import re
import socket
import ssl
import sys
import threading
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError, ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nanogptx import config, datasets, progress, provenance

DEFAULT_LOCK = Path("config/download.lock.json")
CHUNK = 1 << 20
MAX_REDIRECTS = 10
USER_AGENT = "nanogptx-download/0.1 (python http.client)"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_LOCK_MUTEX = threading.Lock()  # flock serializes processes; this serializes our own threads


class DownloadError(Exception):
    """An expected failure, reported as one line: 404, refused connection, bad hash, ..."""


class HashMismatch(DownloadError, provenance.HashMismatch):
    """Downloaded bytes whose sha256 (or size) is not the expected one."""


class _Transient(Exception):
    """A failure worth retrying: connection reset or refused, timeout, 5xx, short read."""

    def __init__(
        self,
        msg: str,
        retry_after: float | None = None,
        discard_part: bool = False,
        retries: int | None = None,
    ) -> None:
        super().__init__(msg)
        self.retry_after = retry_after  # seconds the server asked us to wait
        self.discard_part = discard_part  # the .part cannot be resumed
        self.retries = retries  # at most this many retries for it (None: the policy's)


class _Cancelled(Exception):
    """Another file failed; stop this one and keep its .part for a later resume."""


@dataclass(frozen=True)
class Policy:
    """Timeouts (seconds) and retries; tests shrink the backoff."""

    connect_timeout: float = 15.0
    read_timeout: float = 60.0
    retries: int = 5  # further attempts after a failure that made no progress
    backoff: float = 1.0  # first wait; doubles per failed attempt
    backoff_max: float = 60.0


@dataclass
class _Stream:
    """An open source of bytes from offset: an HTTP response or a local file."""

    url: str
    offset: int  # where the bytes start (0 when a server ignored our Range)
    total: int | None  # the whole file's size, where the source says it
    announced: str | None  # sha256 announced by the server (Git LFS X-Linked-ETag)
    read: Callable[[int], bytes]
    close: Callable[[], None]
    # What identifies this version of the file: a local file's modification time, a server's
    # strong ETag and Last-Modified (each None where the source gives none).
    mtime_ns: int | None = None
    etag: str | None = None
    last_modified: str | None = None


@dataclass(frozen=True)
class Fetched:
    name: str
    path: Path
    bytes: int
    sha256: str
    check: str  # pinned | lock | announced | git-blob | local | unverified
    source: str
    downloaded: bool  # False when a present file already had the right hash


# ---------------------------------------------------------------------------------------------
# Sources: https (registry), or a mirror directory, file:// or http(s):// base URL


def source_for(dataset: str, f: datasets.RemoteFile, mirror: str | None) -> str:
    """The URL (or local path) to fetch f from: the registry URL, or <mirror>/<dataset>/<name>;
    a file on disk (file:PATH) always from there."""
    if f.local:
        return f.url
    if mirror is None:
        if urllib.parse.urlsplit(f.url).scheme != "https":
            raise DownloadError(
                f"{dataset}/{f.name}: registry URL {f.url} is not https; only a mirror you "
                "configure may use http or file"
            )
        return f.url
    scheme = urllib.parse.urlsplit(mirror).scheme
    tail = f"{urllib.parse.quote(dataset)}/{urllib.parse.quote(f.name)}"
    if scheme in ("http", "https", "file"):
        return f"{mirror.rstrip('/')}/{tail}"
    if len(scheme) > 1:
        raise DownloadError(
            f"mirror {mirror!r}: expected a directory, file://, http:// or https://"
        )
    return str(Path(mirror).expanduser() / dataset / f.name)


def _proxy(scheme: str, host: str) -> urllib.parse.SplitResult | None:
    """The proxy from https_proxy / http_proxy / no_proxy; never for loopback addresses."""
    if host in ("127.0.0.1", "localhost", "::1") or urllib.request.proxy_bypass(host):
        return None
    url = urllib.request.getproxies().get(scheme)
    return urllib.parse.urlsplit(url if "://" in url else f"http://{url}") if url else None


def _connect(parts: urllib.parse.SplitResult, policy: Policy) -> http.client.HTTPConnection:
    host, port = parts.hostname or "", parts.port
    proxy = _proxy(parts.scheme, host)
    timeout = policy.connect_timeout
    if parts.scheme == "https":
        ctx = ssl.create_default_context()
        if proxy:
            conn = http.client.HTTPSConnection(
                proxy.hostname, proxy.port, timeout=timeout, context=ctx
            )
            conn.set_tunnel(host, port)
        else:
            conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=ctx)
    else:
        conn = http.client.HTTPConnection(
            proxy.hostname if proxy else host, proxy.port if proxy else port, timeout=timeout
        )
    conn.connect()
    conn.sock.settimeout(policy.read_timeout)  # the connect timeout covered connect + TLS
    return conn


def _network_error(e: BaseException, url: str) -> Exception:
    """A certificate problem is final; every other socket or protocol error is transient."""
    if isinstance(e, ssl.SSLCertVerificationError):
        return DownloadError(f"{url}: TLS certificate not trusted: {e.verify_message}")
    netloc = urllib.parse.urlsplit(url).netloc
    if isinstance(e, ConnectionRefusedError):
        return _Transient(f"connection refused by {netloc}")
    if isinstance(e, socket.gaierror):  # offline, or a wrong name: one retry is enough
        return _Transient(f"cannot resolve the host of {netloc}: {e.strerror}", retries=1)
    if isinstance(e, TimeoutError):
        return _Transient("timed out")
    return _Transient(f"{type(e).__name__}: {e}" if str(e) else type(e).__name__)


def announced_sha256(value: str | None) -> str | None:
    """The sha256 in an X-Linked-ETag header ('"<hex>"' or 'W/"<hex>"'), else None."""
    if not value:
        return None
    value = value.strip().removeprefix("W/").strip('"').lower()
    return value if _SHA256.fullmatch(value) else None


def _retry_after(resp: http.client.HTTPResponse) -> float | None:
    value = (resp.getheader("Retry-After") or "").strip()
    return float(value) if value.isdigit() else None  # an HTTP date: our own backoff


def _open_http(
    url: str, offset: int, policy: Policy, schemes: tuple[str, ...], if_range: str | None
) -> _Stream:
    """GET url from offset (if_range: only if the file is still that version, else all of it),
    following redirects; an announced hash may sit on any hop (HF)."""
    announced = None
    for _ in range(MAX_REDIRECTS + 1):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in schemes:
            raise DownloadError(f"{url}: refusing scheme {parts.scheme!r} (allowed: {schemes})")
        headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
            if if_range:
                headers["If-Range"] = if_range
        target = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
        conn = None
        try:
            conn = _connect(parts, policy)
            if _proxy(parts.scheme, parts.hostname or "") and parts.scheme == "http":
                target = url  # a plain-http proxy takes the absolute URL
            conn.request("GET", target, headers=headers)
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as e:
            if conn is not None:
                conn.close()
            raise _network_error(e, url) from None
        announced = announced or announced_sha256(resp.getheader("X-Linked-ETag"))
        status = resp.status
        if status in (301, 302, 303, 307, 308) and resp.getheader("Location"):
            conn.close()
            url = urllib.parse.urljoin(url, resp.getheader("Location"))
            continue
        if status in (200, 206):
            return _http_stream(url, conn, resp, offset, announced)
        conn.close()
        reason = f"HTTP {status} {resp.reason}".strip()
        if status == 416:  # our Range is past the end: the .part is not of this file
            raise _Transient(f"{reason}: discarding the partial file", discard_part=True)
        if status >= 500 or status in (408, 429):  # 408/429 ask the client to come back later
            raise _Transient(f"{reason} from {url}", retry_after=_retry_after(resp))
        raise DownloadError(f"{reason} for {url}")
    raise DownloadError(f"{url}: more than {MAX_REDIRECTS} redirects")


def _http_stream(
    url: str,
    conn: http.client.HTTPConnection,
    resp: http.client.HTTPResponse,
    offset: int,
    announced: str | None,
) -> _Stream:
    length = resp.getheader("Content-Length")
    total = int(length) if length and length.isdigit() else None
    start = 0
    if resp.status == 206:
        m = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", resp.getheader("Content-Range") or "")
        if not m or int(m[1]) != offset:
            conn.close()
            raise _Transient(
                f"{url}: answered Range bytes={offset}- with Content-Range "
                f"{resp.getheader('Content-Range')!r}",
                discard_part=True,
            )
        start = offset
        if total is not None and total != int(m[2]) - int(m[1]) + 1:
            conn.close()
            raise _Transient(
                f"{url}: Content-Length {total} disagrees with Content-Range", discard_part=True
            )
        total = int(m[3]) if m[3] != "*" else None

    def read(n: int) -> bytes:
        try:
            return resp.read1(n)  # what has arrived: a stall loses nothing already received
        except (OSError, http.client.HTTPException) as e:
            raise _network_error(e, url) from None

    etag = resp.getheader("ETag")
    etag = etag if etag and not etag.startswith("W/") else None  # If-Range takes strong ones
    return _Stream(url, start, total, announced, read, conn.close,
                   etag=etag, last_modified=resp.getheader("Last-Modified"))  # fmt: skip


def _open_file(path: Path, offset: int) -> _Stream:
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise DownloadError(f"mirror file {path} does not exist") from None
    except OSError as e:
        raise DownloadError(f"cannot read mirror file {path}: {e.strerror}") from None
    st = os.fstat(f.fileno())
    f.seek(min(offset, st.st_size))
    return _Stream(str(path), min(offset, st.st_size), st.st_size, None, f.read, f.close,
                   mtime_ns=st.st_mtime_ns)  # fmt: skip


def local_path(source: str) -> Path | None:
    """The file a source names on this machine (a path or file: URL); None for http(s)."""
    parts = urllib.parse.urlsplit(source)
    if parts.scheme == "file":
        return Path(urllib.request.url2pathname(parts.path))
    return None if parts.scheme in ("http", "https") else Path(source)


def _open(
    source: str, offset: int, policy: Policy, mirrored: bool, if_range: str | None = None
) -> _Stream:
    if (path := local_path(source)) is not None:
        return _open_file(path, offset)
    scheme = urllib.parse.urlsplit(source).scheme
    schemes = ("http", "https") if mirrored and scheme == "http" else ("https",)
    return _open_http(source, offset, policy, schemes, if_range)


# ---------------------------------------------------------------------------------------------
# The lock file: sha256 announced by servers, recorded once, checked on every later download


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
            if not (ok and _SHA256.fullmatch(str(e.get("sha256")))):
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


# ---------------------------------------------------------------------------------------------
# Progress: a live line on a terminal, periodic plain lines in a log


class Progress(progress.Meter):
    """Bytes, rate and ETA of a dataset's files, each file's bytes and one message per file
    done (a progress.Meter: a tqdm bar of all their bytes on a terminal, else a line every
    15 s on stderr; with a channel also to the workflow's terminal)."""

    def __init__(self, dataset: str, sizes: dict[str, int | None], tty: bool | None = None,
                 channel: progress.Channel | None = None) -> None:  # fmt: skip
        self.totals, self.got, self.finished = dict(sizes), dict.fromkeys(sizes, 0), 0
        total = sum(t or 0 for t in sizes.values()) if None not in sizes.values() else None
        super().__init__(dataset, total, channel, 15.0, tty, unit="B", scale=True,
                         log=_stderr, text=Progress.files)  # fmt: skip

    def start(self, name: str, done: int, total: int | None) -> None:
        with self.lock:
            self.skip(done - self.got[name])  # resumed bytes count as done, not in the rate
            self.got[name] = done
            self.totals[name] = total if total is not None else self.totals[name]
            if None not in self.totals.values():
                self.total = sum(self.totals.values())  # type: ignore[arg-type]

    def add(self, name: str, n: int) -> None:  # type: ignore[override]
        with self.lock:
            self.got[name] += n
            super().add(n)

    def finish(self, name: str, nbytes: int, msg: str) -> None:
        with self.lock:
            self.skip(nbytes - self.got[name])
            self.got[name] = self.totals[name] = nbytes
            self.finished += 1
            self.say(msg, channel=True)

    def files(self) -> str:
        """Files done, bytes (of the total), rate, ETA; each file under way: its bytes."""
        line = f"{self.what}: {self.finished}/{progress.plural(len(self.got), 'file')}, "
        line += _mb(self.done) + ("" if self.total is None else f" of {_mb(self.total)}")
        line += f", {_mb(self.rate())}/s" + ("" if self.total is None else f", ETA {self.eta()}")
        files = ", ".join(
            f"{f} {_mb(got)}" + (f" of {_mb(self.totals[f])}" if self.totals[f] else "")
            for f, got in self.got.items()
            if got and got != self.totals[f]
        )
        return line + (f"; {files}" if files else "")


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _bytes(n: int) -> str:
    return progress.plural(n, "byte")  # the module: functions below name their Progress so


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


# ---------------------------------------------------------------------------------------------
# One file


@dataclass(frozen=True)
class _Job:
    dataset: str
    file: datasets.RemoteFile
    source: str
    mirrored: bool
    out: Path
    lock_path: Path
    lock_entry: dict[str, Any] | None
    allow_unverified: bool
    policy: Policy


def _rehash(part: Path) -> tuple[Any, int]:
    """sha256 state and size of a partial file, to continue hashing where it ends."""
    h = hashlib.sha256()
    n = 0
    with open(part, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            n += len(chunk)
    return h, n


@dataclass
class _Expect:
    sha256: str | None
    check: str  # pinned | lock | announced | git-blob | local | unverified ("": the server's)
    size: int | None
    git_sha1: str | None = None


def git_blob_sha1(path: Path) -> str:
    """The git blob id of a file: sha1 over b"blob <size>\0" + its bytes."""
    h = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _expect(job: _Job) -> _Expect:
    """The hash policy: pinned in the registry, else recorded in the lock, else the server's."""
    f = job.file
    if f.sha256:
        return _Expect(f.sha256.lower(), "pinned", f.size)
    if job.lock_entry:
        return _Expect(job.lock_entry["sha256"], "lock", job.lock_entry["bytes"])
    if f.git_sha1:
        return _Expect(None, "git-blob", f.size, f.git_sha1.lower())
    if f.local:  # the user's own file: its sha256 is recorded in the provenance
        return _Expect(None, "local", f.size)
    return _Expect(None, "", f.size)


def _fetch(job: _Job, progress: Progress, cancel: threading.Event) -> Fetched:
    """Bring one file to job.out/<name>, verified, or raise DownloadError; see the module doc."""
    f, policy = job.file, job.policy
    what = f"{job.dataset}/{f.name}"
    dest, part = job.out / f.name, part_path(job.out, f.name)
    want = _expect(job)

    def done(sha: str, downloaded: bool) -> Fetched:
        nbytes = dest.stat().st_size
        if want.check in ("announced", "git-blob"):
            record_lock(job.lock_path, job.dataset, f.name, sha, nbytes)
        how = f"done, {_mb(nbytes)}" if downloaded else "present, not downloaded again"
        progress.finish(f.name, nbytes, f"{what}: {how}, sha256 {sha} ({want.check})")
        return Fetched(f.name, dest, nbytes, sha, want.check, job.source, downloaded)

    if cancel.is_set():
        raise _Cancelled
    if dest.exists() and want.sha256:
        if _matches(dest, want):
            return done(want.sha256, False)
        progress.say(f"{what}: present but not sha256 {want.sha256} ({want.check}); replacing it")
        dest.unlink()

    failures, restarted = 0, False
    while True:
        had = _size(part)
        try:
            result = _attempt(job, want, dest, part, progress, cancel)
        except _Transient as e:
            # A failure after new bytes is not counted: a flaky link still gets there. Bytes
            # a server sends again from zero (ignoring Range) are not new.
            failures = 0 if _size(part) > had else failures + 1
            if e.discard_part:
                _discard(part)
            retries = policy.retries if e.retries is None else min(e.retries, policy.retries)
            if failures > retries:
                raise DownloadError(
                    f"{what}: giving up after {failures} failed attempts: {e} ({job.source})"
                    + ("" if job.mirrored else OFFLINE_HINT)
                ) from None
            wait = min(policy.backoff * 2 ** max(failures - 1, 0), policy.backoff_max)
            if e.retry_after is not None:
                wait = min(max(wait, e.retry_after), policy.backoff_max)
            again = f"retry {failures} of {retries}" if failures else "resuming"
            progress.say(f"{what}: {e}; {again} in {wait:.1f} s")
            if cancel.wait(wait):
                raise _Cancelled from None
            continue
        if result is None:
            return done(want.sha256 or provenance.sha256_file(dest), False)
        actual, nbytes, resumed = result
        bad_size = want.size is not None and nbytes != want.size
        bad_blob = want.git_sha1 is not None and git_blob_sha1(part) != want.git_sha1
        # A resumed copy of a file on disk, no hash known: against the file itself.
        known = want.sha256 or want.git_sha1
        source = None if known or not resumed else local_path(job.source)
        bad_copy = source is not None and provenance.sha256_file(source) != actual
        if bad_size or bad_blob or bad_copy or (want.sha256 and actual != want.sha256):
            _discard(part)  # resuming from bytes that do not verify is pointless
            if resumed and not restarted:
                restarted = True
                progress.say(f"{what}: resumed bytes do not verify; downloading from zero")
                continue
            expected = [f"{want.size} bytes"] if want.size is not None else []
            expected += [f"sha256 {want.sha256}"] if want.sha256 else []
            expected += [f"git blob id {want.git_sha1}"] if want.git_sha1 else []
            raise HashMismatch(
                f"{what}: downloaded {nbytes} bytes with sha256 {actual}, expected "
                f"{' with '.join(expected)} ({want.check}) from {job.source}; nothing was kept"
            )
        os.replace(part, dest)
        origin_path(part).unlink(missing_ok=True)
        return done(actual, True)


OFFLINE_HINT = (
    "; offline? fetch from a mirror directory or URL instead: --config mirror=DIR_OR_URL "
    "(snakemake), --mirror DIR_OR_URL (python -m nanogptx.download)"
)


def part_path(out: Path, name: str) -> Path:
    """The file in the making: .nanogptx-part.NAME (provenance.MARKER; resumed, not removed)."""
    return out / f"{provenance.MARKER}part.{name}"


def origin_path(part: Path) -> Path:
    """Beside a part: which source, of which size and version, its bytes came from (JSON)."""
    return part.with_name(part.name.replace("-part.", "-source.", 1))


def _discard(part: Path) -> None:
    part.unlink(missing_ok=True)
    origin_path(part).unlink(missing_ok=True)


def _origin(job: _Job, stream: _Stream) -> dict[str, Any]:
    return {"source": job.source, "bytes": stream.total, "mtime_ns": stream.mtime_ns,
            "etag": stream.etag, "last_modified": stream.last_modified}  # fmt: skip


def _read_origin(part: Path) -> dict[str, Any] | None:
    try:
        origin = json.loads(origin_path(part).read_text())
    except (OSError, ValueError):
        return None  # missing or damaged: where the part's bytes came from is unknown
    return origin if isinstance(origin, dict) else None


def _same_origin(origin: dict[str, Any] | None, now: dict[str, Any]) -> bool | None:
    """True: a part's source is provably the file now opened (same size, and the same
    modification time, ETag or Last-Modified); False: provably another; None: unknown."""
    if origin is None or origin.get("source") != now["source"]:
        return None
    if None not in (origin.get("bytes"), now["bytes"]) and origin["bytes"] != now["bytes"]:
        return False
    for key in ("mtime_ns", "etag", "last_modified"):
        if None not in (origin.get(key), now[key]):
            return bool(origin[key] == now[key])
    return None


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _matches(path: Path, want: _Expect) -> bool:
    if want.size is not None and path.stat().st_size != want.size:
        return False
    if want.git_sha1:
        return git_blob_sha1(path) == want.git_sha1
    return provenance.sha256_file(path) == want.sha256


def _attempt(
    job: _Job, want: _Expect, dest: Path, part: Path, progress: Progress, cancel: threading.Event
) -> tuple[str, int, bool] | None:
    """One request, appended to part: (sha256, bytes, resumed), or None if dest is the file."""
    what = f"{job.dataset}/{job.file.name}"
    h, offset = _rehash(part) if part.exists() else (hashlib.sha256(), 0)
    if want.size is not None and offset > want.size:
        _discard(part)
        h, offset = hashlib.sha256(), 0
    if want.sha256 and offset > 0 and offset == want.size:
        return h.hexdigest(), offset, True  # a complete .part from an earlier run: verify it
    # Bytes appended to a part must come from the file its bytes came from. A known hash of
    # the whole file catches a mixture at the end; else the source must prove it is the same.
    verified = bool(want.sha256 or want.git_sha1)
    origin = _read_origin(part) if offset else None
    if_range = origin and (origin.get("etag") or origin.get("last_modified"))
    stream = _open(job.source, offset, job.policy, job.mirrored, if_range or None)
    if offset and stream.offset == offset:
        same = _same_origin(origin, _origin(job, stream))
        if same is False or (same is None and not (verified or stream.announced)):
            stream.close()
            why = "has changed since" if same is False else "cannot be shown to be the source of"
            progress.say(f"{what}: {stream.url} {why} the partial file; downloading from zero")
            _discard(part)
            h, offset = hashlib.sha256(), 0
            stream = _open(job.source, 0, job.policy, job.mirrored)
    try:
        if want.check == "git-blob":  # checked over the whole file, before it is kept
            if dest.exists() and _matches(dest, want):
                return None
        elif want.check == "local":
            pass
        elif not want.sha256:
            if stream.announced:
                want.sha256, want.check = stream.announced, "announced"
            elif job.allow_unverified:
                want.check = "unverified"
            else:
                raise DownloadError(
                    f"{what}: no sha256 pinned in the registry, none in {job.lock_path} and "
                    f"none announced by {stream.url}; refusing it (set "
                    "data.allow_unverified=true to accept it unchecked)"
                )
            if want.sha256 and dest.exists() and _matches(dest, want):
                return None
        elif stream.announced and stream.announced != want.sha256:
            _discard(part)
            where = "the registry" if want.check == "pinned" else str(job.lock_path)
            raise HashMismatch(
                f"{what}: {stream.url} announces sha256 {stream.announced}, but {where} "
                f"expects {want.sha256}; the file changed upstream"
            )
        if want.size is not None and stream.total is not None and stream.total != want.size:
            _discard(part)
            raise HashMismatch(
                f"{what}: {stream.url} has {_bytes(stream.total)}, expected "
                f"{want.size} ({want.check})"
            )
        if stream.offset != offset:  # Range ignored, or If-Range: changed. From zero again
            h, offset = hashlib.sha256(), 0
        if offset == 0:  # a new part: where its bytes come from, before the first of them
            provenance.write_json_atomic(origin_path(part), _origin(job, stream))
        resumed = offset > 0
        offset = _stream_to(stream, part, h, offset, job.file.name, progress, cancel)
    finally:
        stream.close()
    if stream.total is not None and offset != stream.total:
        raise _Transient(f"connection closed after {offset:,} of {_bytes(stream.total)}")
    return h.hexdigest(), offset, resumed


def _stream_to(
    stream: _Stream,
    part: Path,
    h: Any,
    offset: int,
    name: str,
    progress: Progress,
    cancel: threading.Event,
) -> int:
    """Write the stream into part from offset, hashing as it goes; returns the part's size."""
    progress.start(name, offset, stream.total)
    with open(part, "r+b" if offset else "wb") as out:
        out.seek(offset)
        out.truncate()
        try:
            while chunk := stream.read(CHUNK):
                out.write(chunk)
                h.update(chunk)
                offset += len(chunk)
                progress.add(name, len(chunk))
                if cancel.is_set():
                    raise _Cancelled
        finally:  # what arrived stays on disk for the next attempt
            out.flush()
            os.fsync(out.fileno())
    return offset


# ---------------------------------------------------------------------------------------------
# The stage


def download(
    cfg: config.Config | config.DataConfig,
    out: str | Path,
    mirror: str | None = None,
    lock: str | Path = DEFAULT_LOCK,
    threads: int = 4,
    policy: Policy = Policy(),
    dataset: str | None = None,
    channel: progress.Channel | None = None,
) -> list[Fetched]:
    """Fetch every file of `dataset` (default cfg.data.dataset: the run's text; else also
    weights or evaluation data) into out, verified, and write out/provenance.json."""
    data = cfg.data if isinstance(cfg, config.Config) else cfg
    if dataset is not None:
        data = dataclasses.replace(data, dataset=dataset)
    mirror = mirror or None  # config.yaml's `mirror: ""` means the registry URLs
    rec = provenance.Record.start("download", {"data": config.to_dict(data)})
    try:
        ds = datasets.get(data.dataset)
    except (datasets.UnknownDataset, datasets.RegistryError) as e:
        raise DownloadError(str(e)) from None
    out, lock = Path(out), Path(lock)
    try:
        with provenance.exclusive(
            out, "download", inputs=_inputs(ds, mirror), stage="download"
        ):  # parts stay
            return _download(ds, data, rec, out, mirror, lock, threads, policy, channel)
    except provenance.OutputError as e:
        raise DownloadError(str(e)) from None


def _inputs(ds: datasets.Dataset, mirror: str | None) -> list[tuple[str, Path | None]]:
    """What the download reads on this machine, which --out must be apart from: the files on
    disk, a local_dir, a mirror directory's folder of the dataset."""
    found: list[tuple[str, Path | None]] = [("local_dir", ds.local_dir and Path(ds.local_dir))]
    found += [("the file", local_path(f.url)) for f in ds.files if f.local]
    if mirror is not None and (path := local_path(mirror)) is not None:
        found.append(("the mirror's", path / ds.name))
    return found


def _download(
    ds: datasets.Dataset,
    data: config.DataConfig,
    rec: provenance.Record,
    out: Path,
    mirror: str | None,
    lock: Path,
    threads: int,
    policy: Policy,
    channel: progress.Channel | None,
) -> list[Fetched]:
    locked = read_lock(lock).get(ds.name, {})
    mirrored, unverified = mirror is not None, data.allow_unverified
    jobs = [
        _Job(
            ds.name,
            f,
            source_for(ds.name, f, mirror),
            mirrored,
            out,
            lock,
            locked.get(f.name),
            unverified,
            policy,
        )
        for f in ds.files
    ]

    watch = Progress(ds.name, {j.file.name: _expect(j).size for j in jobs}, channel=channel)
    cancel = threading.Event()
    results: dict[str, Fetched] = {}
    errors: list[DownloadError] = []
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(jobs)))) as pool:
        futures = {pool.submit(_run, job, watch, cancel): job for job in jobs}
        try:
            for fut in as_completed(futures):
                try:
                    results[futures[fut].file.name] = fut.result()
                except (_Cancelled, CancelledError):
                    pass
                except DownloadError as e:
                    errors.append(e)
                    cancel.set()
        finally:
            cancel.set()  # also on KeyboardInterrupt: workers stop at their next chunk
            for fut in futures:
                fut.cancel()
            watch.close()
    if errors:
        if len(errors) > 1:
            raise type(errors[0])(f"{errors[0]} (and {len(errors) - 1} more failures)")
        raise errors[0]

    fetched = [results[f.name] for f in ds.files]
    outputs = [
        {**provenance.file_entry(r.path, r.sha256), "check": r.check, "source": r.source}
        for r in fetched
    ]
    rec.finish(
        out,
        inputs=[],
        outputs=outputs,
        extra={"dataset": ds.name, "mirror": mirror, "lock": str(lock)},
    )
    return fetched


def _run(job: _Job, progress: Progress, cancel: threading.Event) -> Fetched:
    try:
        return _fetch(job, progress, cancel)
    except OSError as e:  # local disk errors; network errors never get here
        raise DownloadError(
            f"{job.dataset}/{job.file.name}: {e.strerror or e}: {e.filename or job.out}"
        ) from None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m nanogptx.download",
        description="Download every file of data.dataset, hash-verified, into --out.",
    )
    config.add_arguments(parser, ["data"])
    parser.add_argument(
        "--dataset", help="registry dataset to fetch (default data.dataset): text, weights, eval"
    )
    parser.add_argument("--out", type=Path, required=True, help="data/raw/<dataset>")
    parser.add_argument(
        "--mirror",
        default=os.environ.get("NANOGPTX_MIRROR") or None,
        help="fetch <mirror>/<dataset>/<file> from this directory or URL instead "
        "(default: $NANOGPTX_MIRROR, which the workflow sets from its `mirror`; empty: the "
        "registry URLs)",
    )
    parser.add_argument(
        "--lock",
        type=Path,
        default=DEFAULT_LOCK,
        help=f"sha256 recorded from servers (default {DEFAULT_LOCK})",
    )
    parser.add_argument("--threads", type=int, default=4, help="files downloaded at once")
    progress.add_arguments(parser, "download")
    args = parser.parse_intermixed_args(argv)
    cfg = config.from_args(args, parser)
    if args.threads < 1:
        parser.error(f"--threads {args.threads}: expected >= 1")
    try:
        download(cfg, args.out, args.mirror, args.lock, args.threads, dataset=args.dataset,
                 channel=progress.from_args(args))  # fmt: skip
    except DownloadError as e:
        parser.exit(1, f"{parser.prog}: error: {e}\n")


if __name__ == "__main__":
    main()
