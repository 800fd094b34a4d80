"""Archives in the download stage: the CORE eval bundle (config/datasets/eval-bundle.toml) pinned
on first download and unpacked, through a mirror directory and a real HTTP server on 127.0.0.1;
every unsafe member refused with nothing unpacked; a kill mid-unpack recovered by a rerun."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import subprocess
import sys
import textwrap
import warnings
import zipfile
from pathlib import Path

import pytest

import corebundle
from httpserver import FileServer
from nanogptx import archives, datasets, download, provenance
from nanogptx.config import DataConfig

FAST = download.Policy(connect_timeout=2.0, read_timeout=2.0, retries=1, backoff=0.01)
SRC = Path(__file__).resolve().parents[1] / "src"
# A download directory as users name them: spaces and letters that are not ASCII.
ODD = "dåta raw/eval bundle 東京"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fetch(mirror: str | Path, out: Path, lock: Path, dataset: str = "eval-bundle") -> list:
    data = DataConfig(dataset=dataset)
    return download.download(data, out, mirror=str(mirror), lock=lock, policy=FAST)


def unpacked(out: Path) -> dict[str, bytes]:
    """{path relative to out: bytes} of every file under out/eval_bundle."""
    root = out / corebundle.ROOT
    return {str(p.relative_to(out)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def listing(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir()) if out.exists() else []


def test_the_bundle_from_a_mirror_is_pinned_on_first_download_then_checked(tmp_path, capsys):
    mirror, lock = corebundle.mirror(tmp_path / "mirror"), tmp_path / "lock.json"
    zipped = (mirror / "eval-bundle" / corebundle.ARCHIVE).read_bytes()
    out = tmp_path / ODD
    [got] = fetch(mirror, out, lock)
    assert got.check == "first-download" and got.sha256 == sha(zipped)
    assert unpacked(out) == corebundle.members()
    assert listing(out) == ["eval_bundle", "eval_bundle.zip", "provenance.json"]
    # Trust on first use, recorded and said: the lock holds the hash, the log says so loudly.
    assert json.loads(lock.read_text()) == {
        "eval-bundle": {"eval_bundle.zip": {"sha256": sha(zipped), "bytes": len(zipped)}}
    }
    err = capsys.readouterr().err
    assert "PINNED ON FIRST DOWNLOAD" in err and sha(zipped) in err and str(lock) in err
    rec = provenance.read(out)
    [extracted] = rec["extracted"]
    assert extracted["archive"] == "eval_bundle.zip" and extracted["sha256"] == sha(zipped)
    members = corebundle.members()
    assert [f["path"] for f in extracted["files"]] == list(members)
    assert [(f["bytes"], f["sha256"]) for f in extracted["files"]] == [
        (len(b), sha(b)) for b in members.values()
    ]
    # A later download checks against the lock, and unpacks again (an edited member comes back).
    (out / "eval_bundle" / "core.yaml").write_text("icl_tasks: []\n")
    [again] = fetch(mirror, out, lock)
    assert again.check == "lock" and not again.downloaded
    assert unpacked(out) == members
    # A changed archive (other bytes at the mirror) is refused against the lock, nothing kept.
    corebundle.mirror(mirror, baselines={"copa": 12.5})
    fresh = tmp_path / "fresh"
    with pytest.raises(
        download.HashMismatch, match=f"expected {len(zipped)} \\(lock\\).*delete its entry from"
    ):
        fetch(mirror, fresh, lock)
    assert listing(fresh) == []
    assert json.loads(lock.read_text())["eval-bundle"]["eval_bundle.zip"]["sha256"] == sha(zipped)


def test_corebundle_downloaded_gives_the_unpacked_bundle(tmp_path):
    raw = corebundle.downloaded(tmp_path, baselines={"copa": 40.0})
    assert unpacked(raw) == corebundle.members({"copa": 40.0})
    assert (
        "copa,commonsense_reasoning,multiple_choice,0,40.0"
        in unpacked(raw)["eval_bundle/eval_meta_data.csv"].decode().splitlines()
    )


def test_the_bundle_over_http_is_pinned_then_a_changed_one_refused(tmp_path):
    lock, out = tmp_path / "lock.json", tmp_path / "raw"
    first = corebundle.zip_bytes(corebundle.members())
    with FileServer() as server:
        served = server.add("/eval-bundle/eval_bundle.zip", first)
        [got] = fetch(server.url, out, lock)
        assert got.check == "first-download" and unpacked(out) == corebundle.members()
        served.data = corebundle.zip_bytes(corebundle.members({"boolq": 50.0}))
        with pytest.raises(download.HashMismatch, match="eval-bundle/eval_bundle.zip"):
            fetch(server.url, tmp_path / "again", lock)
    assert listing(tmp_path / "again") == []
    assert json.loads(lock.read_text())["eval-bundle"]["eval_bundle.zip"]["sha256"] == sha(first)


# ---------------------------------------------------------------------------------------------
# Unsafe archives: each refused, naming the archive and the member, with nothing unpacked


def member(name: str, data: bytes = b"x\n", mode: int = 0o100644) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, (2024, 1, 1, 0, 0, 0))
    info.create_system, info.external_attr = 3, mode << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    return info


def zipped(entries: list[tuple[zipfile.ZipInfo, bytes]]) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buf, "w") as zf:
        warnings.simplefilter("ignore")  # "Duplicate name": on purpose
        for info, data in entries:
            zf.writestr(info, data)
    return buf.getvalue()


def plain(*names: str) -> bytes:
    return zipped([(member(n), b"x\n") for n in names])


def with_nul() -> bytes:
    """A member stored as 'ok.txt\\0../../evil' (zipfile reads it as 'ok.txt')."""
    return plain("ok.txt?../../evil").replace(b"ok.txt?", b"ok.txt\0")


UNSAFE = {
    "parent": (plain("../evil.txt"), "'..' in its path"),
    "nested parent": (plain("eval_bundle/a.txt", "eval_bundle/../../evil.txt"), "'..'"),
    "absolute": (plain("/tmp/evil.txt"), "an absolute path"),
    "drive letter": (plain("C:/evil.txt"), "a drive letter"),
    "drive relative": (plain("c:evil.txt"), "a drive letter"),
    "backslash": (plain("eval_bundle\\..\\..\\evil.txt"), "a backslash"),
    "dot part": (plain("eval_bundle/./a.txt"), "an empty or '.' part"),
    "nul byte": (with_nul(), "a control character"),
    "symlink": (
        zipped([(member("eval_bundle/link", mode=stat.S_IFLNK | 0o777), b"/etc/passwd")]),
        "a symbolic link",
    ),
    "fifo": (zipped([(member("eval_bundle/pipe", mode=stat.S_IFIFO | 0o644), b"")]), "special"),
    "duplicate": (plain("eval_bundle/a.txt", "eval_bundle/a.txt"), "a duplicate name"),
    "case": (plain("eval_bundle/Core.yaml", "eval_bundle/core.yaml"), "by case or Unicode"),
    "case of a directory": (plain("Eval_Bundle/a.txt", "eval_bundle/b.txt"), "by case"),
    "unicode normalisation": (plain("caf\u00e9.txt", "cafe\u0301.txt"), "by case or Unicode"),
    "file and directory": (plain("eval_bundle", "eval_bundle/a.txt"), "another member (file)"),
    "the archive itself": (plain("bundle.zip"), "the archive itself 'bundle.zip'"),
    "the archive by case": (plain("BUNDLE.ZIP"), "by case or Unicode normalisation with the"),
    "another file": (plain("notes.txt"), "the dataset's file 'notes.txt'"),
    "the record": (plain("provenance.json"), "the download's record"),
    "nanogptx's own": (plain(".nanogptx-lock"), "nanogptx's own"),
    "long name": (plain(f"eval_bundle/{'é' * 128}.txt"), "longer than 255 bytes"),
    "long path": (  # each part fits, the whole path does not (PATH_MAX: 4096 bytes)
        plain("eval_bundle/" + "d" * 250 + "/d" * 2000 + "/a.txt"),
        "cannot be written in",
    ),
    "zip bomb of small members": (
        zipped([(member(f"eval_bundle/{i}.bin"), bytes(512 << 10)) for i in range(8)]),
        "4,194,304 bytes unpacked from",
    ),
    "zip bomb": (
        zipped([(member("eval_bundle/zeros.bin"), bytes(4 << 20))]),
        "more than 200x: a zip bomb",
    ),
}


def register(monkeypatch: pytest.MonkeyPatch, archive: bytes, mirror: Path) -> None:
    """Dataset toy: an archive pinned by its sha256 and unpacked, beside a plain file."""
    files = {"bundle.zip": archive, "notes.txt": b"notes\n"}
    entries = []
    for name, data in files.items():
        (mirror / "toy").mkdir(parents=True, exist_ok=True)
        (mirror / "toy" / name).write_bytes(data)
        extract = "zip" if name.endswith(".zip") else None
        url = f"https://example.invalid/{name}"
        entries.append(datasets.RemoteFile(name, url, sha(data), len(data), extract=extract))
    ds = datasets.Dataset("toy", tuple(entries), "none", "test", "eval")
    monkeypatch.setitem(datasets.REGISTRY, "toy", ds)


@pytest.mark.parametrize("case", list(UNSAFE))
def test_an_unsafe_member_is_refused_naming_archive_and_member_with_nothing_unpacked(
    case, tmp_path, monkeypatch
):
    archive, why = UNSAFE[case]
    register(monkeypatch, archive, tmp_path / "mirror")
    out = tmp_path / "box" / "raw"
    with pytest.raises(archives.ArchiveError) as e:
        fetch(tmp_path / "mirror", out, tmp_path / "lock.json", "toy")
    assert why in str(e.value) and str(out / "bundle.zip") in str(e.value)
    if case != "zip bomb of small members":
        assert "member '" in str(e.value)
    # The verified downloads stay; no member, no temporary, no record.
    assert listing(out) == ["bundle.zip", "notes.txt"]
    assert [p.name for p in (tmp_path / "box").rglob("*evil*")] == []


def test_an_archive_over_the_size_limit_is_refused_before_unpacking(tmp_path, monkeypatch):
    monkeypatch.setattr(archives, "MAX_BYTES", 1000)  # stands for 64 GiB
    data = (bytes(range(256)) * 4)[:1001]  # 1,001 bytes that barely compress
    register(monkeypatch, zipped([(member("eval_bundle/a.bin"), data)]), tmp_path)
    out = tmp_path / "raw"
    with pytest.raises(archives.ArchiveError, match="1,001 bytes unpacked, more than 1,000"):
        fetch(tmp_path, out, tmp_path / "lock.json", "toy")
    assert listing(out) == ["bundle.zip", "notes.txt"]


def test_a_member_that_does_not_read_back_leaves_nothing_unpacked(tmp_path, monkeypatch):
    # The first member unpacks; the second's stored bytes are damaged (its CRC fails at the end).
    entries = [(member("eval_bundle/a.txt"), b"a\n"), (member("eval_bundle/b.txt"), b"b" * 999)]
    for info, _ in entries:
        info.compress_type = zipfile.ZIP_STORED
    bad = zipped(entries).replace(b"b" * 999, b"c" * 999)
    register(monkeypatch, bad, tmp_path / "mirror")
    out = tmp_path / "raw"
    with pytest.raises(archives.ArchiveError, match="member 'eval_bundle/b.txt': cannot be read"):
        fetch(tmp_path / "mirror", out, tmp_path / "lock.json", "toy")
    assert listing(out) == ["bundle.zip", "notes.txt"]


# ---------------------------------------------------------------------------------------------
# Killed while unpacking: nothing at a final path, and a rerun completes


KILLER = """
import os, signal, sys
from nanogptx import archives, download

calls = 0
def kill_at(n):
    def wrap(real):
        def wrapped(*args):
            global calls
            calls += 1
            if calls == n:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*args)
        return wrapped
    return wrap
{patch}
download.main(sys.argv[1:])
"""


def killed(tmp_path: Path, out: Path, patch: str) -> subprocess.CompletedProcess:
    mirror = corebundle.mirror(tmp_path / "mirror")
    args = ["--dataset", "eval-bundle", "--mirror", str(mirror), "--out", str(out)]
    args += ["--lock", str(tmp_path / "lock.json")]
    code = KILLER.replace("{patch}", textwrap.dedent(patch))
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True)


def test_a_kill_while_unpacking_leaves_no_final_path_and_a_rerun_completes(tmp_path, capsys):
    out = tmp_path / ODD
    # SIGKILL as the third member is being written into the temporary directory.
    proc = killed(tmp_path, out, "archives._write = kill_at(3)(archives._write)")
    assert proc.returncode == -9, proc.stderr.decode()
    left = listing(out)
    assert "eval_bundle" not in left and "provenance.json" not in left
    assert any(name.startswith(".nanogptx-unpack.") for name in left)
    fetch(tmp_path / "mirror", out, tmp_path / "lock.json")
    assert "what an interrupted unpack left" in capsys.readouterr().err
    assert listing(out) == ["eval_bundle", "eval_bundle.zip", "provenance.json"]
    assert unpacked(out) == corebundle.members()


def test_a_kill_while_replacing_an_earlier_unpack_leaves_old_or_nothing(tmp_path):
    out = tmp_path / ODD
    mirror = corebundle.mirror(tmp_path / "mirror")
    fetch(mirror, out, tmp_path / "lock.json")
    (out / "eval_bundle" / "eval_meta_data.csv").write_text("edited\n")
    # SIGKILL after the earlier eval_bundle/ is moved aside, before the new one is moved in.
    proc = killed(tmp_path, out, "archives.os.rename = kill_at(2)(archives.os.rename)")
    assert proc.returncode == -9, proc.stderr.decode()
    left = listing(out)
    assert "eval_bundle" not in left and "provenance.json" not in left
    assert any(name.startswith(".nanogptx-unpacked.") for name in left)
    fetch(mirror, out, tmp_path / "lock.json")
    assert listing(out) == ["eval_bundle", "eval_bundle.zip", "provenance.json"]
    assert unpacked(out) == corebundle.members()


def test_two_downloads_of_the_bundle_at_once_leave_it_whole(tmp_path):
    mirror, lock, out = (
        corebundle.mirror(tmp_path / "mirror"),
        tmp_path / "lock.json",
        tmp_path / "raw",
    )
    args = ["--dataset", "eval-bundle", "--mirror", str(mirror), "--out", str(out)]
    cmd = [sys.executable, "-m", "nanogptx.download", *args, "--lock", str(lock)]
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    procs = [subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE) for _ in range(2)]
    results = [(p.wait(), p.stderr.read().decode()) for p in procs]
    assert any(rc == 0 for rc, _ in results), results
    for rc, err in results:  # the other waited its turn, or was refused at once
        assert rc == 0 or "in use by another download" in err, err
    assert listing(out) == ["eval_bundle", "eval_bundle.zip", "provenance.json"]
    assert unpacked(out) == corebundle.members()
    assert list(json.loads(lock.read_text())["eval-bundle"]) == ["eval_bundle.zip"]


def test_an_archive_replaced_after_its_hash_was_checked_is_not_unpacked(tmp_path, monkeypatch):
    """The archive is unpacked from the bytes whose sha256 the download checked (and the lock
    and provenance record): one replaced on disk after that check (another process, a user's
    copy) is refused, nothing unpacked, not unpacked under the first one's hash."""
    mirror, lock = corebundle.mirror(tmp_path / "mirror"), tmp_path / "lock.json"
    out = tmp_path / ODD
    other = corebundle.zip_bytes(corebundle.members({"copa": 12.5}))
    real_check = archives.check

    def check_then_replace(archive: Path, *args: object) -> list:
        members = real_check(archive, *args)
        swap = archive.with_name("swap")
        swap.write_bytes(other)
        os.replace(swap, archive)  # after download verified it, before it is unpacked
        return members

    monkeypatch.setattr(archives, "check", check_then_replace)
    with pytest.raises(archives.ArchiveError, match=r"eval_bundle\.zip: its sha256 is .* was "):
        fetch(mirror, out, lock)
    assert "eval_bundle" not in listing(out) and "provenance.json" not in listing(out)


def test_a_first_download_that_is_no_archive_is_not_pinned(tmp_path):
    """Trust on first use pins what was downloaded: a page that is no zip (a proxy's, a cut
    transfer) is refused before the lock records it and is not kept, so the next download,
    once the server serves the archive, pins and unpacks it (it was pinned, and every later
    download then failed against the lock until both were deleted by hand)."""
    lock, out = tmp_path / "lock.json", tmp_path / ODD
    good = corebundle.zip_bytes(corebundle.members())
    with FileServer() as server:
        served = server.add("/eval-bundle/eval_bundle.zip", good[: len(good) // 2])
        with pytest.raises(archives.ArchiveError, match=r"\.zip: not a zip .* not pinned in"):
            fetch(server.url, out, lock)
        assert not lock.exists() and listing(out) == []
        served.data = good
        [got] = fetch(server.url, out, lock)
    assert got.check == "first-download" and unpacked(out) == corebundle.members()
    assert json.loads(lock.read_text())["eval-bundle"]["eval_bundle.zip"]["sha256"] == sha(good)


def test_pins_of_two_datasets_recorded_at_once_keep_both(tmp_path):
    """Two downloads pinning files of different datasets in one lock file at the same time
    (first-download, announced hashes): each read-update-write holds the lock, none is lost."""
    lock = tmp_path / "dir with spaces" / "lock.json"
    code = textwrap.dedent("""
        import sys
        from pathlib import Path
        from nanogptx import pins
        for i in range(40):
            pins.record_lock(Path(sys.argv[1]), sys.argv[2], f"f{i}.zip", "ab" * 32, i)
    """)
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(lock), name], env=env)
        for name in ("eval-bundle", "other", "third")
    ]
    assert [p.wait() for p in procs] == [0, 0, 0]
    got = json.loads(lock.read_text())
    assert {name: len(files) for name, files in got.items()} == {
        "eval-bundle": 40, "other": 40, "third": 40
    }  # fmt: skip
