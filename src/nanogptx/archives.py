"""Unpack a downloaded archive (a registry file with `extract = "zip"`) into its download's
directory, each member at its own path. Every member is checked before a byte is written, so a
refused archive writes nothing; the members go to a temporary directory that is renamed into
place, so a kill leaves nothing partial at a final path. Called by nanogptx.download.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import unicodedata
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from nanogptx import provenance
from nanogptx.transport import CHUNK, DownloadError

# Zip bombs: refused from the central directory, before anything is unpacked. Text compresses
# about 3-10x with deflate; deflate's own limit is about 1032x.
MAX_BYTES = 64 << 30  # all members together, unpacked
MAX_MEMBERS = 200_000
MAX_RATIO = 200  # unpacked / packed bytes of one member, or of all (members sharing bytes) ...
RATIO_FROM = 1 << 20  # ... over this many bytes (tiny files compress as they like)
_COMPRESSION = {
    zipfile.ZIP_STORED,
    zipfile.ZIP_DEFLATED,
    zipfile.ZIP_BZIP2,
    zipfile.ZIP_LZMA,
}
# What an interrupted unpack leaves in the download's directory (provenance.temp_name): the
# members in the making, and a previous unpack's entries on their way out.
_LEFTOVER = re.compile(r"\.nanogptx-(unpack|unpacked)\.\d+\.[0-9a-f]{8}\..+")
_DRIVE = re.compile(r"[A-Za-z]:")
NAME_MAX = 255  # bytes of one file name (ext4, xfs, APFS, NTFS)


class ArchiveError(DownloadError):
    """An archive or one of its members refused: names the archive, the member and why."""


@dataclass(frozen=True)
class Member:
    info: zipfile.ZipInfo
    path: PurePosixPath  # relative, checked: no '..', no absolute path, no link
    is_dir: bool


def fold(name: str) -> str:
    """What a case-insensitive or normalising file system (macOS, Windows) makes of a name: two
    names that fold alike would be one file there, so one archive must not hold both."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())


def _refuse(archive: Path, info: zipfile.ZipInfo | None, why: str) -> ArchiveError:
    member = "" if info is None else f": member {info.orig_filename!r}"
    return ArchiveError(f"archive {archive}{member}: {why}; nothing was unpacked")


def _kind(archive: Path, info: zipfile.ZipInfo) -> bool:
    """Whether the member is a directory (else a regular file); links and special files are
    refused: a link could point a later member, or a reader, outside the directory."""
    mode = info.external_attr >> 16 if info.create_system == 3 else 0  # 3: written on Unix
    kind = stat.S_IFMT(mode)
    if stat.S_ISLNK(mode):
        raise _refuse(archive, info, "a symbolic link; only files and directories are unpacked")
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        why = f"a special file (mode {oct(mode)}); only files and directories are unpacked"
        raise _refuse(archive, info, why)
    is_dir = info.filename.endswith("/") or kind == stat.S_IFDIR or bool(info.external_attr & 0x10)
    if is_dir and info.file_size:
        raise _refuse(archive, info, f"a directory entry holding {info.file_size} bytes")
    return is_dir


def _path(archive: Path, info: zipfile.ZipInfo) -> PurePosixPath:
    """The member's relative path, or refused: anything that could land outside the directory
    or read differently on another system."""
    name = info.orig_filename  # zipfile cuts filename at a NUL byte: check what is stored
    if not name.strip("/"):
        raise _refuse(archive, info, "an empty name")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise _refuse(archive, info, "a control character in its name")
    if "\\" in name:
        raise _refuse(archive, info, "a backslash in its name (a Windows path separator)")
    if name.startswith("/"):
        raise _refuse(archive, info, "an absolute path")
    if _DRIVE.match(name):
        raise _refuse(archive, info, "a drive letter")
    parts = name.removesuffix("/").split("/")
    if ".." in parts:
        raise _refuse(archive, info, "'..' in its path (it would land outside the directory)")
    if any(p in ("", ".") for p in parts):
        raise _refuse(archive, info, "an empty or '.' part in its path")
    if any(len(os.fsencode(p)) > NAME_MAX for p in parts):
        raise _refuse(archive, info, f"a part of its path longer than {NAME_MAX} bytes")
    if any(p.startswith(provenance.MARKER) for p in parts):
        raise _refuse(archive, info, f"a name starting {provenance.MARKER} (nanogptx's own)")
    return PurePosixPath(*parts)


def check(
    archive: Path, taken: dict[str, str] | None = None, opened: BinaryIO | None = None
) -> list[Member]:
    """The members of a zip archive (read from opened, its open file, where given), each
    checked (_path, _kind), none colliding with another (the same name twice, two names alike
    by case or Unicode normalisation, a file where another member has a directory) or with a
    name in taken ({top-level name: whose}: the dataset's files beside the archive);
    ArchiveError names the first refused."""
    try:
        with zipfile.ZipFile(opened or archive) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError) as e:
        raise _refuse(archive, None, f"not a zip archive ({e})") from None
    if len(infos) > MAX_MEMBERS:
        raise _refuse(archive, None, f"{len(infos):,} members, more than {MAX_MEMBERS:,}")
    taken = {provenance.FILENAME: "the download's record", **(taken or {})}
    # folded name -> (a directory?, the name as written, whose it is)
    seen = {fold(name): (False, name, whose) for name, whose in taken.items()}
    members, total = [], 0
    for info in infos:
        path = _path(archive, info)
        is_dir = _kind(archive, info)
        if info.flag_bits & 0x1:
            raise _refuse(archive, info, "encrypted")
        if info.compress_type not in _COMPRESSION:
            why = f"compression method {info.compress_type}, which Python's zipfile cannot read"
            raise _refuse(archive, info, why)
        parents = [(True, str(p)) for p in reversed(path.parents) if str(p) != "."]
        for d, name in [*parents, (is_dir, str(path))]:
            if (key := fold(name)) not in seen:
                seen[key] = (d, name, "another member")
                continue
            was_dir, was, whose = seen[key]
            if d and was_dir and was == name:
                continue  # a directory named again: the parent of several members
            if (was_dir, was, whose) == (d, name, "another member"):
                raise _refuse(archive, info, "a duplicate name (the archive holds it twice)")
            if whose == "another member":
                whose += f" ({'directory' if was_dir else 'file'})"
            how = "" if was == name else " by case or Unicode normalisation"
            raise _refuse(archive, info, f"collides{how} with {whose} {was!r}")
        total += info.file_size
        packed = max(info.compress_size, 1)
        if info.file_size > RATIO_FROM and info.file_size > MAX_RATIO * packed:
            why = (
                f"{info.file_size:,} bytes unpacked from {info.compress_size:,} (more than "
                f"{MAX_RATIO}x: a zip bomb?)"
            )
            raise _refuse(archive, info, why)
        members.append(Member(info, path, is_dir))
    if total > MAX_BYTES:
        raise _refuse(archive, None, f"{total:,} bytes unpacked, more than {MAX_BYTES:,}")
    size = os.fstat(opened.fileno()).st_size if opened else archive.stat().st_size
    if total > RATIO_FROM and total > MAX_RATIO * size:
        why = f"{total:,} bytes unpacked from {size:,} (more than {MAX_RATIO}x: a zip bomb?)"
        raise _refuse(archive, None, why)
    return members


def check_before_pin(archive: Path, pin: str, extract: str | None, lock: Path, source: str) -> None:
    """An archive (extract) whose first download is about to be pinned in lock (pin, the
    download's check, "first-download") checked first: never pin what is no archive. One
    refused (a proxy's page, a cut transfer) is removed, so the next download fetches it."""
    if not (extract and pin == "first-download"):
        return
    try:
        check(archive)
    except ArchiveError as e:
        archive.unlink()
        raise ArchiveError(
            f"{e}; not pinned in {lock} and not kept: download again once {source} serves the "
            "archive"
        ) from None


def remove_leftovers(out: Path) -> list[Path]:
    """Remove what an interrupted unpack left in out (temporary directories: no live process
    writes them, the download holds out's lock) and return it."""
    removed = []
    for p in sorted(out.iterdir()) if out.is_dir() else []:
        if _LEFTOVER.fullmatch(p.name):
            if stat.S_ISDIR(os.lstat(p).st_mode):
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(p)
    return removed


def extract(
    archive: Path,
    out: Path,
    taken: dict[str, str] | None = None,
    say: Callable[[str], None] = print,
    sha256: str | None = None,
) -> list[dict[str, Any]]:
    """Unpack archive's members into out at their own paths (checked first); an entry of out
    that the archive also holds is replaced whole. With sha256 (the download's), the archive is
    opened once and its bytes must hash to it: a file replaced since it was verified is refused.
    Returns each file's path (relative to out), bytes and sha256."""
    with open(archive, "rb") as f:  # one open file: a rename over the path does not reach it
        if sha256 is not None and (got := hashlib.file_digest(f, "sha256").hexdigest()) != sha256:
            why = f"its sha256 is {got}, not {sha256} as downloaded: it was replaced since"
            raise _refuse(archive, None, why)
        return _extract(archive, f, out, taken, say)


def _extract(
    archive: Path,
    f: BinaryIO,
    out: Path,
    taken: dict[str, str] | None,
    say: Callable[[str], None],
) -> list[dict[str, Any]]:
    members = check(archive, taken, f)
    need = sum(m.info.file_size for m in members)
    free = shutil.disk_usage(out).free
    if need > free:
        raise _refuse(archive, None, f"{need:,} bytes to unpack, {free:,} free in {out}")
    tmp = out / provenance.temp_name("unpack", archive.name)
    tmp.mkdir()
    try:
        with zipfile.ZipFile(f) as zf:
            files = [_write(archive, zf, m, tmp, out) for m in members if not m.is_dir]
        for m in (m for m in members if m.is_dir):  # an empty directory is a member too
            tmp.joinpath(*m.path.parts).mkdir(parents=True, exist_ok=True)
        _into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    say(f"{archive.name}: unpacked {len(files)} files, {need / 1e6:.1f} MB, into {out}")
    return files


def _write(archive: Path, zf: zipfile.ZipFile, m: Member, tmp: Path, out: Path) -> dict[str, Any]:
    target = tmp.joinpath(*m.path.parts)
    h, n = hashlib.sha256(), 0
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with zf.open(m.info) as src, open(target, "xb") as dst:  # x: never through a link
            while chunk := src.read(CHUNK):
                n += len(chunk)
                if n > m.info.file_size:  # zipfile stops there itself; never more than declared
                    raise _refuse(archive, m.info, f"more bytes than its {m.info.file_size:,}")
                h.update(chunk)
                dst.write(chunk)
            dst.flush()
            os.fsync(dst.fileno())
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as e:
        raise _refuse(archive, m.info, f"cannot be read ({e})") from None
    except OSError as e:  # the disk's: full, read-only, ...
        raise _refuse(archive, m.info, f"cannot be written in {out}: {e.strerror}") from None
    return {"path": str(m.path), "bytes": n, "sha256": h.hexdigest()}


def _into_place(tmp: Path, out: Path) -> None:
    """Rename each top-level entry of tmp into out; one already there is moved aside first and
    removed after, so its path holds the old entry, nothing, or the new one, never a mixture."""
    for entry in sorted(tmp.iterdir()):
        final = out / entry.name
        old = None
        if final.exists() or final.is_symlink():
            old = out / provenance.temp_name("unpacked", entry.name)
            os.rename(final, old)
        os.rename(entry, final)
        if old is not None:
            if stat.S_ISDIR(os.lstat(old).st_mode):
                shutil.rmtree(old)
            else:
                old.unlink()
    tmp.rmdir()
