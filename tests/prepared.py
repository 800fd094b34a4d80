"""Test helper: a prepared data directory (npy or parquet shards, manifest.json, provenance.json)
written the way the prepare stage writes it, from text or from token ids, without running
prepare."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from nanogptx import provenance
from nanogptx.shards import FORMAT


def synthetic_text(n_chars: int = 40_000, seed: int = 0) -> str:
    """Learnable text: words from a small vocabulary in a random order."""
    rng = np.random.default_rng(seed)
    words = ["the", "king", "queen", "shall", "not", "be", "to", "my", "lord", "and", "thee"]
    out, n = [], 0
    while n < n_chars:
        w = words[rng.integers(len(words))] + (" " if rng.random() < 0.9 else ".\n")
        out.append(w)
        n += len(w)
    return "".join(out)[:n_chars]


def write_prepared(
    out: Path,
    text: str,
    shard_tokens: int = 10_000,
    val_fraction: float = 0.1,
    shard_format: str = "npy",
) -> Path:
    """Char-level tokens of text, split as nanoGPT (last val_fraction is val), in shards."""
    chars = "".join(sorted(set(text)))
    ids = np.array([chars.index(c) for c in text], np.uint16)
    n_train = int(len(ids) * (1 - val_fraction))
    out.mkdir(parents=True, exist_ok=True)
    shards, splits = [], {}
    for split, tokens in (("train", ids[:n_train]), ("val", ids[n_train:])):
        n_shards = 0
        for i, lo in enumerate(range(0, len(tokens), shard_tokens)):
            piece = tokens[lo : lo + shard_tokens]
            name = f"{split}_{i:06d}.{shard_format}"
            if shard_format == "npy":
                np.save(out / name, piece)
            else:
                import pyarrow as pa
                import pyarrow.parquet as pq

                half = len(piece) // 2  # two "documents" per shard
                column = pa.array([piece[:half], piece[half:]], pa.list_(pa.uint16()))
                pq.write_table(pa.table({"tokens": column}), out / name, compression="zstd")
            sha = hashlib.sha256((out / name).read_bytes()).hexdigest()
            shards.append({"file": name, "split": split, "tokens": len(piece), "sha256": sha})
            n_shards += 1
        splits[split] = {"tokens": len(tokens), "documents": 1, "shards": n_shards}
    manifest = {
        "format": FORMAT,
        "dataset": "test",
        "data_config": {},
        "tokenizer": {
            "name": "char",
            "vocab_size": len(chars),
            "vocab_sha256": hashlib.sha256(chars.encode()).hexdigest(),
            "eot_token": None,
            "chars": chars,
        },
        "sources": [{"name": "input.txt", "sha256": hashlib.sha256(text.encode()).hexdigest()}],
        "shard_format": shard_format,
        "dtype": "uint16",
        "splits": splits,
        "shards": shards,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    outputs = [provenance.file_entry(out / s["file"], s["sha256"]) for s in shards]
    outputs.append(provenance.file_entry(out / "manifest.json"))
    provenance.Record.start("prepare", {}).finish(out, inputs=[], outputs=outputs)
    return out
