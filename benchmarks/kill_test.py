"""SIGKILL the stages at random moments, rerun each after every kill, and compare the end result
with an uninterrupted run: bit-identical final parameters (train), shards (prepare) and file
(download), nothing partial ever accepted, no leftovers after the last rerun.

    python benchmarks/kill_test.py [--kills 20] [--seed 0] [--only train,prepare,download]

train: nanoGPT's CPU recipe shape (4 layers, width 128) for 300 steps with a checkpoint every 10,
so that about a tenth of the time is spent writing checkpoints; half of the kills are aimed at a
checkpoint write (the moment its temporary directory appears), the rest fall at a random time.
prepare: Tiny Shakespeare x32 (36 MB) in GPT-2 tokens, 100,000-token shards. download: Tiny
Shakespeare from a loopback HTTP server throttled to 0.2 MB/s, through the `mirror` setting.
Prints, per stage, how many kills hit what, and whether the end result matched. Needs
../shared/assets (or --assets). Exits 1 if anything differs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TRAIN = [
    "model.n_layer=4", "model.n_head=4", "model.n_embd=128", "model.block_size=64",
    "model.bias=false", "train.batch_size=12", "train.max_iters=1000", "train.lr_decay_iters=1000",
    "train.warmup_iters=20", "train.learning_rate=1e-3", "train.min_lr=1e-4",
    "train.eval_interval=250", "train.eval_iters=5", "train.checkpoint_interval=10",
    "logging.log_interval=50",
]  # fmt: skip
PREPARE = ["tokenizer.name=gpt2", "data.shard_tokens=100000"]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree_hashes(root: Path, pattern: str = "*") -> dict[str, str]:
    return {p.name: sha256(p) for p in sorted(root.glob(pattern)) if p.is_file()}


def stage(module: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "WANDB_MODE": "disabled"}
    cmd = [sys.executable, "-m", f"nanogptx.{module}", *args]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def finish(proc: subprocess.Popen) -> None:
    _, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"{proc.args}: exit {proc.returncode}\n{err.decode()[-2000:]}")


def kill_when(proc: subprocess.Popen, ready, deadline_s: float) -> bool:
    """SIGKILL proc as soon as ready() holds (polled every 0.5 ms); False if it ended first."""
    t_end = time.perf_counter() + deadline_s
    while proc.poll() is None:
        if ready() or time.perf_counter() > t_end:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.0005)
    return False


def leftovers(*dirs: Path) -> list[str]:
    return [p.name for d in dirs if d.is_dir() for p in d.iterdir() if p.name.startswith(".")]


def raw_dir(raw: Path, assets: Path, repeat: int) -> Path:
    """Tiny Shakespeare repeated, with the provenance.json that the download stage writes."""
    import json

    raw.mkdir(parents=True)
    (raw / "input.txt").write_bytes(
        (assets / "tinyshakespeare" / "input.txt").read_bytes() * repeat
    )
    entry = {"path": str(raw / "input.txt"), "bytes": (raw / "input.txt").stat().st_size,
             "sha256": sha256(raw / "input.txt"), "check": "pinned"}  # fmt: skip
    (raw / "provenance.json").write_text(json.dumps({"stage": "download", "outputs": [entry]}))
    return raw


def after(seconds: float):
    t0 = time.perf_counter()
    return lambda: time.perf_counter() - t0 > seconds


# ---------------------------------------------------------------- train


def train_test(work: Path, assets: Path, kills: int, rng: np.random.Generator) -> bool:
    raw, data = raw_dir(work / "raw", assets, 1), work / "prepared"
    finish(stage("prepare", "--raw", str(raw), "--out", str(data)))

    def run(name: str) -> subprocess.Popen:
        return stage("train", *TRAIN, "--data", str(data), "--out", str(work / name / "model"),
                     "--checkpoints", str(work / name / "ckpt"))  # fmt: skip

    t0 = time.perf_counter()
    finish(run("whole"))
    whole_s = time.perf_counter() - t0
    ckpt = work / "killed" / "ckpt"
    aimed = inside = random = ended = 0
    for k in range(kills):
        proc = run("killed")
        if k % 2 == 0:  # aimed at a checkpoint write: its temporary directory exists
            writing = lambda: any(p.name.startswith(".nanogptx-tmpdir.") for p in ckpt.glob(".*"))  # noqa: E731
            hit = kill_when(proc, writing, whole_s)
        else:
            hit = kill_when(proc, after(rng.uniform(1.0, 8.0)), whole_s)
        if not hit:
            ended += 1
            continue
        aimed, random = aimed + (k % 2 == 0), random + (k % 2 == 1)
        inside += any(".nanogptx-tmp" in n for n in leftovers(ckpt, work / "killed" / "model"))
    finish(run("killed"))
    same = sha256(work / "whole/model/params.safetensors") == sha256(
        work / "killed/model/params.safetensors"
    )

    def final_eval(name: str) -> dict:  # what it found, not when (wall_s)
        last = json.loads((work / name / "model/metrics.jsonl").read_text().splitlines()[-1])
        return {k: v for k, v in last.items() if k != "wall_s"}

    metrics_same = final_eval("whole") == final_eval("killed")
    left = leftovers(ckpt, work / "killed" / "model")
    print(
        f"train: {aimed + random} kills of {kills} runs ({ended} ended first): {aimed} aimed at a "
        f"checkpoint write, {random} at a random moment; {inside} of them left a checkpoint or "
        f"model write unfinished (a temporary in the directory);\n  uninterrupted run "
        f"{whole_s:.1f} s; after the last rerun: leftovers {left}, params.safetensors sha256 "
        f"equal to the uninterrupted run's: {same}, final eval record equal: {metrics_same}"
    )
    return same and metrics_same and not left


# ---------------------------------------------------------------- prepare


def prepare_test(work: Path, assets: Path, kills: int, rng: np.random.Generator) -> bool:
    from nanogptx import loader

    raw = raw_dir(work / "raw" / "tinyshakespeare", assets, 32)

    def run(out: Path) -> subprocess.Popen:
        return stage("prepare", *PREPARE, "--raw", str(raw), "--out", str(out), "--threads", "2")

    t0 = time.perf_counter()
    finish(run(work / "whole"))
    whole_s = time.perf_counter() - t0
    whole = tree_hashes(work / "whole", "*.npy")
    out = work / "killed"
    made = refused = complete = wrong = 0
    for _ in range(kills):
        if not kill_when(run(out), after(rng.uniform(0.3, whole_s)), whole_s):
            continue  # it finished first: the next run starts over, and is killed in turn
        made += 1
        try:  # a killed prepare's directory passes for prepared data only when it is complete
            loader.open_prepared(out)
            complete += 1
            wrong += tree_hashes(out, "*.npy") != whole
        except loader.DataError:
            refused += 1
    finish(run(out))
    same = tree_hashes(out, "*.npy") == whole
    manifest_same = sha256(work / "whole/manifest.json") == sha256(out / "manifest.json")
    left = leftovers(out)
    print(
        f"prepare: {made} kills of {kills} runs over an uninterrupted {whole_s:.1f} s; after "
        f"each, the directory was refused as prepared data {refused} times and accepted "
        f"{complete} times (killed after its manifest; shards unlike the uninterrupted run's: "
        f"{wrong});\n  after the last rerun: {len(whole)} shards, every sha256 equal to the "
        f"uninterrupted run's: {same}, manifest equal: {manifest_same}, leftovers: {left}"
    )
    return same and manifest_same and not wrong and not left


# ---------------------------------------------------------------- download


def throttled_server(root: Path, rate: float) -> ThreadingHTTPServer:
    """Files under root over HTTP on 127.0.0.1, at about `rate` bytes/s, with Range requests."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            path = root / self.path.lstrip("/")
            data = path.read_bytes() if path.is_file() else None
            if data is None:
                self.send_error(404)
                return
            start = int(self.headers.get("Range", "bytes=0-")[6:].rstrip("-") or 0)
            self.send_response(206 if start else 200)
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            try:
                for i in range(start, len(data), 16384):
                    self.wfile.write(data[i : i + 16384])
                    self.server.served += len(data[i : i + 16384])  # type: ignore[attr-defined]
                    time.sleep(16384 / rate)
            except (BrokenPipeError, ConnectionResetError):
                pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.served = 0  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def download_test(work: Path, assets: Path, kills: int, rng: np.random.Generator) -> bool:
    server = throttled_server(assets, 0.2e6)
    mirror = f"http://127.0.0.1:{server.server_address[1]}"
    out = work / "raw"

    def run() -> subprocess.Popen:
        return stage("download", "--out", str(out), "--mirror", mirror, "--lock",
                     str(work / "lock.json"))  # fmt: skip

    part = out / ".nanogptx-part.input.txt"
    sizes = []
    for _ in range(kills):
        if not kill_when(run(), after(rng.uniform(0.3, 1.0)), 10):
            break
        sizes.append(part.stat().st_size if part.exists() else 0)
    finish(run())
    expected = (assets / "tinyshakespeare" / "SHA256SUMS").read_text().split()[0]
    got = sha256(out / "input.txt")
    size = (out / "input.txt").stat().st_size
    server.shutdown()
    print(
        f"download: {len(sizes)} kills; part sizes after them (bytes): {sizes};\n  final file "
        f"sha256 {got} {'==' if got == expected else '!='} the registry's; served "
        f"{server.served:,} bytes for a {size:,}-byte file (resumed, not restarted: "
        f"{server.served < 2 * size}); leftovers: {leftovers(out)}"
    )
    return got == expected and not leftovers(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", default="train,prepare,download")
    parser.add_argument("--assets", type=Path, default=ROOT.parent / "shared" / "assets")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    work = Path(tempfile.mkdtemp(prefix="nanogptx-kill-"))
    if "TIKTOKEN_CACHE_DIR" not in os.environ and (args.assets / "tiktoken").is_dir():
        from nanogptx import tokenizer  # offline: GPT-2's files from the assets (docs/datasets.md)

        tokenizer.seed_tiktoken_cache(args.assets / "tiktoken", work / "tiktoken")
        os.environ["TIKTOKEN_CACHE_DIR"] = str(work / "tiktoken")
    ok = True
    try:
        only = args.only.split(",")
        if "download" in only:
            ok &= download_test(work / "download", args.assets, args.kills // 2, rng)
        if "prepare" in only:
            ok &= prepare_test(work / "prepare", args.assets, args.kills // 2, rng)
        if "train" in only:
            ok &= train_test(work / "train", args.assets, args.kills, rng)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("all end results equal to uninterrupted runs" if ok else "DIFFERENCES FOUND")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
