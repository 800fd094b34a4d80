"""prepare: nanoGPT's Tiny Shakespeare counts, shards, splits, cleaning, threads, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from nanogptx import config, loader, provenance, tokenizer
from nanogptx.datasets import Dataset, RemoteFile
from nanogptx.prepare import PrepareError, main, prepare
from nanogptx.readers import ReadError

ROOT = Path(__file__).resolve().parents[1]


def cfg(*overrides: str) -> config.Config:
    return config.load(None, list(overrides))


def record_download(raw: Path, names: list[str]) -> None:
    """<raw>/provenance.json as the download stage writes it."""
    outputs = [provenance.file_entry(raw / n) | {"check": "pinned"} for n in names]
    provenance.Record.start("download", {}).finish(raw, inputs=[], outputs=outputs)


def local_dataset(raw: Path, files: dict[str, bytes | str], reader: str) -> Dataset:
    raw.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (raw / name).write_bytes(data.encode() if isinstance(data, str) else data)
    record_download(raw, list(files))
    remote = tuple(RemoteFile(n, f"https://example.org/{n}") for n in files)
    return Dataset("local", remote, reader, "test corpus")


def jsonl(docs: list[str]) -> str:
    return "".join(json.dumps({"text": d}) + "\n" for d in docs)


def shard_tokens(out: Path, manifest: dict, split: str) -> np.ndarray:
    parts = []
    for e in manifest["shards"]:
        if e["split"] == split:
            p = out / e["file"]
            if manifest["shard_format"] == "npy":
                parts.append(np.load(p, mmap_mode="r"))
            else:
                parts += [np.asarray(r, np.uint32) for r in pq.read_table(p)["tokens"].to_pylist()]
    return np.concatenate(parts) if parts else np.zeros(0, np.uint32)


def listing(out: Path) -> dict[str, str]:
    return {
        p.name: provenance.sha256_file(p)
        for p in sorted(out.iterdir())
        if p.name != provenance.FILENAME
    }


@pytest.fixture(scope="module")
def shakespeare(assets: Path, tmp_path_factory) -> tuple[Path, str]:
    raw = tmp_path_factory.mktemp("raw") / "tinyshakespeare"
    raw.mkdir()
    text = (assets / "tinyshakespeare" / "input.txt").read_bytes()
    (raw / "input.txt").write_bytes(text)
    record_download(raw, ["input.txt"])
    return raw, text.decode()


# --- Tiny Shakespeare: nanoGPT's numbers


def test_shakespeare_char_as_nanogpt(shakespeare, tmp_path: Path) -> None:
    raw, text = shakespeare
    m = prepare(cfg(), raw, tmp_path / "out", threads=2)
    n = int(len(text) * 0.9)
    assert m["tokenizer"]["vocab_size"] == 65 and m["tokenizer"]["chars"] == "".join(
        sorted(set(text))
    )
    assert {s: m["splits"][s]["tokens"] for s in ("train", "val")} == {
        "train": 1_003_854,
        "val": 111_540,
    }
    assert m["dtype"] == "uint16" and m["shard_format"] == "npy"
    stoi = {c: i for i, c in enumerate(m["tokenizer"]["chars"])}
    train, val = (
        shard_tokens(tmp_path / "out", m, "train"),
        shard_tokens(tmp_path / "out", m, "val"),
    )
    assert train.tolist() == [stoi[c] for c in text[:n]]
    assert tokenizer.from_manifest(m["tokenizer"]).decode(val) == text[n:]
    # the loader (train's side of the contract) reads what prepare wrote
    data = loader.open_prepared(tmp_path / "out")
    assert data.vocab_size == 65 and data.split("val").n_tokens == 111_540


def test_shakespeare_gpt2_as_nanogpt(shakespeare, tmp_path: Path, gpt2_offline) -> None:
    raw, text = shakespeare
    m = prepare(cfg("tokenizer.name=gpt2"), raw, tmp_path / "out", threads=2)
    assert m["splits"]["train"] == {"tokens": 301_967, "documents": 1, "shards": 1}
    assert m["splits"]["val"] == {"tokens": 36_060, "documents": 1, "shards": 1}
    enc = tokenizer.gpt2()
    n = int(len(text) * 0.9)
    for split, part in (("train", text[:n]), ("val", text[n:])):
        assert shard_tokens(tmp_path / "out", m, split).tolist() == [50256] + enc.encode(part)


def test_same_bytes_whatever_threads_and_task_size(
    shakespeare, tmp_path: Path, gpt2_offline
) -> None:
    """1, 2 and 4 threads, and small pieces and tasks (hundreds of them): identical shards."""
    raw, _ = shakespeare
    c = cfg("tokenizer.name=gpt2", "data.shard_tokens=50000")
    outs = []
    for i, (threads, size) in enumerate([(1, 1 << 20), (2, 1 << 20), (4, 2000), (2, 5000)]):
        prepare(c, raw, tmp_path / str(i), threads, chunk_chars=size, piece_chars=size)
        outs.append(listing(tmp_path / str(i)))
    assert len(outs[0]) == 9 and all(o == outs[0] for o in outs)  # 7 + 1 shards + manifest


# --- documents, shards and splits


DOCS = [f"Document {i}: " + "words and more wörds. " * (i % 13) + "\n" for i in range(400)]


def test_first_docs_parquet_rows_are_documents(tmp_path: Path, gpt2_offline) -> None:
    ds = local_dataset(
        tmp_path / "raw", {"a.jsonl": jsonl(DOCS[:250]), "b.jsonl": jsonl(DOCS[250:])}, "jsonl"
    )
    c = cfg(
        "tokenizer.name=gpt2",
        "data.split=first_docs",
        "data.val_docs=30",
        "data.shard_format=parquet",
        "data.shard_tokens=2000",
    )
    outs = {}
    for threads in (1, 3):
        out = tmp_path / f"out{threads}"
        m = prepare(c, tmp_path / "raw", out, threads, dataset=ds, chunk_chars=3000)
        outs[threads] = listing(out)
    assert outs[1] == outs[3]
    enc = tokenizer.gpt2()
    rows = {s: [] for s in ("train", "val")}
    for e in m["shards"]:
        table = pq.read_table(out / e["file"])
        assert table.schema.field("tokens").type.value_type == "uint16"
        shard_rows = table["tokens"].to_pylist()
        assert sum(map(len, shard_rows)) == e["tokens"]
        rows[e["split"]].append(shard_rows)
    for split, docs in (("val", DOCS[:30]), ("train", DOCS[30:])):
        got = [r for shard in rows[split] for r in shard]
        assert got == [[50256] + enc.encode(d) for d in docs]
        assert m["splits"][split]["documents"] == len(docs)
        sizes = [sum(map(len, shard)) for shard in rows[split]]
        # a shard closes at the row that brings it to shard_tokens
        assert all(
            s >= 2000 and s - len(shard[-1]) < 2000
            for s, shard in zip(sizes[:-1], rows[split][:-1], strict=True)
        )
    assert m["sources"] == [
        {"name": n, "sha256": provenance.sha256_file(tmp_path / "raw" / n)}
        for n in ("a.jsonl", "b.jsonl")
    ]


def test_npy_shards_hold_exactly_shard_tokens(tmp_path: Path) -> None:
    ds = local_dataset(tmp_path / "raw", {"a.jsonl": jsonl(DOCS)}, "jsonl")
    m = prepare(
        cfg("data.shard_tokens=1000"),
        tmp_path / "raw",
        tmp_path / "out",
        2,
        dataset=ds,
        chunk_chars=1500,
    )
    text = "".join(DOCS)
    n = int(len(text) * 0.9)
    sizes = [e["tokens"] for e in m["shards"] if e["split"] == "train"]
    assert sizes[:-1] == [1000] * (len(sizes) - 1) and sum(sizes) == n
    assert [e["file"] for e in m["shards"]][:2] == ["train_000000.npy", "train_000001.npy"]
    tok = tokenizer.from_manifest(m["tokenizer"])
    assert tok.decode(shard_tokens(tmp_path / "out", m, "train")) == text[:n]
    assert tok.decode(shard_tokens(tmp_path / "out", m, "val")) == text[n:]
    # fraction over several documents: the straddling document becomes two
    assert m["splits"]["train"]["documents"] + m["splits"]["val"]["documents"] == len(DOCS) + 1


def test_fraction_split_of_documents_with_gpt2(tmp_path: Path, gpt2_offline) -> None:
    ds = local_dataset(tmp_path / "raw", {"a.jsonl": jsonl(DOCS)}, "jsonl")
    m = prepare(cfg("tokenizer.name=gpt2"), tmp_path / "raw", tmp_path / "out", 2, dataset=ds)
    text = "".join(DOCS)
    n = int(len(text) * 0.9)
    starts = np.cumsum([0] + [len(d) for d in DOCS])
    k = int(np.searchsorted(starts, n, side="right")) - 1  # the document cut in two
    enc = tokenizer.gpt2()
    want_train = [t for d in DOCS[:k] + [DOCS[k][: n - starts[k]]] for t in [50256] + enc.encode(d)]
    want_val = [
        t for d in [DOCS[k][n - starts[k] :]] + DOCS[k + 1 :] for t in [50256] + enc.encode(d)
    ]
    assert shard_tokens(tmp_path / "out", m, "train").tolist() == want_train
    assert shard_tokens(tmp_path / "out", m, "val").tolist() == want_val


def test_files_split_and_max_docs(tmp_path: Path) -> None:
    ds = local_dataset(
        tmp_path / "raw",
        {"train.jsonl": jsonl(DOCS[:300]), "val.jsonl": jsonl(DOCS[300:])},
        "jsonl",
    )
    m = prepare(cfg("data.split=files"), tmp_path / "raw", tmp_path / "out", 2, dataset=ds)
    assert [m["splits"][s]["documents"] for s in ("train", "val")] == [300, 100]
    with pytest.raises(PrepareError, match="split 'val' is empty"):
        prepare(
            cfg("data.split=files", "data.max_docs=250"),
            tmp_path / "raw",
            tmp_path / "o2",
            2,
            dataset=ds,
        )
    assert not list((tmp_path / "o2").glob("*.npy"))  # nothing half-made is left
    m = prepare(
        cfg("data.split=first_docs", "data.val_docs=5", "data.max_docs=20"),
        tmp_path / "raw",
        tmp_path / "o3",
        1,
        dataset=ds,
    )
    assert [m["splits"][s]["documents"] for s in ("train", "val")] == [15, 5]


def test_cleaning_functions(tmp_path: Path) -> None:
    docs = ["  Hello\r\nworld \r", "\n\t  \n", "ok", "  a longer document\r\n\n"]
    ds = local_dataset(tmp_path / "raw", {"a.jsonl": jsonl(docs)}, "jsonl")

    def cleaned(*cleaning: str) -> list[str]:
        c = cfg(
            "data.split=first_docs",
            "data.val_docs=1",
            "data.min_chars=3",
            f"data.cleaning={list(cleaning)!r}".replace("'", '"'),
        )
        m = prepare(c, tmp_path / "raw", tmp_path / "out", 1, dataset=ds, chunk_chars=1)
        tok = tokenizer.from_manifest(m["tokenizer"])
        texts = [tok.decode(shard_tokens(tmp_path / "out", m, s)) for s in ("val", "train")]
        return [texts[0], texts[1]] + [m["splits"]["train"]["documents"]]

    assert cleaned() == [docs[0], "".join(docs[1:]), 3]
    assert cleaned("normalize_newlines") == [
        "  Hello\nworld \n",
        "\n\t  \nok  a longer document\n\n",
        3,
    ]
    assert cleaned("normalize_newlines", "strip") == ["Hello\nworld", "oka longer document", 2]
    assert cleaned("strip", "drop_short") == ["Hello\r\nworld", "a longer document", 1]


def test_strip_and_drop_short_on_a_text_read_in_pieces(tmp_path: Path) -> None:
    text = "\n\n  " + "Some words here.\nAnd more there.\n" * 200 + "  \n\n"
    ds = local_dataset(tmp_path / "raw", {"a.txt": text}, "text")
    c = cfg('data.cleaning=["strip", "drop_short"]', "data.min_chars=100")
    m = prepare(
        c, tmp_path / "raw", tmp_path / "out", 2, dataset=ds, piece_chars=300, chunk_chars=500
    )
    tok = tokenizer.from_manifest(m["tokenizer"])
    got = "".join(tok.decode(shard_tokens(tmp_path / "out", m, s)) for s in ("train", "val"))
    assert got == text.strip()


def write_bin(path: Path, tokens: np.ndarray) -> None:
    header = np.zeros(256, np.int32)
    header[:3] = 20240520, 1, len(tokens)
    path.write_bytes(header.tobytes() + tokens.astype("<u2").tobytes())


def test_bin_shards(tmp_path: Path, gpt2_offline) -> None:
    rng = np.random.default_rng(0)
    docs = [
        np.concatenate([[50256], rng.integers(0, 50256, rng.integers(1, 60))]) for _ in range(300)
    ]
    raw = tmp_path / "raw"
    raw.mkdir()
    names = ["fineweb_val_000000.bin", "fineweb_train_000001.bin"]
    write_bin(raw / names[0], np.concatenate(docs[:40]))
    write_bin(raw / names[1], np.concatenate(docs[40:]))
    record_download(raw, names)
    ds = Dataset(
        "fineweb10b-gpt2", tuple(RemoteFile(n, "https://x/" + n) for n in names), "bin", ""
    )
    m = prepare(
        cfg(
            "tokenizer.name=gpt2",
            "data.split=files",
            "data.shard_format=parquet",
            "data.shard_tokens=500",
        ),
        raw,
        tmp_path / "out",
        2,
        dataset=ds,
    )
    assert m["splits"]["val"]["documents"] == 40 and m["splits"]["train"]["documents"] == 260
    rows = [
        r
        for e in m["shards"]
        if e["split"] == "train"
        for r in pq.read_table(tmp_path / "out" / e["file"])["tokens"].to_pylist()
    ]
    assert rows == [d.tolist() for d in docs[40:]]
    m = prepare(
        cfg(
            "tokenizer.name=gpt2", "data.split=first_docs", "data.val_docs=50", "data.max_docs=100"
        ),
        raw,
        tmp_path / "o2",
        1,
        dataset=ds,
    )
    assert shard_tokens(tmp_path / "o2", m, "val").tolist() == np.concatenate(docs[:50]).tolist()
    assert (
        shard_tokens(tmp_path / "o2", m, "train").tolist() == np.concatenate(docs[50:100]).tolist()
    )
    with pytest.raises(PrepareError, match="tokenizer.name must be gpt2"):
        prepare(cfg(), raw, tmp_path / "o3", 1, dataset=ds)
    header = np.zeros(256, np.int32)
    header[:3] = 20240520, 1, 5
    (raw / names[1]).write_bytes(header.tobytes() + b"\0" * 12)  # 6 tokens, not 5
    record_download(raw, names)
    with pytest.raises(ReadError, match=r"fineweb_train_000001.bin: header says 5 tokens"):
        prepare(cfg("tokenizer.name=gpt2", "data.split=files"), raw, tmp_path / "o4", 1, dataset=ds)


# --- refusals


def test_raw_files_are_verified_first(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    ds = local_dataset(raw, {"a.jsonl": jsonl(DOCS)}, "jsonl")
    (raw / "a.jsonl").write_text(jsonl(DOCS[::-1]))  # same size, other bytes
    want = provenance.read(raw)["outputs"][0]["sha256"]
    with pytest.raises(
        provenance.HashMismatch, match=rf"a.jsonl: sha256 is [0-9a-f]{{64}}, expected {want}"
    ):
        prepare(cfg(), raw, tmp_path / "out", 1, dataset=ds)
    assert not (tmp_path / "out" / "manifest.json").exists()
    record_download(raw, [])
    with pytest.raises(
        PrepareError, match=r"a.jsonl: no sha256 recorded for it in .*provenance.json"
    ):
        prepare(cfg(), raw, tmp_path / "out", 1, dataset=ds)
    (raw / "provenance.json").unlink()
    with pytest.raises(PrepareError, match=r"provenance.json is missing: run the download stage"):
        prepare(cfg(), raw, tmp_path / "out", 1, dataset=ds)


def test_empty_corpus(tmp_path: Path) -> None:
    ds = local_dataset(tmp_path / "raw", {"a.jsonl": jsonl(["a", "  ", "bc"])}, "jsonl")
    for tok in ("char", "gpt2"):
        with pytest.raises(PrepareError, match=r"the corpus is empty: no text left in .*a.jsonl"):
            prepare(
                cfg(
                    f"tokenizer.name={tok}",
                    'data.cleaning=["drop_short"]',
                    "data.min_chars=5",
                    "data.split=first_docs",
                    "data.val_docs=1",
                ),
                tmp_path / "raw",
                tmp_path / "out",
                1,
                dataset=ds,
            )


def test_bad_utf8_is_refused_or_replaced(tmp_path: Path) -> None:
    data = b"Good text, then a bad byte: \xff and more text.\n" * 3
    ds = local_dataset(tmp_path / "raw", {"a.txt": data}, "text")
    with pytest.raises(ReadError, match=r"a.txt: byte 28 is not valid UTF-8"):
        prepare(cfg(), tmp_path / "raw", tmp_path / "out", 1, dataset=ds)
    m = prepare(
        cfg("data.decode_errors=replace"), tmp_path / "raw", tmp_path / "out", 1, dataset=ds
    )
    assert "\ufffd" in m["tokenizer"]["chars"]


def test_unwritable_output_directory(shakespeare, tmp_path: Path) -> None:
    # Tests run as root, who may write anywhere: a directory below a regular file cannot exist.
    (tmp_path / "file").write_text("x")
    with pytest.raises(provenance.OutputError, match=r"--out .*file/out cannot be created"):
        prepare(cfg(), shakespeare[0], tmp_path / "file" / "out", 1)
    with pytest.raises(provenance.OutputError, match=r"--out .*/file is a file: expected a dir"):
        prepare(cfg(), shakespeare[0], tmp_path / "file", 1)


def test_failure_midway_leaves_no_shards_and_stale_outputs_go(tmp_path: Path) -> None:
    files = {"a.jsonl": jsonl(DOCS), "b.jsonl": jsonl(DOCS) + "{broken\n"}
    ds = local_dataset(tmp_path / "raw", files, "jsonl")
    out = tmp_path / "out"
    out.mkdir()
    (out / "train_000007.npy").write_bytes(b"stale")
    (out / "notes.txt").write_text("mine")
    c = cfg(
        "tokenizer.name=char", "data.split=first_docs", "data.val_docs=3", "data.shard_tokens=500"
    )
    with pytest.raises(ReadError, match=r"b.jsonl: line 401: not valid JSON"):
        prepare(c, tmp_path / "raw", out, 2, dataset=ds)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


# --- the command


def test_cli(shakespeare, tmp_path: Path, capsys) -> None:
    raw = shakespeare[0]
    main(
        [
            "--raw",
            str(raw),
            "--out",
            str(tmp_path / "out"),
            "--threads",
            "2",
            "data.shard_tokens=500000",
        ]
    )
    record = provenance.read(tmp_path / "out")
    assert record["stage"] == "prepare" and set(record["config"]) == {"data", "tokenizer"}
    assert record["inputs"][0]["sha256"] == provenance.sha256_file(raw / "input.txt")
    assert [Path(o["path"]).name for o in record["outputs"]] == [
        "train_000000.npy",
        "train_000001.npy",
        "train_000002.npy",
        "val_000000.npy",
        "manifest.json",
    ]
    err = capsys.readouterr().err  # one document (one file), nouns that agree with counts
    assert "train: 1,003,854 tokens, 1 document, 3 shards" in err
    assert "val: 111,540 tokens, 1 document, 1 shard\n" in err and "2 threads" in err
    with pytest.raises(SystemExit) as e:
        main(["--raw", str(tmp_path), "--out", str(tmp_path / "o2")])
    assert e.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("python -m nanogptx.prepare: error: ") and "\n" not in err


def test_module_runs_as_a_command(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "nanogptx.prepare",
            "--raw",
            str(tmp_path),
            "--out",
            str(tmp_path / "out"),
            "data.shard_tokens=0",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )
    assert r.returncode == 2 and "data.shard_tokens = 0: expected > 0" in r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "nanogptx.prepare", "--help"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )
    assert r.returncode == 0 and "--threads" in r.stdout and "data.shard_format" in r.stdout


def test_char_vocabulary_holds_no_byte_order_mark_or_lone_surrogate(tmp_path: Path) -> None:
    # U+FEFF of a leading BOM, and "\ud800" from JSON, used to become vocabulary characters
    # (the surrogate later crashed sampling while writing samples.txt).
    ds = local_dataset(tmp_path / "raw", {"a.txt": b"\xef\xbb\xbfTo be, or not to be"}, "text")
    manifest = prepare(cfg("data.val_fraction=0.2"), tmp_path / "raw", tmp_path / "a", dataset=ds)
    assert manifest["tokenizer"]["chars"] == " ,Tbenort"
    docs = jsonl(["fine", "bad \ud800", "more"])
    ds = local_dataset(tmp_path / "raw2", {"a.jsonl": docs}, "jsonl")
    c = cfg("data.split=first_docs", "data.val_docs=1")
    with pytest.raises(ReadError, match=r"a.jsonl: line 2: 'text' holds a lone surrogate"):
        prepare(c, tmp_path / "raw2", tmp_path / "b", dataset=ds)
    assert not list((tmp_path / "b").glob("*.npy"))
    c = cfg("data.split=first_docs", "data.val_docs=1", "data.decode_errors=replace")
    manifest = prepare(c, tmp_path / "raw2", tmp_path / "b", dataset=ds)
    assert (
        "\ud800" not in manifest["tokenizer"]["chars"]
        and "\ufffd" in manifest["tokenizer"]["chars"]
    )
