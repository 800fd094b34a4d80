"""Streaming readers for prepare: plain text, parquet `text` column, jsonl(.zst), llm.c .bin shards.

Text readers yield `Batch`es of documents, .bin shards yield token arrays; memory stays flat
whatever the corpus size. Used by `python -m nanogptx.prepare`. Bad input raises ReadError
naming the file and the position (byte offset, line or row).
"""

from __future__ import annotations

import codecs
import itertools
import json
import re
import string
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from nanogptx.errors import UserError

if TYPE_CHECKING:
    import pyarrow as pa

BLOCK_BYTES = 4 << 20  # bytes read from disk at a time
PIECE_CHARS = 1 << 20  # a plain-text document longer than this is yielded in pieces
PARQUET_ROWS = 1024  # rows per parquet read (a record batch)
ZSTD_READ = 256 << 10  # compressed bytes fed to the decompressor at a time
BIN_MAGIC, BIN_VERSION, BIN_HEADER_INTS = 20240520, 1, 256  # llm.c / modded-nanogpt shards
BIN_CHUNK_TOKENS = 1 << 24
BOM = "\ufeff"  # a byte-order mark at the start of a text or jsonl file is not text
_SURROGATE = re.compile("[\ud800-\udfff]")  # JSON's "\\ud800" escapes: not characters


class ReadError(UserError, ValueError):
    """Input that cannot be read: the message names the file and the position."""


@dataclass
class Batch:
    """Consecutive documents of one file. A plain-text document longer than PIECE_CHARS arrives in
    pieces: `joins_prev` says texts[0] goes on from the previous batch's last text, `joins_next`
    that texts[-1] goes on in the next batch."""

    texts: list[str]
    joins_prev: bool = False
    joins_next: bool = False


def _decode(data: bytes, errors: str, path: Path, offset: int, where: str = "byte") -> str:
    try:
        return data.decode("utf-8", errors)
    except UnicodeDecodeError as e:
        raise ReadError(
            f"{path}: {where} {offset + e.start} is not valid UTF-8 ({e.reason}); set "
            "data.decode_errors = replace to read such bytes as U+FFFD"
        ) from None


# Where a long text may be cut so that both parts tokenize exactly as the whole (GPT-2's regex
# pieces never span it): at a single "\n" or " " between two characters that are letters, digits
# or ASCII punctuation, i.e. surely not whitespace for Python or for tiktoken's regex. The "\n"
# ends the first part; the " " starts the second (it belongs to the next word's piece).
# (re's \w is str.isalnum() or "_".)
_SOLID = r"[\w" + re.escape(string.punctuation) + "]"
_CUTS = [  # the separator first: re then scans for it as a literal, several times faster
    (re.compile(f"\n(?<={_SOLID}\n)(?={_SOLID})"), 1),
    (re.compile(f" (?<={_SOLID} )(?={_SOLID})"), 0),
]


def _safe_cut(text: str, near: int) -> int | None:
    """A cut position close to `near`: the last in [near // 2, near), else the first in
    [near, 2 * near), a newline before a space; None if there is none. The bounded windows keep
    the time linear in the text's length whatever it holds."""
    for pattern, shift in _CUTS:
        last = None
        for last in pattern.finditer(text, near // 2, near + 1):  # noqa: B007 (the last match)
            pass
        if last is None:
            last = pattern.search(text, near, 2 * near + 1)
        if last is not None:
            return last.start() + shift
    return None


def read_text(
    path: Path, errors: str = "strict", piece_chars: int = PIECE_CHARS
) -> Iterator[Batch]:
    """The whole file is one document (a leading byte-order mark dropped, as utf-8-sig does),
    yielded in pieces of about piece_chars characters cut where tokenization is unaffected (see
    _safe_cut), so a huge file needs little memory. Text with no such place within 2 *
    piece_chars (no single space or newline between non-space characters: not prose) is cut at
    piece_chars, which may change the GPT-2 tokens there; prepare's log counts these cuts."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors)
    pending, offset, first, forced, bom = "", 0, True, 0, True
    with open(path, "rb") as f:
        while True:
            block = f.read(BLOCK_BYTES)
            held = len(decoder.getstate()[0])  # bytes of a character split by the last block
            try:
                pending += decoder.decode(block, final=not block)
            except UnicodeDecodeError as e:
                raise ReadError(
                    f"{path}: byte {offset - held + e.start} is not valid UTF-8 ({e.reason}); set "
                    "data.decode_errors = replace to read such bytes as U+FFFD"
                ) from None
            offset += len(block)
            if bom and pending:
                pending, bom = pending.removeprefix(BOM), False
            while len(pending) >= 2 * piece_chars or (not block and len(pending) > piece_chars):
                cut = _safe_cut(pending, piece_chars)
                if cut is None and len(pending) < 2 * piece_chars:
                    break  # the rest of the file: one piece
                if cut is None:
                    cut, forced = piece_chars, forced + 1
                yield Batch([pending[:cut]], joins_prev=not first, joins_next=True)
                pending, first = pending[cut:], False
            if not block:
                break
    if pending or first:
        yield Batch([pending] if pending else [], joins_prev=not first and bool(pending))
    if forced:
        print(
            f"prepare: {path}: cut {'once' if forced == 1 else f'{forced:,} times'} where no "
            "space or newline lay between "
            f"non-space characters within {2 * piece_chars:,} characters; GPT-2 tokens at those "
            "cuts may differ from tokenizing the whole",
            file=sys.stderr,
        )


def read_parquet(path: Path, errors: str = "strict", column: str = "text") -> Iterator[Batch]:
    """The `text` column, a few thousand rows at a time (pyarrow, one thread)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:  # read page by page: memory does not grow with the size of the file's row groups
        pf = pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20)
    except (pa.ArrowException, OSError) as e:
        raise ReadError(f"{path}: not a readable parquet file: {e}") from None
    names = pf.schema_arrow.names
    if column not in names:
        raise ReadError(f"{path}: no column {column!r} (columns: {', '.join(names)})")
    row = 0
    batches = pf.iter_batches(batch_size=PARQUET_ROWS, columns=[column], use_threads=False)
    while True:
        try:
            rb = next(batches, None)
        except (pa.ArrowException, OSError) as e:
            raise ReadError(f"{path}: corrupt parquet data after row {row}: {e}") from None
        if rb is None:
            return
        col = rb.column(0)
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            try:
                texts = col.to_pylist()
            except UnicodeDecodeError:
                texts = _decode_rows(col.cast(pa.binary(), safe=False), errors, path, row)
        elif pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type):
            texts = _decode_rows(col, errors, path, row)
        else:
            raise ReadError(f"{path}: column {column!r} has type {col.type}, expected string")
        if col.null_count:
            texts = [t for t in texts if t is not None]
        yield Batch(texts)
        row += len(rb)


def _decode_rows(col: pa.Array, errors: str, path: Path, row: int) -> list[str | None]:
    out: list[str | None] = []
    for i, b in enumerate(col.to_pylist()):
        out.append(None if b is None else _decode(b, errors, path, 0, f"row {row + i}: byte"))
    return out


def _lines(
    chunks: Iterator[bytes], path: Path, errors: str, where: str, field: str = "text"
) -> Iterator[Batch]:
    """jsonl from byte blocks: each non-blank line is a JSON object with a `field` string (a
    leading byte-order mark dropped). A lone surrogate escape ("\\ud800", valid JSON but no
    character) is an error naming the line, or U+FFFD under data.decode_errors = replace."""
    carry, offset, line_no = b"", 0, 0
    for block in itertools.chain((c for c in chunks if c), [b""]):
        data = carry + block
        if offset == 0 and data.startswith(BOM.encode()):
            data, offset = data[3:], 3
        end = data.rfind(b"\n") + 1 if block else len(data)
        if end == 0:
            carry = data
            continue
        decoded = _decode(data[:end], errors, path, offset, where)
        lines = decoded.split("\n")
        carry, offset = data[end:], offset + end
        try:
            texts = [json.loads(line)[field] for line in lines if line and not line.isspace()]
            if not all(type(t) is str for t in texts):
                raise TypeError
        except (ValueError, KeyError, TypeError, IndexError):
            _raise_bad_line(lines, path, line_no, field)
        if "\\u" in decoded and any(map(_SURROGATE.search, texts)):
            texts = _surrogates(texts, lines, errors, path, line_no, field)
        line_no += len(lines) - (1 if lines[-1] == "" else 0)
        yield Batch(texts)


def _surrogates(
    texts: list[str], lines: list[str], errors: str, path: Path, line_no: int, field: str
) -> list[str]:
    if errors == "replace":
        return [_SURROGATE.sub("\ufffd", t) for t in texts]
    for i, line in enumerate(lines):
        if line and not line.isspace() and (m := _SURROGATE.search(json.loads(line)[field])):
            raise ReadError(
                f"{path}: line {line_no + i + 1}: {field!r} holds a lone surrogate {m[0]!a}, which "
                "is not a character; set data.decode_errors = replace to read it as U+FFFD"
            )
    raise AssertionError("unreachable: a surrogate was found, then not")


def _raise_bad_line(lines: list[str], path: Path, line_no: int, field: str) -> None:
    for i, line in enumerate(lines):
        if not line or line.isspace():
            continue
        where = f"{path}: line {line_no + i + 1}"
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise ReadError(f"{where}: not valid JSON ({e})") from None
        if not isinstance(obj, dict) or field not in obj:
            raise ReadError(f"{where}: expected a JSON object with a {field!r} field")
        if not isinstance(obj[field], str):
            raise ReadError(f"{where}: {field!r} is {type(obj[field]).__name__}, expected a string")
    raise AssertionError("unreachable: a line failed to parse, then parsed")


def _file_blocks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while block := f.read(BLOCK_BYTES):
            yield block


def _zstd_blocks(path: Path) -> Iterator[bytes]:
    """Decompressed bytes of all frames; a truncated or corrupt stream raises ReadError."""
    import zstandard

    with open(path, "rb") as f:
        dobj, fed, pos = zstandard.ZstdDecompressor().decompressobj(), False, 0
        while data := f.read(ZSTD_READ):
            while data:
                try:
                    out = dobj.decompress(data)
                except zstandard.ZstdError as e:
                    raise ReadError(
                        f"{path}: invalid zstd data in compressed bytes {pos}..{pos + len(data)}: "
                        f"{e}"
                    ) from None
                yield out
                fed = True
                if dobj.eof:  # a frame ended; another may follow (zstd allows concatenation)
                    data = dobj.unused_data
                    dobj, fed = zstandard.ZstdDecompressor().decompressobj(), False
                else:
                    data = b""
            pos = f.tell()
        if fed:
            raise ReadError(f"{path}: zstd stream is truncated (the last frame does not end)")


def read_jsonl(path: Path, errors: str = "strict", field: str = "text") -> Iterator[Batch]:
    return _lines(_file_blocks(path), path, errors, "byte", field)


def read_jsonl_zst(path: Path, errors: str = "strict", field: str = "text") -> Iterator[Batch]:
    return _lines(_zstd_blocks(path), path, errors, "decompressed byte", field)


TEXT_READERS: dict[str, Callable[[Path, str], Iterator[Batch]]] = {
    "text": read_text,
    "parquet": read_parquet,
    "jsonl": read_jsonl,
    "jsonl.zst": read_jsonl_zst,
}


def bin_tokens(path: Path) -> int:
    """Token count of an llm.c .bin shard after checking its header against the file size."""
    size = path.stat().st_size
    header_bytes = BIN_HEADER_INTS * 4
    if size < header_bytes:
        raise ReadError(f"{path}: {size} bytes, shorter than the {header_bytes}-byte header")
    header = np.fromfile(path, dtype="<i4", count=BIN_HEADER_INTS)
    magic, version, n = (int(x) for x in header[:3])
    if magic != BIN_MAGIC:
        raise ReadError(f"{path}: header magic is {magic}, expected {BIN_MAGIC}")
    if version != BIN_VERSION:
        raise ReadError(f"{path}: header version is {version}, expected {BIN_VERSION}")
    if n < 0 or size != header_bytes + 2 * n:
        raise ReadError(
            f"{path}: header says {n} tokens, i.e. {header_bytes + 2 * n} bytes, "
            f"but the file has {size} bytes"
        )
    return n


def read_bin(path: Path, chunk_tokens: int = BIN_CHUNK_TOKENS) -> Iterator[np.ndarray]:
    """The uint16 tokens of an llm.c .bin shard, chunk_tokens at a time."""
    n = bin_tokens(path)
    with open(path, "rb") as f:
        f.seek(BIN_HEADER_INTS * 4)
        for start in range(0, n, chunk_tokens):
            tokens = np.fromfile(f, dtype="<u2", count=min(chunk_tokens, n - start))
            if len(tokens) != min(chunk_tokens, n - start):
                raise ReadError(f"{path}: ends at token {start + len(tokens)} of {n}")
            yield tokens
