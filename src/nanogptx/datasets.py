"""The dataset registry: one TOML file per dataset, config/datasets/<name>.toml, naming each
file (URL, sha256, size) and the reader with its options. Being data, not code, editing one
dataset's file reruns only the stages of runs that use it; docs/datasets.md walks through one.
The schema is below, checked in `parse`. Standard library only: Snakefile reads it.
"""

from __future__ import annotations

import os
import re
import tomllib
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nanogptx.errors import UserError, suggest

# A dataset file:
#     about = "Tiny Shakespeare (char-rnn), 1.1 MB of plain text, one document"
#     reader = "text"            # text | parquet | jsonl | jsonl.zst | bin | none (not read)
#     use = "train"              # train (data.dataset) | init (model.init_from) | eval
#     options = {column = "text"}          # parquet: column; jsonl, jsonl.zst: field
#     local_dir = "corpus"       # optional: every file of a directory on disk (_local_files)
#
#     [[files]]
#     name = "input.txt"
#     url = "https://..."        # https, or file:PATH for a file already on disk
#     sha256 = "86c4..."         # optional: else the server's announced one, or git_sha1
#     size = 1115394             # optional
#     git_sha1 = "0f5e..."       # optional: the file's git blob id in its repository's tree
#     pin = "first-download"     # optional, where nobody publishes a hash: see below
#     extract = "zip"            # optional: unpack it beside itself (nanogptx.archives)
# A file without sha256 is checked against the sha256 the server announces for Git LFS files, or
# its pinned git blob id, and its sha256 is recorded in config/download.lock.json. A file that
# nobody publishes a hash for is refused, unless its entry says pin = "first-download": then the
# first download's sha256 goes into the lock file (trust on first use, said loudly in the log),
# and every later download and mirror copy must match it. Files on disk
# (file: URLs, or local_dir) need no hash: theirs is recorded in the download's provenance. Their
# relative paths are relative to the project (project_dir), never to the working directory. No
# data file may be named provenance.json (the download stage writes its record beside them).


@dataclass(frozen=True)
class RemoteFile:
    name: str
    url: str
    sha256: str | None = None
    size: int | None = None
    # A git blob id: sha1 over b"blob <size>\0" + the bytes, a content hash that a repository's
    # tree publishes where no sha256 is published.
    git_sha1: str | None = None
    pin: str | None = None  # "first-download": the lock file records the first one's sha256
    extract: str | None = None  # "zip": unpacked into the download's directory (archives.py)

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
    local_dir: str | None = None  # the directory of a local_dir entry, resolved


READERS = ("text", "parquet", "jsonl", "jsonl.zst", "bin", "none")
USES = ("train", "init", "eval")
PINS = ("first-download",)
EXTRACT = ("zip",)
READER_OPTIONS = {"parquet": ("column",), "jsonl": ("field",), "jsonl.zst": ("field",)}
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# A data file's name, in bytes: its temporaries (.nanogptx-part.NAME, .nanogptx-tmp.PID.HEX.
# .nanogptx-source.NAME) must fit the 255 bytes of a file name.
NAME_MAX = 200
_LONG = f"a name of at most {NAME_MAX} bytes (the download's temporaries add to it)"
# Names the download stage writes beside the data files (nanogptx.provenance.FILENAME); its
# temporaries are hidden (.nanogptx-*), which no registry file name can be.
RESERVED = ("provenance.json",)
_HEX = {"sha256": re.compile(r"[0-9a-f]{64}"), "git_sha1": re.compile(r"[0-9a-f]{40}")}


class UnknownDataset(UserError, KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


class RegistryError(UserError, ValueError):
    """A dataset file that does not follow the schema: names the file, the key and what was
    expected."""


def registry_dir() -> Path:
    """$NANOGPTX_DATASETS, else config/datasets under the working directory (Snakemake's: the
    clone), else the one beside this package's source (an editable install)."""
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
        _need(key in known, where, "key", key, f"one of {sorted(known)}{suggest(key, known)}")
    name = path.stem
    _need(bool(NAME.fullmatch(name)), where, "file name", name, "letters, digits, '.', '_', '-'")
    reader, use = tree.get("reader"), tree.get("use", "train")
    _need(reader in READERS, where, "reader", reader, f"one of {list(READERS)}")
    _need(use in USES, where, "use", use, f"one of {list(USES)}")
    readers = [r for r in READERS if r != "none"]
    text = f"one of {readers} for a dataset of text (use = 'train'); none is for use = "
    _need(use != "train" or reader != "none", where, "reader", reader, text + "'init' or 'eval'")
    about = tree.get("about", "")
    _need(isinstance(about, str), where, "about", about, "a string")
    options = tree.get("options", {})
    _need(isinstance(options, dict), where, "options", options, "a table")
    for key, value in options.items():
        allowed = READER_OPTIONS.get(reader, ())
        expected = f"an option of reader {reader!r}: {list(allowed) or 'none'}"
        _need(key in allowed, where, f"options.{key}", value, expected)
        _need(isinstance(value, str), where, f"options.{key}", value, "a string")
    project = project_dir(path)
    entries = tree.get("files", [])
    _need(isinstance(entries, list), where, "files", entries, "a list of [[files]] tables")
    files = [_file(entry, f"{where}: files[{i}]", project) for i, entry in enumerate(entries)]
    local = None
    if "local_dir" in tree:
        local = _local_dir(tree["local_dir"], where, project)
        files += _local_files(local, tree["local_dir"], where)
        reserved = [f.name for f in files if f.name in RESERVED]
        expected = (
            f"a directory without {reserved}: the download stage writes its record under that "
            "name beside the data files; rename the file"
        )
        _need(not reserved, where, "local_dir", tree["local_dir"], expected)
    _need(bool(files), where, "files", tree.get("files"), "at least one file (or local_dir)")
    expected = (
        "no extract in a dataset of text (use = 'train'): prepare reads the downloaded files "
        "as they are, not an archive's members"
    )
    for i, f in enumerate(files if use == "train" else []):
        _need(not f.extract, where, f"files[{i}]: extract", f.extract, expected)
    names = [f.name for f in files]
    dup = sorted({n for n in names if names.count(n) > 1})
    _need(not dup, where, "files", dup, "each file name once")
    resolved = None if local is None else str(local)
    return Dataset(name, tuple(files), reader, about, use, tuple(sorted(options.items())), resolved)


def project_dir(dataset_file: Path) -> Path:
    """The base of a dataset file's relative paths: two levels above it (the project, for
    config/datasets/NAME.toml), so that they mean the same from any working directory."""
    return dataset_file.resolve().parent.parent.parent


def _local_dir(value: Any, where: str, project: Path) -> Path:
    ok = isinstance(value, str) and value.strip() != "" and "\0" not in value
    expected = f"a directory path (absolute, or relative to the project {project})"
    _need(ok, where, "local_dir", value, expected)
    local = (project / Path(value).expanduser()).resolve()
    _need(local.is_dir(), where, "local_dir", value, f"a directory that exists ({local} does not)")
    expected = f"a directory of data, not the project {project} or one holding it"
    _need(not project.is_relative_to(local), where, "local_dir", value, expected)
    return local


def _local_files(local: Path, value: str, where: str) -> list[RemoteFile]:
    """Every file of a local_dir but hidden ones, in name order. A link to nothing is refused
    (a file meant for the corpus, on a disk not mounted, say), not left out unsaid."""
    files = []
    for p in sorted(local.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_symlink() and not p.exists():
            to = os.readlink(p)
            expected = f"a directory of files: {p.name} is a link to {to}, which does not exist"
            _need(False, where, "local_dir", value, expected)
        if p.is_file():
            ok = len(os.fsencode(p.name)) <= NAME_MAX
            _need(ok, where, "local_dir", value, f"files of {_LONG}: {p.name}")
            files.append(RemoteFile(p.name, f"file:{urllib.parse.quote(str(p))}"))
    return files


def _file(entry: Any, where: str, project: Path) -> RemoteFile:
    _need(isinstance(entry, dict), where, "entry", entry, "a table with name and url")
    known = {"name", "url", "sha256", "size", "git_sha1", "pin", "extract"}
    for key in entry:
        _need(key in known, where, "key", key, f"one of {sorted(known)}")
    url = entry.get("url")
    _need(isinstance(url, str) and bool(url), where, "url", url, "an https:// or file: URL")
    scheme = urllib.parse.urlsplit(url).scheme
    _need(scheme in ("https", "file"), where, "url", url, "an https:// URL or file:PATH")
    if scheme == "file":
        # The path as written: '#', '?', '%' and spaces are characters of it (urlsplit cut a
        # path at '#' and read another file). file:///abs, the URL form, is file:/abs.
        path = url[len("file:") :]
        path = path[2:] if path.startswith("//") else path
        local = project / Path(path)  # a relative path: from the project, whatever the cwd
        expected = f"file:PATH of a file that exists ({local} is not one)"
        _need(local.is_file(), where, "url", url, expected)
        url, last = f"file:{urllib.parse.quote(str(local))}", local.name
    else:
        last = Path(urllib.parse.urlsplit(url).path).name
    name = entry.get("name", last)
    name_key = "name" if "name" in entry else "name (the url's last part; set name to choose one)"
    ok = isinstance(name, str) and bool(NAME.fullmatch(name))
    _need(ok, where, name_key, name, "a file name: letters, digits, '.', '_', '-'")
    _need(len(name) <= NAME_MAX, where, name_key, name, _LONG)
    expected = f"a name other than {list(RESERVED)}: the download writes its record so"
    _need(name not in RESERVED, where, name_key, name, expected)
    for key in ("sha256", "git_sha1"):
        value = entry.get(key)
        ok = value is None or (isinstance(value, str) and bool(_HEX[key].fullmatch(value)))
        _need(ok, where, key, value, f"{_HEX[key].pattern} (lower-case hex)")
    size = entry.get("size")
    ok = size is None or (isinstance(size, int) and not isinstance(size, bool) and size >= 0)
    _need(ok, where, "size", size, "a number of bytes")
    pin, extract = entry.get("pin"), entry.get("extract")
    _need(pin is None or pin in PINS, where, "pin", pin, f"one of {list(PINS)}")
    for key in ("sha256", "git_sha1"):
        expected = f"no pin beside {key}, which pins the file already"
        _need(pin is None or key not in entry, where, "pin", pin, expected)
    expected = f"one of {list(EXTRACT)}"
    _need(extract is None or extract in EXTRACT, where, "extract", extract, expected)
    return RemoteFile(name, url, entry.get("sha256"), size, entry.get("git_sha1"), pin, extract)


def entry_file(name: str) -> Path:
    return registry_dir() / f"{name}.toml"


# Each dataset's entry, parsed from its file on the first get() of it (entries put in before,
# as tests do, stay).
REGISTRY: dict[str, Dataset] = {}


def get(name: str) -> Dataset:
    """The registry entry for name, from its file alone; an unknown name raises with the list
    of known ones, a malformed file RegistryError naming it (other files are not read)."""
    if name not in REGISTRY:
        path = entry_file(name)
        if not (NAME.fullmatch(name) and path.is_file()):
            directory = registry_dir()
            known = sorted({*REGISTRY, *(p.stem for p in directory.glob("*.toml"))})
            raise UnknownDataset(
                f"unknown dataset {name!r}{suggest(name, known)}; known datasets: "
                f"{', '.join(known)} (files in {directory})"
            )
        REGISTRY[name] = parse(path)
    return REGISTRY[name]
