"""The download stage against a real HTTP server on 127.0.0.1 (tests/httpserver.py)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from httpserver import FileServer
from nanogptx import datasets, download, provenance
from nanogptx.config import DataConfig

FAST = download.Policy(
    connect_timeout=2.0, read_timeout=2.0, retries=3, backoff=0.01, backoff_max=0.05
)
SHAKESPEARE_SHA = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
MB = 1 << 20


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def blob(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def register(
    monkeypatch: pytest.MonkeyPatch, files: dict[str, bytes], pin: bool = True, name: str = "toy"
) -> None:
    """A temporary registry entry; its https URLs are never used since tests go via the mirror."""
    entries = tuple(
        datasets.RemoteFile(
            fname,
            f"https://example.invalid/{name}/{fname}",
            sha(data) if pin else None,
            len(data) if pin else None,
        )
        for fname, data in files.items()
    )
    monkeypatch.setitem(datasets.REGISTRY, name, datasets.Dataset(name, entries, "text", "test"))


@pytest.fixture
def server() -> Iterator[FileServer]:
    with FileServer() as s:
        yield s


def run(server: FileServer | str, tmp_path: Path, out: str = "raw", **kw) -> list:
    mirror = server.url if isinstance(server, FileServer) else server
    data = DataConfig(dataset="toy", allow_unverified=kw.pop("allow_unverified", False))
    return download.download(
        data,
        tmp_path / out,
        mirror=mirror,
        lock=tmp_path / "lock.json",
        policy=kw.pop("policy", FAST),
        **kw,
    )


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir()) if out.exists() else []


def test_downloads_every_file_and_writes_provenance(server, tmp_path, monkeypatch):
    files = {"a.bin": blob(3 * MB), "b.txt": b"hello\n"}
    register(monkeypatch, files)
    for fname, data in files.items():
        server.add(f"/toy/{fname}", data)
    run(server, tmp_path)
    out = tmp_path / "raw"
    assert leftovers(out) == ["a.bin", "b.txt", "provenance.json"]  # no .part left behind
    for fname, data in files.items():
        assert (out / fname).read_bytes() == data
    rec = provenance.read(out)
    assert rec["stage"] == "download" and rec["config"]["data"]["dataset"] == "toy"
    assert rec["mirror"] == server.url
    assert rec["outputs"] == [
        {
            "path": str(out / fname),
            "bytes": len(data),
            "sha256": sha(data),
            "check": "pinned",
            "source": f"{server.url}/toy/{fname}",
        }
        for fname, data in files.items()
    ]


def test_present_file_with_right_hash_is_not_downloaded_again(server, tmp_path, monkeypatch):
    data = blob(100_000)
    register(monkeypatch, {"a.bin": data})
    server.add("/toy/a.bin", data)
    run(server, tmp_path)
    run(server, tmp_path)
    assert len(server.hits) == 1
    (tmp_path / "raw" / "a.bin").write_bytes(b"x" * len(data))  # same size, wrong bytes
    run(server, tmp_path)
    assert len(server.hits) == 2
    assert (tmp_path / "raw" / "a.bin").read_bytes() == data


def test_dropped_connection_resumes_with_range(server, tmp_path, monkeypatch):
    data = blob(3 * MB)
    register(monkeypatch, {"a.bin": data})
    server.add("/toy/a.bin", data, drop_after=1_500_000)
    run(server, tmp_path)
    assert [h.range for h in server.hits] == [None, "bytes=1500000-"]
    assert (tmp_path / "raw" / "a.bin").read_bytes() == data


def test_connection_dropped_every_time_gives_up_leaving_nothing_final(
    server, tmp_path, monkeypatch
):
    data = blob(100_000)
    register(monkeypatch, {"a.bin": data})
    server.add("/toy/a.bin", data, drop_after=0, drops=99)
    with pytest.raises(download.DownloadError, match="giving up after 4 failed attempts: conn"):
        run(server, tmp_path)
    assert "a.bin" not in leftovers(tmp_path / "raw") and len(server.hits) == 4


def test_part_file_from_an_earlier_run_is_resumed(server, tmp_path, monkeypatch):
    data = blob(2 * MB)
    register(monkeypatch, {"a.bin": data})
    server.add("/toy/a.bin", data)
    out = tmp_path / "raw"
    out.mkdir()
    download.part_path(out, "a.bin").write_bytes(data[:MB])
    run(server, tmp_path)
    assert [h.range for h in server.hits] == [f"bytes={MB}-"]
    assert (out / "a.bin").read_bytes() == data and leftovers(out) == ["a.bin", "provenance.json"]


def test_stale_part_file_that_does_not_verify_is_downloaded_from_zero(
    server, tmp_path, monkeypatch
):
    data = blob(2 * MB)
    register(monkeypatch, {"a.bin": data})
    server.add("/toy/a.bin", data)
    out = tmp_path / "raw"
    out.mkdir()
    download.part_path(out, "a.bin").write_bytes(blob(MB, seed=1))  # bytes of another file
    run(server, tmp_path)
    assert [h.range for h in server.hits] == [f"bytes={MB}-", None]
    assert (out / "a.bin").read_bytes() == data


def test_server_ignoring_range_restarts_from_zero(server, tmp_path, monkeypatch):
    data = blob(2 * MB)
    register(monkeypatch, {"a.bin": data})
    server.add("/toy/a.bin", data, ignore_range=True, drop_after=MB + 12345)
    run(server, tmp_path)
    assert [h.range for h in server.hits] == [None, f"bytes={MB + 12345}-"]
    assert (tmp_path / "raw" / "a.bin").read_bytes() == data


def test_read_timeout_is_retried_and_resumed(server, tmp_path, monkeypatch):
    data = blob(200_000)
    register(monkeypatch, {"a.bin": data})
    server.add("/toy/a.bin", data, stall_after=50_000, stall_s=2.0)
    t0 = time.monotonic()
    run(server, tmp_path, policy=download.Policy(read_timeout=0.3, backoff=0.01))
    assert time.monotonic() - t0 < 1.5  # did not wait for the stalled answer
    assert [h.range for h in server.hits] == [None, "bytes=50000-"]
    assert (tmp_path / "raw" / "a.bin").read_bytes() == data


def test_hash_mismatch_names_file_and_hashes_and_keeps_nothing(server, tmp_path, monkeypatch):
    good, bad = blob(500_000), blob(500_000, seed=2)
    register(monkeypatch, {"a.bin": good})
    server.add("/toy/a.bin", bad)
    with pytest.raises(download.HashMismatch) as e:
        run(server, tmp_path)
    assert "toy/a.bin" in str(e.value) and sha(good) in str(e.value) and sha(bad) in str(e.value)
    assert leftovers(tmp_path / "raw") == []  # neither the file, nor a .part, nor provenance
    assert isinstance(e.value, provenance.HashMismatch)


def test_404_is_not_retried(server, tmp_path, monkeypatch):
    register(monkeypatch, {"a.bin": b"data"})
    with pytest.raises(download.DownloadError, match="HTTP 404.*/toy/a.bin"):
        run(server, tmp_path)
    assert len(server.hits) == 1
    assert leftovers(tmp_path / "raw") == []


def test_5xx_is_retried_with_backoff(server, tmp_path, monkeypatch):
    data = blob(10_000)
    register(monkeypatch, {"a.bin": data})
    server.add("/toy/a.bin", data, fail=[500, 503])
    run(server, tmp_path)
    assert len(server.hits) == 3
    assert (tmp_path / "raw" / "a.bin").read_bytes() == data


def test_5xx_forever_gives_up_with_a_clear_error(server, tmp_path, monkeypatch):
    register(monkeypatch, {"a.bin": b"data"})
    server.add("/toy/a.bin", b"data", fail=[502] * 10)
    with pytest.raises(download.DownloadError, match="giving up after 4 failed attempts: HTTP 502"):
        run(server, tmp_path)
    assert len(server.hits) == 4  # FAST allows 3 retries


def test_refused_connection_fails_clearly_in_bounded_time(tmp_path, monkeypatch):
    with socket.socket() as s:  # a port nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    register(monkeypatch, {"a.bin": b"data"})
    t0 = time.monotonic()
    with pytest.raises(download.DownloadError, match=f"connection refused by 127.0.0.1:{port}"):
        run(f"http://127.0.0.1:{port}", tmp_path)
    assert time.monotonic() - t0 < 5
    assert leftovers(tmp_path / "raw") == []


def test_announced_hash_is_recorded_in_the_lock_and_checked_later(server, tmp_path, monkeypatch):
    data, changed = blob(300_000), blob(300_000, seed=3)
    register(monkeypatch, {"a.bin": data}, pin=False)
    # Hugging Face style: the resolve URL answers 302 with the LFS sha256, the CDN has the bytes.
    server.add("/toy/a.bin", b"", redirect_to="/cdn/a.bin", etag=f'"{sha(data)}"')
    server.add("/cdn/a.bin", data)
    [got] = run(server, tmp_path)
    assert got.check == "announced" and got.sha256 == sha(data)
    lock = json.loads((tmp_path / "lock.json").read_text())
    assert lock == {"toy": {"a.bin": {"sha256": sha(data), "bytes": len(data)}}}
    assert provenance.read(tmp_path / "raw")["outputs"][0]["check"] == "announced"

    # Later downloads check against the lock, whether or not the server announces a hash.
    server.add("/toy/a.bin", data)
    [got] = run(server, tmp_path, out="again")
    assert got.check == "lock"
    server.add("/toy/a.bin", changed, etag=f'W/"{sha(changed)}"')
    with pytest.raises(download.HashMismatch, match="changed upstream"):
        run(server, tmp_path, out="changed")
    server.add("/toy/a.bin", changed)
    with pytest.raises(download.HashMismatch, match=f"{sha(changed)}.*{sha(data)} \\(lock\\)"):
        run(server, tmp_path, out="changed")
    assert leftovers(tmp_path / "changed") == []
    assert json.loads((tmp_path / "lock.json").read_text()) == lock


def test_no_pinned_or_announced_hash_is_refused_unless_allowed(server, tmp_path, monkeypatch):
    data = b"some bytes nobody vouches for\n"
    register(monkeypatch, {"a.bin": data}, pin=False)
    server.add("/toy/a.bin", data, etag='"not-a-sha256"')
    with pytest.raises(download.DownloadError, match="data.allow_unverified"):
        run(server, tmp_path)
    assert leftovers(tmp_path / "raw") == []
    [got] = run(server, tmp_path, allow_unverified=True)
    assert got.check == "unverified" and (tmp_path / "raw" / "a.bin").read_bytes() == data
    assert not (tmp_path / "lock.json").exists()


def test_parallel_download_of_several_files(server, tmp_path, monkeypatch):
    files = {f"f{i}.bin": blob(50_000, seed=i) for i in range(4)}
    register(monkeypatch, files)
    for fname, data in files.items():
        server.add(f"/toy/{fname}", data, delay_s=0.4)
    t0 = time.monotonic()
    run(server, tmp_path, threads=4)
    assert server.max_active >= 2 and time.monotonic() - t0 < 4 * 0.4
    for fname, data in files.items():
        assert (tmp_path / "raw" / fname).read_bytes() == data


def test_mirror_directory_and_file_url_for_tinyshakespeare(assets, tmp_path):
    [got] = download.download(
        DataConfig(), tmp_path / "dir", mirror=str(assets), lock=tmp_path / "lock.json"
    )
    assert (got.sha256, got.bytes, got.check) == (SHAKESPEARE_SHA, 1_115_394, "pinned")
    assert got.source == str(assets / "tinyshakespeare" / "input.txt")
    download.main(
        [
            "--out",
            str(tmp_path / "url"),
            "--mirror",
            (assets).as_uri(),
            "--lock",
            str(tmp_path / "lock.json"),
        ]
    )
    rec = provenance.read(tmp_path / "url")
    assert rec["outputs"][0]["sha256"] == SHAKESPEARE_SHA and rec["outputs"][0]["check"] == "pinned"
    assert provenance.sha256_file(tmp_path / "url" / "input.txt") == SHAKESPEARE_SHA


def test_missing_mirror_file_is_a_clear_error(tmp_path, monkeypatch):
    register(monkeypatch, {"a.bin": b"data"})
    with pytest.raises(download.DownloadError, match="mirror file .*toy/a.bin does not exist"):
        run(str(tmp_path / "empty-mirror"), tmp_path)


def test_http_url_in_the_registry_is_refused(tmp_path, monkeypatch):
    monkeypatch.setitem(
        datasets.REGISTRY,
        "toy",
        datasets.Dataset(
            "toy",
            (datasets.RemoteFile("a.bin", "http://example.invalid/a.bin", sha(b"x"), 1),),
            "text",
            "test",
        ),
    )
    with pytest.raises(download.DownloadError, match="is not https"):
        run(None, tmp_path)  # type: ignore[arg-type]
    with pytest.raises(download.DownloadError, match="is not https"):
        run("", tmp_path)  # Snakemake passes config.yaml's `mirror: ""` as --mirror ''


def test_output_directory_that_cannot_be_created_is_a_clear_error(server, tmp_path, monkeypatch):
    # Tests run as root, which chmod does not stop: a parent that is a regular file does.
    register(monkeypatch, {"a.bin": b"data"})
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(download.DownloadError, match="--out .*file/raw cannot be created"):
        run(server, tmp_path, out="file/raw")


def test_cli_reports_a_failure_in_one_line(server, tmp_path, monkeypatch, capsys):
    register(monkeypatch, {"a.bin": b"data"})
    with pytest.raises(SystemExit) as e:
        download.main(
            [
                "data.dataset=toy",
                "--out",
                str(tmp_path / "raw"),
                "--mirror",
                server.url,
                "--lock",
                str(tmp_path / "lock.json"),
            ]
        )
    assert e.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("python -m nanogptx.download: error: HTTP 404")
    with pytest.raises(SystemExit) as e:
        download.main(["data.dataset=tinyshakespear", "--out", str(tmp_path / "raw")])
    assert e.value.code == 2
    assert "did you mean 'tinyshakespeare'" in capsys.readouterr().err


def test_cli_help_lists_the_data_keys(capsys):
    with pytest.raises(SystemExit) as e:
        download.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--mirror" in out and "data.allow_unverified" in out


def test_plain_http_proxy_from_the_environment_is_used(server, tmp_path, monkeypatch):
    data = blob(10_000)
    register(monkeypatch, {"a.bin": data})
    server.add("http://mirror.invalid/toy/a.bin", data)  # a proxy gets the absolute URL
    monkeypatch.setenv("http_proxy", server.url)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    run("http://mirror.invalid", tmp_path)
    assert [h.path for h in server.hits] == ["http://mirror.invalid/toy/a.bin"]
    assert (tmp_path / "raw" / "a.bin").read_bytes() == data


def test_progress_shows_bytes_rate_and_eta_in_lines_for_logs(capsys):
    progress = download.Progress("toy", {"a.bin": 2_000_000, "b.bin": 1_000_000}, tty=False)
    progress.log_every_s = 0.0
    progress.start("a.bin", 0, 2_000_000)
    progress.received("a.bin", 1_500_000)
    progress.finish("b.bin", 1_000_000, "toy/b.bin: done")
    err = capsys.readouterr().err
    assert re.search(r"toy: 0/2 files, 1\.5 MB of 3\.0 MB, [\d.]+ MB/s, ETA (\d+:)?\d+:\d\d", err)
    assert err.count("\n") == 2


def test_the_last_progress_line_counts_every_file_done(server, tmp_path, monkeypatch, capsys):
    """It said "0/1 file, 1.1 MB of 1.1 MB": logged when the bytes were in, before the file
    was verified and counted."""
    files = {"a.bin": blob(1_100_000), "b.bin": blob(10, seed=1)}
    register(monkeypatch, files)
    for name, data in files.items():
        server.add(f"/toy/{name}", data)
    run(server, tmp_path)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("toy: ")]
    assert lines[-1].startswith("toy: 2/2 files, 1.1 MB of 1.1 MB"), lines
    assert all("0/2 files, 1.1 MB of 1.1 MB" not in line for line in lines), lines


def test_progress_on_a_terminal_is_a_tqdm_bar_of_bytes(capsys):
    progress = download.Progress("toy", {"a.bin": 2_000_000, "b.bin": 1_000_000}, tty=True)
    progress.start("a.bin", 0, 2_000_000)
    time.sleep(0.15)  # tqdm redraws at most every 0.1 s
    progress.received("a.bin", 1_500_000)
    progress.finish("b.bin", 1_000_000, "toy/b.bin: done")
    progress.close()
    err = capsys.readouterr().err
    assert re.search(r"toy: +50%\|.*\| 1\.50M/3\.00M \[.*B/s\]", err), err
    assert "toy/b.bin: done\n" in err  # messages above the bar, on lines of their own


def test_unreadable_lock_file_is_a_clear_error(server, tmp_path, monkeypatch):
    register(monkeypatch, {"a.bin": b"data"}, pin=False)
    (tmp_path / "lock.json").write_text('{"toy": {"a.bin": {"sha256": "abc"}}}')
    with pytest.raises(download.DownloadError, match="lock.json: toy/a.bin: expected"):
        run(server, tmp_path)
    (tmp_path / "lock.json").write_text("{not json")
    with pytest.raises(download.DownloadError, match="lock.json: cannot read it as JSON"):
        run(server, tmp_path)
    assert server.hits == []


def test_a_git_blob_id_pins_a_file_and_its_sha256_goes_into_the_lock(
    server: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As HellaSwag's file: no published sha256, but the git blob id of its repository's tree.
    data = b'{"ctx": "A man", "endings": ["a", "b", "c", "d"], "label": 0}\n' * 50
    blob_id = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    entry = datasets.RemoteFile("val.jsonl", "https://example.invalid/val.jsonl", git_sha1=blob_id)
    ds = datasets.Dataset("toy", (entry,), "none", "test", use="eval")
    monkeypatch.setitem(datasets.REGISTRY, "toy", ds)
    server.add("/toy/val.jsonl", data)
    (got,) = run(server, tmp_path)
    assert got.check == "git-blob" and got.sha256 == sha(data)
    lock = json.loads((tmp_path / "lock.json").read_text())
    assert lock["toy"]["val.jsonl"] == {"sha256": sha(data), "bytes": len(data)}
    (again,) = run(server, tmp_path)
    assert again.check == "lock" and not again.downloaded
    # Other bytes upstream: refused, nothing kept at the final path.
    (tmp_path / "lock.json").unlink()
    server.add("/toy/val.jsonl", data.replace(b"A man", b"A dog"))
    with pytest.raises(download.HashMismatch, match=f"git blob id {blob_id}"):
        run(server, tmp_path, out="raw2")
    assert not (tmp_path / "raw2" / "val.jsonl").exists()


def interrupted_local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data: bytes) -> Path:
    """A download of the file on disk source.bin (no hash) cut short, as a kill leaves it: its
    part holds the first bytes. (Another file of the dataset fails at once, which stops it.)"""
    source = tmp_path / "source.bin"
    source.write_bytes(data)
    files = (datasets.RemoteFile("a.bin", f"file:{source}"),
             datasets.RemoteFile("gone.bin", f"file:{tmp_path / 'gone.bin'}"))  # fmt: skip
    monkeypatch.setitem(datasets.REGISTRY, "toy", datasets.Dataset("toy", files, "text", "t"))
    received = download.Progress.received

    def slowly(self: download.Progress, name: str, n: int) -> None:
        time.sleep(0.2)  # the copy outlasts the other file's failure, however loaded the machine
        received(self, name, n)

    monkeypatch.setattr(download.Progress, "received", slowly)
    with pytest.raises(download.DownloadError, match="gone.bin does not exist"):
        run(None, tmp_path)  # type: ignore[arg-type]
    monkeypatch.setattr(download.Progress, "received", received)
    part = download.part_path(tmp_path / "raw", "a.bin")
    assert 0 < part.stat().st_size < len(data)
    (tmp_path / "gone.bin").write_bytes(b"here now\n")
    return source


@pytest.mark.parametrize("mtime", ["new", "restored"])
def test_a_resumed_local_file_whose_source_was_replaced_is_copied_anew(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, mtime: str
) -> None:
    # The raw file was the old part followed by the new file's bytes, recorded as the file's.
    old, new = blob(8 * MB), blob(8 * MB, seed=5)
    source = interrupted_local(tmp_path, monkeypatch, old)
    stamp = source.stat().st_mtime_ns
    source.write_bytes(new)  # same size, other bytes
    if mtime == "restored":  # as `cp -p` or a tar extraction would: only the bytes tell
        os.utime(source, ns=(stamp, stamp))
    fetched = {f.name: f for f in run(None, tmp_path)}  # type: ignore[arg-type]
    assert (tmp_path / "raw" / "a.bin").read_bytes() == new
    assert fetched["a.bin"].sha256 == sha(new) and fetched["a.bin"].check == "local"
    err = capsys.readouterr().err
    said = "has changed since" if mtime == "new" else "resumed bytes do not verify"
    assert said in err, err
    assert leftovers(tmp_path / "raw") == ["a.bin", "gone.bin", "provenance.json"]


def test_a_resumed_local_file_whose_source_is_unchanged_continues_where_it_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    data = blob(8 * MB)
    interrupted_local(tmp_path, monkeypatch, data)
    run(None, tmp_path)  # type: ignore[arg-type]
    assert (tmp_path / "raw" / "a.bin").read_bytes() == data
    err = capsys.readouterr().err
    assert "from zero" not in err and "do not verify" not in err


def interrupted_http(server: FileServer, tmp_path: Path, data: bytes, **served: Any) -> None:
    """A download of toy/a.bin (no hash: allow_unverified) cut short after 1 MB: the server
    stalls, and meanwhile toy/b.bin fails, which stops the dataset's download."""
    server.add("/toy/a.bin", data, stall_after=MB, stall_s=0.6, **served)
    server.add("/toy/b.bin", b"b", delay_s=0.2, fail=[404])
    with pytest.raises(download.DownloadError, match="HTTP 404"):
        run(server, tmp_path, allow_unverified=True)
    assert download.part_path(tmp_path / "raw", "a.bin").stat().st_size == MB


@pytest.mark.parametrize("validator", ['"v1"', "Tue, 01 Jul 2025 10:00:00 GMT"])
def test_a_resumed_http_download_is_validated_with_if_range(
    server: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, validator: str
) -> None:
    old, new = blob(3 * MB), blob(3 * MB, seed=6)
    register(monkeypatch, {"a.bin": old, "b.bin": b"b"}, pin=False)
    interrupted_http(server, tmp_path, old, validator=validator)
    # Unchanged upstream: resumed, with the version it started from as If-Range.
    run(server, tmp_path, allow_unverified=True)
    assert (server.hits_for("/toy/a.bin")[-1].range, server.hits_for("/toy/a.bin")[-1].if_range) \
        == (f"bytes={MB}-", validator)  # fmt: skip
    assert (tmp_path / "raw" / "a.bin").read_bytes() == old
    # Changed upstream (same size): the server answers If-Range with the whole new file.
    shutil.rmtree(tmp_path / "raw")
    interrupted_http(server, tmp_path, old, validator=validator)
    other = '"v2"' if validator.startswith('"') else "Wed, 02 Jul 2025 10:00:00 GMT"
    server.add("/toy/a.bin", new, validator=other)
    [a, _] = run(server, tmp_path, allow_unverified=True)
    assert server.hits_for("/toy/a.bin")[-1].if_range == validator
    assert (tmp_path / "raw" / "a.bin").read_bytes() == new and a.sha256 == sha(new)


def test_a_resumed_http_download_without_a_validator_or_hash_starts_over(
    server: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    old, new = blob(3 * MB), blob(3 * MB, seed=7)
    register(monkeypatch, {"a.bin": old, "b.bin": b"b"}, pin=False)
    interrupted_http(server, tmp_path, old)
    server.add("/toy/a.bin", new)  # nothing tells the two apart but their bytes
    [a, _] = run(server, tmp_path, allow_unverified=True)
    assert (tmp_path / "raw" / "a.bin").read_bytes() == new and a.sha256 == sha(new)
    assert "cannot be shown to be the source of the partial file" in capsys.readouterr().err
    assert server.hits_for("/toy/a.bin")[-1].range is None


def test_an_unresolvable_host_is_retried_once_and_the_hint_names_both_mirror_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It was retried for 31 s (5 retries with backoff) before the hint, which named only the
    # stage's --mirror flag where a workflow user needs --config mirror=...
    entry = datasets.RemoteFile("a.bin", "https://nanogptx-test.invalid/a.bin", sha(b"x"), 1)
    monkeypatch.setitem(datasets.REGISTRY, "toy", datasets.Dataset("toy", (entry,), "text", "t"))
    policy = download.Policy(retries=5, backoff=0.01, backoff_max=0.05)
    with pytest.raises(download.DownloadError) as e:
        run(None, tmp_path, policy=policy)  # type: ignore[arg-type]
    msg = str(e.value)
    assert "giving up after 2 failed attempts: cannot resolve the host of" in msg, msg
    assert "--config mirror=DIR_OR_URL (snakemake)" in msg and "--mirror DIR_OR_URL" in msg


@pytest.mark.parametrize("where", ["same", "inside", "holding", "symlink", "mirror"])
def test_an_out_that_overlaps_what_the_download_reads_is_refused_before_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    # --out equal to the local_dir copied every file onto itself and wrote its record there.
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("mine\n")
    files = (datasets.RemoteFile("a.txt", f"file:{corpus / 'a.txt'}"),)
    ds = datasets.Dataset("toy", files, "text", "t", local_dir=str(corpus))
    monkeypatch.setitem(datasets.REGISTRY, "toy", ds)
    (tmp_path / "link").symlink_to(corpus)
    out = {"same": corpus, "inside": corpus / "raw", "holding": tmp_path,
           "symlink": tmp_path / "link", "mirror": tmp_path / "m" / "toy"}[where]  # fmt: skip
    mirror = None
    if where == "mirror":  # a mirror directory holds <mirror>/<dataset>/<file>
        mirror = str(tmp_path / "m")
        register(monkeypatch, {"a.txt": b"x"})
        (tmp_path / "m" / "toy").mkdir(parents=True)
        (tmp_path / "m" / "toy" / "a.txt").write_text("x")
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(download.DownloadError, match="a stage never writes where it reads"):
        download.download(DataConfig(dataset="toy"), out, mirror=mirror, lock=tmp_path / "l.json")
    assert sorted(tmp_path.rglob("*")) == before


def test_a_mirror_url_with_a_space_or_not_ascii_is_refused_at_once_naming_it(
    server: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """http.client refuses the request line: a space was retried as a network error (6 attempts
    with backoff) and ended "giving up after ... InvalidURL"."""
    data = blob(1000)
    register(monkeypatch, {"a.bin": data})
    server.add("/my%20mirror/toy/a.bin", data)
    policy = download.Policy(retries=5, backoff=0.01, backoff_max=0.05)
    with pytest.raises(download.DownloadError) as e:
        run(f"{server.url}/my mirror", tmp_path, policy=policy)
    assert f"{server.url}/my mirror/toy/a.bin: not a URL (URL can't contain control" in str(e.value)
    assert "giving up" not in str(e.value) and "write a space as %20" in str(e.value)
    with pytest.raises(download.DownloadError, match=r"mirrør/toy/a.bin: not a URL \('ascii'"):
        run(f"{server.url}/mirrør", tmp_path, policy=policy)  # was a UnicodeEncodeError traceback
    run(f"{server.url}/my%20mirror", tmp_path)
    assert (tmp_path / "raw/a.bin").read_bytes() == data


def test_download_help_lists_only_the_config_keys_it_reads(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """It listed all 11 [data] keys (it reads two), and --dataset's help read as if text,
    weights and eval were its allowed values."""
    with pytest.raises(SystemExit):
        download.main(["--help"])
    out = capsys.readouterr().out
    assert re.findall(r"^  (\w+\.\w+) \(", out, re.M) == ["data.dataset", "data.allow_unverified"]
    dataset_help = out.split("--dataset DATASET")[1].split("--out")[0]
    assert not re.search(r": \w+(, \w+)+\s*$", dataset_help), dataset_help
