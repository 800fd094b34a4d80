"""Dataset files (config/datasets/NAME.toml): each read alone, checked against the schema, with
paths on disk relative to the project, never to the working directory."""

from __future__ import annotations

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


@pytest.mark.parametrize("written", ["file:{abs}", "file://{abs}", "file:{rel}"])
def test_a_file_url_is_the_path_as_written(project: Path, written: str) -> None:
    # "file:/data/run #2/c.txt" was cut at '#' (a URL's fragment) and read /data/run, and a
    # '%20' in a name became a space: another file, or a traceback naming neither key nor file.
    folder = project / "my data #2?"
    folder.mkdir()
    target = folder / "corpus 100%20 ü.txt"
    target.write_text("x")
    (project / "my data ").mkdir()  # what the cut path named
    url = written.format(abs=target, rel=target.relative_to(project))
    path = write(project, "one", f'reader = "text"\n[[files]]\nname = "c.txt"\nurl = "{url}"\n')
    assert local_paths(datasets.parse(path)) == [target]


def test_a_file_url_must_name_a_file_and_a_name_from_it_says_so(project: Path) -> None:
    files = 'reader = "text"\n[[files]]\nurl = "file:{}"\n'
    path = write(project, "gone", files.format("gone.txt"))
    with pytest.raises(datasets.RegistryError, match=rf"{path}: files\[0\]: url = 'file:gone.txt':"
                       rf" expected file:PATH of a file that exists \({project / 'gone.txt'} is "
                       "not one"):  # fmt: skip
        datasets.parse(path)
    (project / "my corpus.txt").write_text("x")
    path = write(project, "spaced", files.format("my corpus.txt"))
    says = r"name \(the url's last part; set name to choose one\) = 'my corpus.txt': expected a"
    with pytest.raises(datasets.RegistryError, match=rf"files\[0\]: {says} file name"):
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
    with pytest.raises(datasets.RegistryError, match=r"files\[0\]: name \(the url's last part; "
                       r"set name to choose one\) = 'provenance.json'"):  # fmt: skip
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
    with pytest.raises(datasets.RegistryError, match=r"files\[0\]: name \(the url's last "
                       r"part; set name to choose one\) = 'a{201}': .*at most "
                       r"200 bytes"):  # fmt: skip
        datasets.parse(path)


def test_pin_on_first_download_and_extract_are_file_keys_checked_by_name(project: Path) -> None:
    head = 'reader = "none"\nuse = "eval"\n[[files]]\nurl = "https://x.org/b.zip"\n'
    ds = datasets.parse(write(project, "b", f'{head}pin = "first-download"\nextract = "zip"\n'))
    assert ds.files[0].pin == "first-download" and ds.files[0].extract == "zip"
    bad = {
        'pin = "always"': r"files\[0\]: pin = 'always': expected one of \['first-download'\]",
        f'pin = "first-download"\nsha256 = "{"0" * 64}"': "pin = 'first-download': expected no "
        "pin beside sha256",
        'extract = "tar"': r"files\[0\]: extract = 'tar': expected one of \['zip'\]",
    }
    for keys, match in bad.items():
        with pytest.raises(datasets.RegistryError, match=match):
            datasets.parse(write(project, "b", f"{head}{keys}\n"))
    # prepare reads the downloaded files themselves: a zip would be read as text.
    text = 'reader = "text"\n[[files]]\nurl = "https://x.org/b.zip"\nextract = "zip"\n'
    with pytest.raises(datasets.RegistryError, match=r"files\[0\]: extract = 'zip': expected no "
                       "extract in a dataset of text"):  # fmt: skip
        datasets.parse(write(project, "b", text))


def test_the_eval_bundle_entry_is_pinned_on_first_download_and_unpacked() -> None:
    # No hash of eval_bundle.zip is published: without pin = "first-download" it is refused.
    root = Path(__file__).resolve().parents[1]
    ds = datasets.parse(root / "config" / "datasets" / "eval-bundle.toml")
    [f] = ds.files
    assert ds.use == "eval" and f.name == "eval_bundle.zip" and not (f.sha256 or f.git_sha1)
    assert f.pin == "first-download" and f.extract == "zip"
    assert f.url == "https://karpathy-public.s3.us-west-2.amazonaws.com/eval_bundle.zip"
