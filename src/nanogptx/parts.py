"""A download in the making: its part file (resumed, never at the final path) and, beside it,
the record of which source, size and version its bytes came from, which decides whether a
rerun may continue it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nanogptx import provenance
from nanogptx.transport import Stream


def part_path(out: Path, name: str) -> Path:
    """The file in the making: .nanogptx-part.NAME (provenance.MARKER; resumed, not removed)."""
    return out / f"{provenance.MARKER}part.{name}"


def origin_path(part: Path) -> Path:
    """Beside a part: which source, of which size and version, its bytes came from (JSON)."""
    return part.with_name(part.name.replace("-part.", "-source.", 1))


def discard(part: Path) -> None:
    part.unlink(missing_ok=True)
    origin_path(part).unlink(missing_ok=True)


def origin(source: str, stream: Stream) -> dict[str, Any]:
    return {
        "source": source,
        "bytes": stream.total,
        "mtime_ns": stream.mtime_ns,
        "etag": stream.etag,
        "last_modified": stream.last_modified,
    }


def read_origin(part: Path) -> dict[str, Any] | None:
    try:
        origin = json.loads(origin_path(part).read_text())
    except (OSError, ValueError):
        return None  # missing or damaged: where the part's bytes came from is unknown
    return origin if isinstance(origin, dict) else None


def same_origin(origin: dict[str, Any] | None, now: dict[str, Any]) -> bool | None:
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
