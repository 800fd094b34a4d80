"""Streaming readers: every format, pieces of a long text, and bad input named by file and place."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from nanogptx import readers
from nanogptx.readers import Batch, ReadError


def texts_of(batches: list[Batch]) -> list[str]:
    return [t for b in batches for t in b.texts]


# --- plain text


def test_text_is_one_document(tmp_path: Path) -> None:
    p = tmp_path / "a.txt"
    p.write_text("First Citizen:\nBefore we proceed.\n")
    (b,) = readers.read_text(p)
    assert b.texts == ["First Citizen:\nBefore we proceed.\n"]
    assert not b.joins_prev and not b.joins_next


def test_long_text_comes_in_pieces_cut_between_words(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(readers, "BLOCK_BYTES", 1000)  # many reads, characters split by blocks
    words = ["Romeo", "Juliet", "é", "😀", "—", "42", "x"]
    rng = np.random.default_rng(0)
    text = "".join(w + rng.choice([" ", "\n", "\n\n", "  ", "\t"]) for w in rng.choice(words, 5000))
    p = tmp_path / "a.txt"
    p.write_text(text)
    bs = list(readers.read_text(p, piece_chars=500))
    assert len(bs) > 10 and all(len(b.texts) == 1 for b in bs)
    assert "".join(texts_of(bs)) == text
    assert [b.joins_prev for b in bs] == [False] + [True] * (len(bs) - 1)
    assert [b.joins_next for b in bs] == [True] * (len(bs) - 1) + [False]
    for left, right in zip(bs, bs[1:], strict=False):  # a single space or newline between solids
        a, b = left.texts[0], right.texts[0]
        if a.endswith("\n"):
            assert not a[-2].isspace() and not b[0].isspace()
        else:
            assert b[0] == " " and not a[-1].isspace() and not b[1].isspace()


def test_text_with_no_place_to_cut_is_cut_anyway_and_says_so(tmp_path: Path, capsys) -> None:
    # Without a bound, such a text was read whole and searched again on every block: quadratic
    # time and memory growing with the line (benchmarks/bench_readers.py measures both).
    p = tmp_path / "a.txt"
    p.write_text("ab\n\n" * 300)
    bs = list(readers.read_text(p, piece_chars=100))
    assert "".join(texts_of(bs)) == "ab\n\n" * 300
    assert max(len(b.texts[0]) for b in bs) <= 200 and len(bs) >= 6
    assert "cut 11 times where no space or newline lay between" in capsys.readouterr().err


def test_leading_byte_order_mark_is_not_text(tmp_path: Path) -> None:
    p = tmp_path / "a.txt"
    p.write_bytes(b"\xef\xbb\xbfHello \xef\xbb\xbf world")  # only the leading one goes
    assert texts_of(list(readers.read_text(p))) == ["Hello \ufeff world"]
    j = tmp_path / "a.jsonl"
    j.write_bytes(b'\xef\xbb\xbf{"text": "one"}\n{"text": "two"}\n')
    assert texts_of(list(readers.read_jsonl(j))) == ["one", "two"]


def test_lone_surrogate_in_json_is_refused_naming_the_line_or_replaced(tmp_path: Path) -> None:
    p = tmp_path / "a.jsonl"
    p.write_text('{"text": "fine \\ud83d\\ude00"}\n{"text": "bad \\ud800 here"}\n')
    with pytest.raises(readers.ReadError, match=r"a.jsonl: line 2: .*lone surrogate '\\ud800'"):
        list(readers.read_jsonl(p))
    assert texts_of(list(readers.read_jsonl(p, "replace"))) == ["fine 😀", "bad \ufffd here"]


def test_empty_text_file_yields_nothing(tmp_path: Path) -> None:
    p = tmp_path / "a.txt"
    p.write_bytes(b"")
    assert texts_of(list(readers.read_text(p))) == []


@pytest.mark.parametrize("block", [3, 1 << 20])
def test_text_bad_utf8_names_file_and_byte_offset(tmp_path: Path, monkeypatch, block: int) -> None:
    monkeypatch.setattr(readers, "BLOCK_BYTES", block)  # the bad byte in a later block, or not
    p = tmp_path / "a.txt"
    data = "héllo wörld ".encode() + b"\xff" + b" more"
    p.write_bytes(data)
    bad = data.index(b"\xff")
    with pytest.raises(ReadError, match=rf"{re.escape(str(p))}: byte {bad} is not valid UTF-8"):
        list(readers.read_text(p))
    assert texts_of(list(readers.read_text(p, "replace"))) == ["héllo wörld \ufffd more"]


# --- parquet


def write_parquet(path: Path, texts: list, row_group_size: int = 3, **columns) -> None:
    pq.write_table(pa.table({"text": texts, **columns}), path, row_group_size=row_group_size)


def test_parquet_text_column_in_batches(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(readers, "PARQUET_ROWS", 4)
    p = tmp_path / "a.parquet"
    docs = [f"document {i}\n" for i in range(10)]
    write_parquet(p, [*docs, None], id=list(range(11)))  # a null row is skipped
    bs = list(readers.read_parquet(p))
    assert texts_of(bs) == docs and len(bs) == 3


def test_parquet_without_text_column(tmp_path: Path) -> None:
    p = tmp_path / "a.parquet"
    pq.write_table(pa.table({"content": ["x"]}), p)
    with pytest.raises(ReadError, match=r"a.parquet: no column 'text' \(columns: content\)"):
        list(readers.read_parquet(p))


def test_corrupt_parquet_is_named(tmp_path: Path) -> None:
    p = tmp_path / "a.parquet"
    p.write_bytes(b"PAR1" + b"\0" * 100)
    with pytest.raises(ReadError, match=r"a.parquet: not a readable parquet file"):
        list(readers.read_parquet(p))
    good = tmp_path / "good.parquet"
    write_parquet(good, [f"row {i} " * 50 for i in range(100)], row_group_size=50)
    data = bytearray(good.read_bytes())
    data[8:400] = b"\xff" * 392  # the first column chunk's pages
    p.write_bytes(bytes(data))
    with pytest.raises(ReadError, match=r"a.parquet: corrupt parquet data after row 0"):
        list(readers.read_parquet(p))


def test_parquet_bad_utf8_names_row_and_byte(tmp_path: Path) -> None:
    p = tmp_path / "a.parquet"
    texts = pa.array([b"fine", b"bro\xffken"], pa.binary()).view(pa.string())
    pq.write_table(pa.table({"text": texts}), p)
    with pytest.raises(ReadError, match=r"a.parquet: row 1: byte 3 is not valid UTF-8"):
        list(readers.read_parquet(p))
    assert texts_of(list(readers.read_parquet(p, "replace"))) == ["fine", "bro\ufffdken"]


# --- jsonl and jsonl.zst


def jsonl(docs: list[str]) -> bytes:
    return "".join(json.dumps({"id": i, "text": d}) + "\n" for i, d in enumerate(docs)).encode()


DOCS = [f"doc {i}: " + "wörds and 😀 " * (i % 7) for i in range(200)]


def test_jsonl_across_blocks(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(readers, "BLOCK_BYTES", 100)  # lines longer than a block too
    p = tmp_path / "a.jsonl"
    p.write_bytes(jsonl(DOCS[:100]) + b"\n  \n" + jsonl(DOCS[100:]).rstrip(b"\n"))
    assert texts_of(list(readers.read_jsonl(p))) == DOCS


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b'{"text": "unterminated', r"line 3: not valid JSON"),
        (b'{"body": "x"}', r"line 3: expected a JSON object with a 'text' field"),
        (b'["text"]', r"line 3: expected a JSON object with a 'text' field"),
        (b'{"text": 7}', r"line 3: 'text' is int, expected a string"),
    ],
)
def test_jsonl_bad_line_is_named(tmp_path: Path, line: bytes, message: str) -> None:
    p = tmp_path / "a.jsonl"
    p.write_bytes(jsonl(["a", "b"]) + line + b"\n" + jsonl(["c"]))
    with pytest.raises(ReadError, match=rf"a.jsonl: {message}"):
        list(readers.read_jsonl(p))


def test_jsonl_bad_utf8(tmp_path: Path) -> None:
    p = tmp_path / "a.jsonl"
    data = jsonl(["fine"]) + b'{"text": "bro\xe9ken"}\n'
    p.write_bytes(data)
    bad = data.index(b"\xe9")
    with pytest.raises(ReadError, match=rf"a.jsonl: byte {bad} is not valid UTF-8"):
        list(readers.read_jsonl(p))
    assert texts_of(list(readers.read_jsonl(p, "replace"))) == ["fine", "bro\ufffdken"]


def test_jsonl_zst_streams_several_frames(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(readers, "ZSTD_READ", 64)
    p = tmp_path / "a.jsonl.zst"
    c = zstandard.ZstdCompressor()
    p.write_bytes(c.compress(jsonl(DOCS[:50])) + c.compress(jsonl(DOCS[50:])))
    assert texts_of(list(readers.read_jsonl_zst(p))) == DOCS


def test_invalid_or_truncated_zstd_is_named(tmp_path: Path) -> None:
    p = tmp_path / "a.jsonl.zst"
    p.write_bytes(b"this is not zstd at all" * 10)
    with pytest.raises(ReadError, match=r"a.jsonl.zst: invalid zstd data in compressed bytes 0\."):
        list(readers.read_jsonl_zst(p))
    whole = zstandard.ZstdCompressor().compress(jsonl(DOCS))
    p.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ReadError, match=r"a.jsonl.zst: zstd stream is truncated"):
        list(readers.read_jsonl_zst(p))


def test_jsonl_zst_bad_utf8_names_decompressed_offset(tmp_path: Path) -> None:
    p = tmp_path / "a.jsonl.zst"
    data = jsonl(["ok"]) + b'{"text": "\xc3("}\n'
    p.write_bytes(zstandard.ZstdCompressor().compress(data))
    bad = data.index(b"\xc3")
    where = rf"decompressed byte {bad} is not valid UTF-8"
    with pytest.raises(ReadError, match=rf"a.jsonl.zst: {where}"):
        list(readers.read_jsonl_zst(p))


# --- llm.c .bin shards


def write_bin(
    path: Path,
    tokens: np.ndarray,
    magic: int = 20240520,
    version: int = 1,
    count: int | None = None,
) -> None:
    header = np.zeros(256, np.int32)
    header[:3] = magic, version, len(tokens) if count is None else count
    path.write_bytes(header.tobytes() + tokens.astype("<u2").tobytes())


def test_bin_tokens_in_chunks(tmp_path: Path) -> None:
    p = tmp_path / "fineweb_train_000001.bin"
    tokens = np.arange(1000, dtype=np.uint16) * 50
    write_bin(p, tokens)
    assert readers.bin_tokens(p) == 1000
    chunks = list(readers.read_bin(p, chunk_tokens=300))
    assert [len(c) for c in chunks] == [300, 300, 300, 100]
    assert np.array_equal(np.concatenate(chunks), tokens)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"magic": 20240521}, r"header magic is 20240521, expected 20240520"),
        ({"version": 2}, r"header version is 2, expected 1"),
        ({"count": 11}, r"header says 11 tokens, i.e. 1046 bytes, but the file has 1044 bytes"),
    ],
)
def test_bin_wrong_header(tmp_path: Path, kwargs: dict, message: str) -> None:
    p = tmp_path / "fineweb_val_000000.bin"
    write_bin(p, np.ones(10, np.uint16), **kwargs)
    with pytest.raises(ReadError, match=rf"fineweb_val_000000.bin: {message}"):
        list(readers.read_bin(p))


def test_bin_shorter_than_header(tmp_path: Path) -> None:
    p = tmp_path / "x.bin"
    p.write_bytes(b"\0" * 100)
    with pytest.raises(ReadError, match=r"x.bin: 100 bytes, shorter than the 1024-byte header"):
        readers.bin_tokens(p)


def test_the_jsonl_field_is_a_reader_option(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text('{"content": "one"}\n{"content": "two"}\n')
    assert [t for b in readers.read_jsonl(path, field="content") for t in b.texts] == ["one", "two"]
    with pytest.raises(readers.ReadError, match="line 1: expected a JSON object with a 'text'"):
        list(readers.read_jsonl(path))
