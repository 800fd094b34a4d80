"""Download every file of a registry dataset, hash-verified, resumable, in parallel, into
<out>/<name>, unpack its archives there (archives.py), with <out>/provenance.json saying which
check applied (pins.py):

    python -m nanogptx.download --config config/shakespeare-char.toml --out data/raw/NAME \
        [--mirror DIR_OR_URL] [--lock config/download.lock.json] [--threads N]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import sys
import threading
from concurrent.futures import CancelledError, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nanogptx import archives, config, datasets, parts, progress, provenance
from nanogptx.errors import UserError
from nanogptx.parts import part_path
from nanogptx.pins import (
    Expect,
    HashMismatch,
    expect,
    git_blob_sha1,
    matches,
    read_lock,
    record_lock,
)
from nanogptx.transport import (
    CHUNK,
    DownloadError,
    Policy,
    Stream,
    Transient,
    local_path,
    open_source,
    source_for,
)

__all__ = ["DownloadError", "Fetched", "HashMismatch", "Policy", "Progress", "download", "main"]
DEFAULT_LOCK = Path("config/download.lock.json")
DEFAULT_POLICY = Policy()
OFFLINE_HINT = (
    "; offline? fetch from a mirror directory or URL instead: --config mirror=DIR_OR_URL "
    "(snakemake), --mirror DIR_OR_URL (python -m nanogptx.download)"
)


class _Cancelled(Exception):
    """Another file failed; stop this one and keep its .part for a later resume."""


@dataclass(frozen=True)
class Fetched:
    name: str
    path: Path
    bytes: int
    sha256: str
    check: str  # pinned | lock | announced | git-blob | local | first-download | unverified
    source: str
    downloaded: bool  # False when a present file already had the right hash


# ---------------------------------------------------------------------------------------------
# Progress: a live line on a terminal, periodic plain lines in a log


class Progress(progress.Meter):
    """Bytes, rate and ETA of a dataset's files, each file's bytes and one message per file
    done (a progress.Meter: a tqdm bar of all their bytes on a terminal, else a line every
    15 s on stderr; with a channel also to the workflow's terminal)."""

    def __init__(
        self,
        dataset: str,
        sizes: dict[str, int | None],
        tty: bool | None = None,
        channel: progress.Channel | None = None,
    ) -> None:
        self.totals, self.got, self.finished = dict(sizes), dict.fromkeys(sizes, 0), 0
        total = sum(t or 0 for t in sizes.values()) if None not in sizes.values() else None
        shown = {"unit": "B", "scale": True, "log": _stderr, "text": Progress.files,
                 "ended": lambda m: m.finished == len(m.got)}  # fmt: skip
        super().__init__(dataset, total, channel, 15.0, tty, **shown)

    def start(self, name: str, done: int, total: int | None) -> None:
        with self.lock:
            self.skip(done - self.got[name])  # resumed bytes count as done, not in the rate
            self.got[name] = done
            self.totals[name] = total if total is not None else self.totals[name]
            if None not in self.totals.values():
                self.total = sum(self.totals.values())  # type: ignore[arg-type]

    def received(self, name: str, n: int) -> None:
        with self.lock:
            self.got[name] += n
            super().add(n)

    def finish(self, name: str, nbytes: int, msg: str) -> None:
        with self.lock:
            self.skip(nbytes - self.got[name])
            self.got[name] = self.totals[name] = nbytes
            self.finished += 1
            self.say(msg, channel=True)
            if self.ended(self):  # the last line: every file verified, not only its bytes in
                self.update(self.done)

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


def _fetch(job: _Job, progress: Progress, cancel: threading.Event) -> Fetched:
    """Bring one file to job.out/<name>, verified, or raise DownloadError. A part is resumed
    only from the source it came from (_origin), or where the whole file's hash is known."""
    f, what = job.file, f"{job.dataset}/{job.file.name}"
    dest, part = job.out / f.name, part_path(job.out, f.name)
    want = expect(f, job.lock_entry)

    def done(sha: str, downloaded: bool) -> Fetched:
        nbytes = dest.stat().st_size
        if want.check in ("announced", "git-blob", "first-download"):
            record_lock(job.lock_path, job.dataset, f.name, sha, nbytes)
        if want.check == "first-download":
            progress.say(
                f"{what}: PINNED ON FIRST DOWNLOAD (trust on first use: nobody publishes its "
                f"hash): recorded sha256 {sha} ({_bytes(nbytes)}, from {job.source}) in "
                f"{job.lock_path}; commit it: every later download and mirror copy must match",
                channel=True,
            )
        how = f"done, {_mb(nbytes)}" if downloaded else "present, not downloaded again"
        progress.finish(f.name, nbytes, f"{what}: {how}, sha256 {sha} ({want.check})")
        return Fetched(f.name, dest, nbytes, sha, want.check, job.source, downloaded)

    if cancel.is_set():
        raise _Cancelled
    if dest.exists() and want.sha256:
        if matches(dest, want):
            return done(want.sha256, False)
        progress.say(f"{what}: present but not sha256 {want.sha256} ({want.check}); replacing it")
        dest.unlink()
    failures, restarted = 0, False
    while True:
        had = _size(part)
        try:
            result = _attempt(job, want, dest, part, progress, cancel)
        except Transient as e:
            # A failure after new bytes is not counted: a flaky link still gets there. Bytes
            # a server sends again from zero (ignoring Range) are not new.
            failures = 0 if _size(part) > had else failures + 1
            if e.discard_part:
                parts.discard(part)
            if cancel.wait(_backoff(job, e, failures, progress)):
                raise _Cancelled from None
            continue
        if result is None:
            return done(want.sha256 or provenance.sha256_file(dest), False)
        actual, nbytes, resumed = result
        if _verified(job, want, part, actual, nbytes, resumed):
            os.replace(part, dest)
            parts.origin_path(part).unlink(missing_ok=True)
            return done(actual, True)
        parts.discard(part)  # resuming from bytes that do not verify is pointless
        if not resumed or restarted:
            raise _mismatch(job, want, actual, nbytes)
        restarted = True
        progress.say(f"{what}: resumed bytes do not verify; downloading from zero")


def _backoff(job: _Job, e: Transient, failures: int, progress: Progress) -> float:
    """Seconds to wait before the next attempt (a server's Retry-After within the policy's
    most); DownloadError once the failures exceed the retries."""
    what, policy = f"{job.dataset}/{job.file.name}", job.policy
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
    return wait


def _verified(job: _Job, want: Expect, part: Path, actual: str, nbytes: int, resumed: bool) -> bool:
    """Whether the part is the file: its size, sha256 or git blob id as expected; a resumed
    copy of a file on disk with no hash known, against the file itself."""
    if want.size is not None and nbytes != want.size:
        return False
    if want.git_sha1 is not None and git_blob_sha1(part) != want.git_sha1:
        return False
    known = want.sha256 or want.git_sha1
    source = None if known or not resumed else local_path(job.source)
    if source is not None and provenance.sha256_file(source) != actual:
        return False
    return not (want.sha256 and actual != want.sha256)


def _mismatch(job: _Job, want: Expect, actual: str, nbytes: int) -> HashMismatch:
    expected = [f"{want.size} bytes"] if want.size is not None else []
    expected += [f"sha256 {want.sha256}"] if want.sha256 else []
    expected += [f"git blob id {want.git_sha1}"] if want.git_sha1 else []
    return HashMismatch(
        f"{job.dataset}/{job.file.name}: downloaded {nbytes} bytes with sha256 {actual}, "
        f"expected {' with '.join(expected)} ({want.check}) from {job.source}; nothing was "
        f"kept{_relock(job, want)}"
    )


def _relock(job: _Job, want: Expect) -> str:
    """How to accept a new version of a file that the lock file pins."""
    if want.check != "lock":
        return ""
    return (
        f" (if the file changed upstream on purpose, delete its entry from {job.lock_path} to "
        "pin the new one)"
    )


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _attempt(
    job: _Job, want: Expect, dest: Path, part: Path, progress: Progress, cancel: threading.Event
) -> tuple[str, int, bool] | None:
    """One request, appended to part: (sha256, bytes, resumed), or None if dest is the file."""
    h, offset = _rehash(part) if part.exists() else (hashlib.sha256(), 0)
    if want.size is not None and offset > want.size:
        parts.discard(part)
        h, offset = hashlib.sha256(), 0
    if want.sha256 and offset > 0 and offset == want.size:
        return h.hexdigest(), offset, True  # a complete .part from an earlier run: verify it
    stream = _open_for(job, want, part, offset, progress)
    try:
        if _settled(job, want, dest, part, stream):
            return None
        if stream.offset != offset:  # Range ignored, If-Range: changed, another source
            h, offset = hashlib.sha256(), 0
        if offset == 0:  # a new part: where its bytes come from, before the first of them
            provenance.write_json_atomic(parts.origin_path(part), parts.origin(job.source, stream))
        resumed = offset > 0
        offset = _stream_to(stream, part, h, offset, job.file.name, progress, cancel)
    finally:
        stream.close()
    if stream.total is not None and offset != stream.total:
        raise Transient(f"connection closed after {offset:,} of {_bytes(stream.total)}")
    return h.hexdigest(), offset, resumed


def _open_for(job: _Job, want: Expect, part: Path, offset: int, progress: Progress) -> Stream:
    """The source opened from offset, if the part's bytes provably came from it (or the whole
    file's hash will catch a mixture at the end); else, the part discarded, from zero."""
    origin = parts.read_origin(part) if offset else None
    if_range = origin and (origin.get("etag") or origin.get("last_modified"))
    stream = open_source(job.source, offset, job.policy, job.mirrored, if_range or None)
    if not offset or stream.offset != offset:
        return stream
    same = parts.same_origin(origin, parts.origin(job.source, stream))
    if same is True or (same is None and (want.sha256 or want.git_sha1 or stream.announced)):
        return stream
    stream.close()
    why = "has changed since" if same is False else "cannot be shown to be the source of"
    progress.say(
        f"{job.dataset}/{job.file.name}: {stream.url} {why} the partial file; downloading from zero"
    )
    parts.discard(part)
    return open_source(job.source, 0, job.policy, job.mirrored)


def _settled(job: _Job, want: Expect, dest: Path, part: Path, stream: Stream) -> bool:
    """Settle what the file must hash to, now its source is open (a server may announce it):
    True where dest already is that file; refused where nobody vouches for the file (but a
    registry pin = "first-download", whose sha256 the lock records when done), or its source
    announces another hash or size."""
    what = f"{job.dataset}/{job.file.name}"
    if want.check == "git-blob":  # checked over the whole file, before it is kept
        if dest.exists() and matches(dest, want):
            return True
    elif want.check == "local" or (want.check == "first-download" and not stream.announced):
        pass
    elif not want.sha256:
        if stream.announced:
            want.sha256, want.check = stream.announced, "announced"
        elif job.allow_unverified:
            want.check = "unverified"
        else:
            raise DownloadError(
                f"{what}: no sha256 pinned in the registry, none in {job.lock_path} and none "
                f"announced by {stream.url}; refusing it (set data.allow_unverified=true to "
                "accept it unchecked)"
            )
        if want.sha256 and dest.exists() and matches(dest, want):
            return True
    elif stream.announced and stream.announced != want.sha256:
        parts.discard(part)
        where = "the registry" if want.check == "pinned" else str(job.lock_path)
        raise HashMismatch(
            f"{what}: {stream.url} announces sha256 {stream.announced}, but {where} "
            f"expects {want.sha256}; the file changed upstream{_relock(job, want)}"
        )
    if want.size is not None and stream.total is not None and stream.total != want.size:
        parts.discard(part)
        raise HashMismatch(
            f"{what}: {stream.url} has {_bytes(stream.total)}, expected {want.size} "
            f"({want.check}){_relock(job, want)}"
        )
    return False


def _stream_to(
    stream: Stream,
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
                progress.received(name, len(chunk))
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
    policy: Policy = DEFAULT_POLICY,
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
    for p in archives.remove_leftovers(out):
        _say(channel, f"{ds.name}: removed {p.name}, what an interrupted unpack left")
    locked = read_lock(lock).get(ds.name, {})
    jobs = [
        _Job(
            ds.name,
            f,
            source_for(ds.name, f, mirror),
            mirror is not None,
            out,
            lock,
            locked.get(f.name),
            data.allow_unverified,
            policy,
        )
        for f in ds.files
    ]
    sizes = {j.file.name: expect(j.file, j.lock_entry).size for j in jobs}
    with Progress(ds.name, sizes, channel=channel) as watch:
        results = _run_all(jobs, watch, threads)
    fetched = [results[f.name] for f in ds.files]
    unpacked = _unpack(ds, fetched, out, channel)
    outputs = [
        {**provenance.file_entry(r.path, r.sha256), "check": r.check, "source": r.source}
        for r in fetched
    ]
    rec.finish(
        out,
        inputs=[],
        outputs=outputs,
        extra={"dataset": ds.name, "mirror": mirror, "lock": str(lock), "extracted": unpacked},
    )
    return fetched


def _unpack(
    ds: datasets.Dataset, fetched: list[Fetched], out: Path, channel: progress.Channel | None
) -> list[dict[str, Any]]:
    """Unpack the dataset's archives (extract = "zip") beside them, all checked before any is
    unpacked: [{"archive", "sha256", "files": [{"path", "bytes", "sha256"}]}]."""
    taken = {f.name: "the dataset's file" for f in ds.files}
    plan = []
    for f, got in zip(ds.files, fetched, strict=True):
        if f.extract:
            seen = {**taken, f.name: "the archive itself"}
            members = archives.check(got.path, seen)
            plan.append((got, seen))
            whose = f"a member of {f.name}"
            taken.update({m.path.parts[0]: whose for m in members})
    return [
        {
            "archive": got.name,
            "sha256": got.sha256,
            "files": archives.extract(
                got.path, out, seen, lambda m: _say(channel, f"{ds.name}/{m}")
            ),
        }
        for got, seen in plan
    ]


def _say(channel: progress.Channel | None, msg: str) -> None:
    _stderr(msg)
    if channel is not None:
        channel.say(msg)


def _run_all(jobs: list[_Job], watch: Progress, threads: int) -> dict[str, Fetched]:
    """Every job on a pool of threads: {file name: Fetched}; the first failure stops the
    others (their parts stay) and is raised, saying how many more failed."""
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
    if len(errors) > 1:
        raise type(errors[0])(f"{errors[0]} (and {len(errors) - 1} more failures)")
    if errors:
        raise errors[0]
    return results


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
    config.add_arguments(parser, ["data"], ("data.dataset", "data.allow_unverified"))  # it reads
    parser.add_argument(
        "--dataset", help="fetch this dataset of the registry instead of the run's data.dataset"
    )
    parser.add_argument("--out", type=Path, required=True, help="data/raw/<dataset>")
    parser.add_argument(
        "--mirror",
        default=os.environ.get("NANOGPTX_MIRROR") or None,
        help="fetch <mirror>/<dataset>/<file> from this directory or URL (default "
        "$NANOGPTX_MIRROR, the workflow's `mirror`; empty: the registry URLs)",
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
        channel = progress.from_args(args)
        download(
            cfg,
            args.out,
            args.mirror,
            args.lock,
            args.threads,
            dataset=args.dataset,
            channel=channel,
        )
    except UserError as e:
        parser.exit(1, f"{parser.prog}: error: {e}\n")


if __name__ == "__main__":
    main()
