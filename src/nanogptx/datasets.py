"""The dataset registry: every file of every dataset with its URL, sha256 and size, and its reader.

A sha256 of None means the file cannot be pinned here; the downloader then checks it against the
sha256 the server announces for Git LFS files, or against a pinned git blob id (git_sha1), and
records it in config/download.lock.json.

Besides training text (use "train"), the registry holds pretrained weights (use "init": OpenAI's
GPT-2 checkpoints for model.init_from) and evaluation data (use "eval": HellaSwag), downloaded and
checked by the same download stage.
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
    # A git blob id: sha1 over b"blob <size>\0" + the bytes, a content hash that a repository's
    # tree publishes where no sha256 is published.
    git_sha1: str | None = None


@dataclass(frozen=True)
class Dataset:
    name: str
    files: tuple[RemoteFile, ...]
    reader: str  # text | parquet | jsonl | jsonl.zst | bin (see nanogptx.readers) | none
    about: str
    use: str = "train"  # train (data.dataset) | init (model.init_from) | eval (the eval stage)


_HF = "https://huggingface.co/datasets"
_GPT2_SIZES = {"gpt2": "124M", "gpt2-medium": "350M", "gpt2-large": "774M", "gpt2-xl": "1.5B"}
HELLASWAG_COMMIT = "a29ff8e9a04bba4bd6588223785ce105328adc57"  # rowanz/hellaswag

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
        Dataset(
            name="hellaswag",
            files=(
                RemoteFile(
                    "hellaswag_val.jsonl",
                    "https://raw.githubusercontent.com/rowanz/hellaswag/"
                    f"{HELLASWAG_COMMIT}/data/hellaswag_val.jsonl",
                    git_sha1="0f5ee25d72216f12317d5d8a7b92deafa423d81e",
                ),
            ),
            reader="none",
            about="HellaSwag validation (Zellers et al. 2019): 10,042 items of a context and 4 "
            "endings, one right",
            use="eval",
        ),
        *(
            Dataset(
                name=f"hf-{name}",
                files=(
                    RemoteFile(
                        "model.safetensors",
                        f"https://huggingface.co/openai-community/{name}/resolve/main/"
                        "model.safetensors",
                    ),
                ),
                reader="none",
                about=f"OpenAI's GPT-2 {size} weights (Hugging Face openai-community/{name})",
                use="init",
            )
            for name, size in _GPT2_SIZES.items()
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
