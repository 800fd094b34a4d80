"""The dataset registry: every file of every dataset with its URL, sha256 and size, and its reader.

A sha256 of None means the file cannot be pinned here; the downloader then checks it against the
sha256 the server announces for Git LFS files and records it in config/download.lock.json.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass


@dataclass(frozen=True)
class RemoteFile:
    name: str
    url: str
    sha256: str | None = None
    size: int | None = None


@dataclass(frozen=True)
class Dataset:
    name: str
    files: tuple[RemoteFile, ...]
    reader: str  # text | parquet | jsonl | jsonl.zst | bin (see nanogptx.readers)
    about: str


_HF = "https://huggingface.co/datasets"

REGISTRY: dict[str, Dataset] = {
    d.name: d
    for d in [
        Dataset(
            name="tinyshakespeare",
            files=(
                RemoteFile(
                    "input.txt",
                    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/"
                    "tinyshakespeare/input.txt",
                    "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
                    1_115_394,
                ),
            ),
            reader="text",
            about="Tiny Shakespeare (char-rnn), 1.1 MB of plain text, one document",
        ),
        Dataset(
            name="fineweb-sample-10bt",
            files=tuple(
                RemoteFile(
                    f"{i:03d}_00000.parquet",
                    f"{_HF}/HuggingFaceFW/fineweb/resolve/main/sample/10BT/{i:03d}_00000.parquet",
                )
                for i in range(15)
            ),
            reader="parquet",
            about="FineWeb sample-10BT: 15 parquet files, ~27 GB, 14.87M documents",
        ),
        Dataset(
            name="fineweb10b-gpt2",
            files=tuple(
                RemoteFile(name, f"{_HF}/kjj0/fineweb10B-gpt2/resolve/main/{name}")
                for name in ["fineweb_val_000000.bin"]
                + [f"fineweb_train_{i:06d}.bin" for i in range(1, 104)]
            ),
            reader="bin",
            about="FineWeb 10B, pre-tokenized GPT-2 .bin shards (llm.c format), 100M tokens each",
        ),
    ]
}


class UnknownDataset(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def get(name: str) -> Dataset:
    """The registry entry for name; an unknown name raises with the list of known ones."""
    if name not in REGISTRY:
        close = difflib.get_close_matches(name, list(REGISTRY), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UnknownDataset(
            f"unknown dataset {name!r}{hint}; known datasets: {', '.join(sorted(REGISTRY))}"
        )
    return REGISTRY[name]
