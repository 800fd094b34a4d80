"""The dataset registry: data files, one per dataset, config/datasets/<name>.toml, each naming
every file with its URL, sha256 and size, and the reader with its options. Being data, not code,
editing one dataset's file reruns only the stages of runs that use it.

    about = "Tiny Shakespeare (char-rnn), 1.1 MB of plain text, one document"
    reader = "text"            # text | parquet | jsonl | jsonl.zst | bin | none (not read)
    use = "train"              # train (data.dataset) | init (model.init_from) | eval
    options = {column = "text"}          # parquet: column; jsonl, jsonl.zst: field
    local_dir = "corpus"       # optional: every file of a directory on disk (see below)

    [[files]]
    name = "input.txt"
    url = "https://..."        # https, or file:PATH for a file already on disk
    sha256 = "86c4..."         # optional: else the server's announced one, or git_sha1
    size = 1115394             # optional
    git_sha1 = "0f5e..."       # optional: the file's git blob id in its repository's tree

A file without sha256 is checked against the sha256 the server announces for Git LFS files, or
its pinned git blob id, and its sha256 is recorded in config/download.lock.json. Files on disk
(file: URLs, or local_dir) need no hash: theirs is recorded in the download's provenance.

The registry's directory: $NANOGPTX_DATASETS, else config/datasets under the working directory
(Snakemake's: the clone), else the one beside this package's source (an editable install).
Standard library only: the Snakefile and config.py read it.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class RemoteFile:
    name: str
    url: str
    sha256: str | None = None
    size: int | None = None
    # A git blob id: sha1 over b"blob <size>\0" + the bytes, a content hash that a repository's
    # tree publishes where no sha256 is published.
    git_sha1: str | None = None

    @property
    def local(self) -> bool:
        return urllib.parse.urlsplit(self.url).scheme == "file"


@dataclass(frozen=True)
class Dataset:
    name: str
    files: tuple[RemoteFile, ...]
    reader: str  # text | parquet | jsonl | jsonl.zst | bin (see nanogptx.readers) | none
    about: str
    use: str = "train"  # train (data.dataset) | init (model.init_from) | eval (the eval stage)
    options: tuple[tuple[str, str], ...] = ()  # the reader's keyword arguments


READERS = ("text", "parquet", "jsonl", "jsonl.zst", "bin", "none")
USES = ("train", "init", "eval")
READER_OPTIONS = {"parquet": ("column",), "jsonl": ("field",), "jsonl.zst": ("field",)}
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_HEX = {"sha256": re.compile(r"[0-9a-f]{64}"), "git_sha1": re.compile(r"[0-9a-f]{40}")}


class UnknownDataset(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


class RegistryError(ValueError):
    """A dataset file that does not follow the schema: names the file, the key and what was
    expected."""


def registry_dir() -> Path:
    if env := os.environ.get("NANOGPTX_DATASETS"):
        return Path(env)
    here = Path("config/datasets")
    return here if here.is_dir() else Path(__file__).resolve().parents[2] / "config" / "datasets"


def _need(ok: bool, where: str, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise RegistryError(f"{where}: {key} = {value!r}: expected {expected}")


def parse(path: Path) -> Dataset:
    """The dataset of one registry file, checked against the schema (see the module doc)."""
    where = str(path)
    try:
        tree = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise RegistryError(f"{where}: cannot read it as TOML: {e}") from None
    known = {"about", "reader", "use", "options", "files", "local_dir"}
    for key in tree:
        close = difflib.get_close_matches(key, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        _need(key in known, where, "key", key, f"one of {sorted(known)}{hint}")
    name = path.stem
    _need(bool(NAME.fullmatch(name)), where, "file name", name, "letters, digits, '.', '_', '-'")
    reader, use = tree.get("reader"), tree.get("use", "train")
    _need(reader in READERS, where, "reader", reader, f"one of {list(READERS)}")
    _need(use in USES, where, "use", use, f"one of {list(USES)}")
    about = tree.get("about", "")
    _need(isinstance(about, str), where, "about", about, "a string")
    options = tree.get("options", {})
    _need(isinstance(options, dict), where, "options", options, "a table")
    for key, value in options.items():
        allowed = READER_OPTIONS.get(reader, ())
        _need(key in allowed, where, f"options.{key}", value,
              f"an option of reader {reader!r}: {list(allowed) or 'none'}")  # fmt: skip
        _need(isinstance(value, str), where, f"options.{key}", value, "a string")
    files = []
    for i, entry in enumerate(tree.get("files", [])):
        files.append(_file(entry, f"{where}: files[{i}]"))
    if "local_dir" in tree:
        local = Path(tree["local_dir"])
        _need(local.is_dir(), where, "local_dir", tree["local_dir"], "a directory that exists")
        files += [RemoteFile(p.name, f"file:{urllib.parse.quote(str(p))}")
                  for p in sorted(local.iterdir()) if p.is_file()]  # fmt: skip
    _need(bool(files), where, "files", tree.get("files"), "at least one file (or local_dir)")
    names = [f.name for f in files]
    dup = sorted({n for n in names if names.count(n) > 1})
    _need(not dup, where, "files", dup, "each file name once")
    return Dataset(name, tuple(files), reader, about, use, tuple(sorted(options.items())))


def _file(entry: Any, where: str) -> RemoteFile:
    _need(isinstance(entry, dict), where, "entry", entry, "a table with name and url")
    known = {"name", "url", "sha256", "size", "git_sha1"}
    for key in entry:
        _need(key in known, where, "key", key, f"one of {sorted(known)}")
    url = entry.get("url")
    _need(isinstance(url, str) and bool(url), where, "url", url, "an https:// or file: URL")
    scheme = urllib.parse.urlsplit(url).scheme
    _need(scheme in ("https", "file"), where, "url", url, "an https:// URL or file:PATH")
    name = entry.get("name") or Path(urllib.parse.urlsplit(url).path).name
    ok = isinstance(name, str) and bool(NAME.fullmatch(name))
    _need(ok, where, "name", name, "a file name: letters, digits, '.', '_', '-'")
    for key in ("sha256", "git_sha1"):
        value = entry.get(key)
        ok = value is None or (isinstance(value, str) and bool(_HEX[key].fullmatch(value)))
        _need(ok, where, key, value, f"{_HEX[key].pattern} (lower-case hex)")
    size = entry.get("size")
    ok = size is None or (isinstance(size, int) and not isinstance(size, bool) and size >= 0)
    _need(ok, where, "size", size, "a number of bytes")
    return RemoteFile(name, url, entry.get("sha256"), size, entry.get("git_sha1"))


def load(directory: Path | None = None) -> dict[str, Dataset]:
    """Every dataset of the registry directory, by name (its file's stem)."""
    directory = registry_dir() if directory is None else directory
    if not directory.is_dir():
        return {}
    return {p.stem: parse(p) for p in sorted(directory.glob("*.toml"))}


def entry_file(name: str) -> Path:
    return registry_dir() / f"{name}.toml"


# Filled from registry_dir() on the first get() (entries put in before, as tests do, stay).
REGISTRY: dict[str, Dataset] = {}
_loaded: list[Path] = []


def get(name: str) -> Dataset:
    """The registry entry for name; an unknown name raises with the list of known ones, a
    malformed registry file RegistryError naming it."""
    if not _loaded:
        for key, ds in load().items():
            REGISTRY.setdefault(key, ds)
        _loaded.append(registry_dir())
    if name not in REGISTRY:
        close = difflib.get_close_matches(name, list(REGISTRY), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UnknownDataset(
            f"unknown dataset {name!r}{hint}; known datasets: {', '.join(sorted(REGISTRY))} "
            f"(files in {registry_dir()})"
        )
    return REGISTRY[name]
