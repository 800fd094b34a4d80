"""Where a download's bytes come from: a file's source (its registry https URL, a mirror
directory, file:// or http(s)://), opened from an offset as a Stream: HTTP with proxies,
redirects, Range, If-Range and Retry-After on http.client, or a local file.
"""

from __future__ import annotations

import http.client
import os
import re
import socket
import ssl
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nanogptx import datasets
from nanogptx.errors import UserError

CHUNK = 1 << 20  # bytes read (and hashed) at a time
SHA256 = re.compile(r"[0-9a-f]{64}")
MAX_REDIRECTS = 10
USER_AGENT = "nanogptx-download/0.1 (python http.client)"


class DownloadError(UserError):
    """An expected failure, reported as one line: 404, refused connection, bad hash, ..."""


class Transient(Exception):
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


@dataclass(frozen=True)
class Policy:
    """Timeouts (seconds) and retries; tests shrink the backoff."""

    connect_timeout: float = 15.0
    read_timeout: float = 60.0
    retries: int = 5  # further attempts after a failure that made no progress
    backoff: float = 1.0  # first wait; doubles per failed attempt
    backoff_max: float = 60.0


@dataclass
class Stream:
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
    """A certificate problem or a malformed URL is final; every other socket or protocol error
    is transient."""
    if isinstance(e, ssl.SSLCertVerificationError):
        return DownloadError(f"{url}: TLS certificate not trusted: {e.verify_message}")
    if isinstance(e, (http.client.InvalidURL, UnicodeEncodeError)):  # no retry mends it
        return DownloadError(f"{url}: not a URL ({e}); write a space as %20, ø as %C3%B8")
    netloc = urllib.parse.urlsplit(url).netloc
    if isinstance(e, ConnectionRefusedError):
        return Transient(f"connection refused by {netloc}")
    if isinstance(e, socket.gaierror):  # offline, or a wrong name: one retry is enough
        return Transient(f"cannot resolve the host of {netloc}: {e.strerror}", retries=1)
    if isinstance(e, TimeoutError):
        return Transient("timed out")
    return Transient(f"{type(e).__name__}: {e}" if str(e) else type(e).__name__)


def announced_sha256(value: str | None) -> str | None:
    """The sha256 in an X-Linked-ETag header ('"<hex>"' or 'W/"<hex>"'), else None."""
    if not value:
        return None
    value = value.strip().removeprefix("W/").strip('"').lower()
    return value if SHA256.fullmatch(value) else None


def _retry_after(resp: http.client.HTTPResponse) -> float | None:
    value = (resp.getheader("Retry-After") or "").strip()
    return float(value) if value.isdigit() else None  # an HTTP date: our own backoff


def _open_http(
    url: str, offset: int, policy: Policy, schemes: tuple[str, ...], if_range: str | None
) -> Stream:
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
        except (OSError, http.client.HTTPException, UnicodeEncodeError) as e:
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
            raise Transient(f"{reason}: discarding the partial file", discard_part=True)
        if status >= 500 or status in (408, 429):  # 408/429 ask the client to come back later
            raise Transient(f"{reason} from {url}", retry_after=_retry_after(resp))
        raise DownloadError(f"{reason} for {url}")
    raise DownloadError(f"{url}: more than {MAX_REDIRECTS} redirects")


def _http_stream(
    url: str,
    conn: http.client.HTTPConnection,
    resp: http.client.HTTPResponse,
    offset: int,
    announced: str | None,
) -> Stream:
    length = resp.getheader("Content-Length")
    total = int(length) if length and length.isdigit() else None
    start = 0
    if resp.status == 206:
        m = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", resp.getheader("Content-Range") or "")
        if not m or int(m[1]) != offset:
            conn.close()
            raise Transient(
                f"{url}: answered Range bytes={offset}- with Content-Range "
                f"{resp.getheader('Content-Range')!r}",
                discard_part=True,
            )
        start = offset
        if total is not None and total != int(m[2]) - int(m[1]) + 1:
            conn.close()
            raise Transient(
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
    return Stream(
        url,
        start,
        total,
        announced,
        read,
        conn.close,
        etag=etag,
        last_modified=resp.getheader("Last-Modified"),
    )


def _open_file(path: Path, offset: int) -> Stream:
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise DownloadError(f"mirror file {path} does not exist") from None
    except OSError as e:
        raise DownloadError(f"cannot read mirror file {path}: {e.strerror}") from None
    st = os.fstat(f.fileno())
    f.seek(min(offset, st.st_size))
    return Stream(
        str(path),
        min(offset, st.st_size),
        st.st_size,
        None,
        f.read,
        f.close,
        mtime_ns=st.st_mtime_ns,
    )


def local_path(source: str) -> Path | None:
    """The file a source names on this machine (a path or file: URL); None for http(s)."""
    parts = urllib.parse.urlsplit(source)
    if parts.scheme == "file":
        return Path(urllib.request.url2pathname(parts.path))
    return None if parts.scheme in ("http", "https") else Path(source)


def open_source(
    source: str, offset: int, policy: Policy, mirrored: bool, if_range: str | None = None
) -> Stream:
    if (path := local_path(source)) is not None:
        return _open_file(path, offset)
    scheme = urllib.parse.urlsplit(source).scheme
    schemes = ("http", "https") if mirrored and scheme == "http" else ("https",)
    return _open_http(source, offset, policy, schemes, if_range)
