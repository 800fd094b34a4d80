"""Dataset files (config/datasets/NAME.toml): each read alone, checked against the schema, with
paths on disk relative to the project, never to the working directory."""

from __future__ import annotations

import re
import urllib.parse
from pathlib import Path

import pytest

from nanogptx import config, datasets


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project with config/datasets/ as the registry, and an empty cache of parsed entries."""
    (tmp_path / "config/datasets").mkdir(parents=True)
    monkeypatch.setenv("NANOGPTX_DATASETS", str(tmp_path / "config/datasets"))
    monkeypatch.setattr(datasets, "REGISTRY", {})
    return tmp_path


def write(project: Path, name: str, text: str) -> Path:
    path = project / "config/datasets" / f"{name}.toml"
    path.write_text(text)
    return path


def local_paths(ds: datasets.Dataset) -> list[Path]:
    return [Path(urllib.parse.unquote(urllib.parse.urlsplit(f.url).path)) for f in ds.files]


def test_relative_paths_are_relative_to_the_project_whatever_the_working_directory(
    project: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    (project / "corpus").mkdir()
    for name in ("b.txt", "a.txt", ".DS_Store"):
        (project / "corpus" / name).write_text("x")
    (project / "one.txt").write_text("y")
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    ds = datasets.parse(write(project, "dir", 'reader = "text"\nlocal_dir = "corpus"\n'))
    assert local_paths(ds) == [project / "corpus/a.txt", project / "corpus/b.txt"]  # no .*
    assert ds.local_dir == str(project / "corpus")
    ds = datasets.parse(write(project, "one", 'reader = "text"\n[[files]]\nurl = "file:one.txt"\n'))
    assert local_paths(ds) == [project / "one.txt"]


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ('""', "local_dir = '': expected a directory path"),
        ("5", "local_dir = 5: expected a directory path"),
        ('"."', "local_dir = '.': expected a directory of data, not the project"),
        ('".."', "local_dir = '..': expected a directory of data, not the project"),
        ('"nowhere"', "local_dir = 'nowhere': expected a directory that exists"),
    ],
)
def test_an_empty_wrong_or_project_local_dir_is_refused_naming_file_and_key(
    project: Path, monkeypatch: pytest.MonkeyPatch, value: str, says: str
) -> None:
    # local_dir = "" was the working directory: the clone's README, Snakefile, ... as a corpus.
    monkeypatch.chdir(project)
    path = write(project, "bad", f'reader = "text"\nlocal_dir = {value}\n')
    with pytest.raises(datasets.RegistryError, match=f"{path}: {says}"):
        datasets.parse(path)


def test_a_data_file_named_as_the_download_record_is_refused(project: Path) -> None:
    # It was overwritten by the download stage's own provenance.json.
    (project / "corpus").mkdir()
    (project / "corpus" / "provenance.json").write_text("{}")
    path = write(project, "dir", 'reader = "text"\nlocal_dir = "corpus"\n')
    with pytest.raises(datasets.RegistryError, match="local_dir = 'corpus': expected a direc.*"
                       r"without \['provenance.json'\]"):  # fmt: skip
        datasets.parse(path)
    path = write(
        project, "url", 'reader = "text"\n[[files]]\nurl = "https://x.org/provenance.json"\n'
    )
    with pytest.raises(datasets.RegistryError, match=r"files\[0\]: name = 'provenance.json'"):
        datasets.parse(path)


def test_a_dataset_of_text_needs_a_reader_and_only_text_is_data_dataset(project: Path) -> None:
    # reader = "none" was accepted as data.dataset and failed in prepare with a KeyError.
    url = '[[files]]\nurl = "https://x.org/a.bin"\n'
    path = write(project, "none", f'reader = "none"\n{url}')
    with pytest.raises(datasets.RegistryError, match="reader = 'none': expected one of .*text"):
        datasets.parse(path)
    write(project, "weights", f'reader = "none"\nuse = "init"\n{url}')
    with pytest.raises(config.ConfigError, match="data.dataset = 'weights': expected a dataset "
                       "of text"):  # fmt: skip
        config.load(None, ["data.dataset=weights"])


def test_each_dataset_file_is_read_alone(project: Path) -> None:
    # One broken (or machine-specific) file blocked every dataset, and so every run.
    write(project, "good", 'reader = "text"\n[[files]]\nurl = "https://x.org/a.txt"\n')
    write(project, "broken", 'reader = "text"\nlocal_dir = "/no/such/dir"\n')
    assert datasets.get("good").files[0].name == "a.txt"
    assert config.load(None, ["data.dataset=good"]).data.dataset == "good"
    with pytest.raises(datasets.RegistryError, match="broken.toml: local_dir"):
        datasets.get("broken")
    with pytest.raises(datasets.UnknownDataset, match=r"'god' \(did you mean 'good'\?\); known "
                       "datasets: broken, good"):  # fmt: skip
        datasets.get("god")


@pytest.mark.parametrize(
    ("url", "says"),
    [
        # The host was dropped without a word: file://corpus/a.txt read /a.txt.
        ("file://corpus/a.txt", "a host"),
        # '#' and '?' began a fragment and a query, dropped: file:da#ta.txt read da.
        ("file:corpus/da#ta.txt", "a fragment"),
        ("file:corpus/a.txt?raw=1", "a query"),
        ("file:", "no path"),  # the project itself
        ("file:corpus/a\u0000.txt", "a NUL character"),
    ],
)
def test_a_file_url_that_is_not_one_path_on_this_machine_is_refused(
    project: Path, url: str, says: str
) -> None:
    toml = config._toml_value(url)
    path = write(project, "bad", f'reader = "text"\n[[files]]\nname = "a.txt"\nurl = {toml}\n')
    with pytest.raises(datasets.RegistryError, match=rf"files\[0\]: url = {re.escape(repr(url))}: "
                       f".*{says}"):  # fmt: skip
        datasets.parse(path)


def test_a_file_url_holds_any_file_name_escaped_and_localhost_is_this_machine(
    project: Path,
) -> None:
    (project / "corpus").mkdir()
    path = write(project, "ok", 'reader = "text"\n[[files]]\nname = "a.txt"\n'
                 'url = "file:corpus/da%23ta%3F.txt"\n[[files]]\nname = "b.txt"\n'
                 f'url = "file://localhost{project}/b.txt"\n')  # fmt: skip
    assert local_paths(datasets.parse(path)) == [project / "corpus/da#ta?.txt", project / "b.txt"]


def test_a_local_dir_with_a_broken_link_or_a_long_name_is_refused_naming_it(project: Path) -> None:
    # A link to a file that is gone (an unmounted disk) was left out of the corpus unsaid.
    (project / "corpus").mkdir()
    (project / "corpus" / "a.txt").write_text("x")
    (project / "corpus" / "b.txt").symlink_to(project / "nowhere.txt")
    path = write(project, "dir", 'reader = "text"\nlocal_dir = "corpus"\n')
    with pytest.raises(datasets.RegistryError, match=r"local_dir = 'corpus': .*b.txt is a link "
                       r"to .*nowhere.txt, which does not exist"):  # fmt: skip
        datasets.parse(path)
    # A name the download cannot wrap in its temporaries (a file name holds 255 bytes) was
    # refused only by the download, as "File name too long".
    (project / "corpus" / "b.txt").unlink()
    (project / "corpus" / ("é" * 101)).write_text("x")  # 202 bytes
    with pytest.raises(datasets.RegistryError, match=r"local_dir = 'corpus': .*a name of at "
                       r"most 200 bytes"):  # fmt: skip
        datasets.parse(path)
    path = write(project, "nul", 'reader = "text"\nlocal_dir = "corpus\\u0000"\n')
    with pytest.raises(datasets.RegistryError, match=r"local_dir = 'corpus\\x00': expected a "
                       "directory path"):  # fmt: skip  # a ValueError traceback (embedded null)
        datasets.parse(path)
    path = write(project, "url", f'reader = "text"\n[[files]]\nurl = "https://x.org/{"a" * 201}"\n')
    with pytest.raises(datasets.RegistryError, match=r"files\[0\]: name = 'a{201}': .*at most "
                       r"200 bytes"):  # fmt: skip
        datasets.parse(path)
