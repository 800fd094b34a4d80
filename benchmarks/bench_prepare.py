"""GPT-2 tokenization speed of the whole prepare stage against nanoGPT's way and tiktoken's batch.

    python benchmarks/bench_prepare.py [--mb 300] [--threads N] [--repeats 3] [--format parquet]

Generates a corpus of --mb MB (Tiny Shakespeare from ../shared/assets, or --source FILE, cut into
documents of ~3 KB, then of ~150 bytes), and prints MB/s and tokens/s of: encode_ordinary per
document on one thread (nanoGPT's prepare), tiktoken's encode_ordinary_batch on N threads, and
prepare (verify, read, clean, tokenize, write and hash shards) on N threads in a subprocess, whose
peak RSS is also printed for this corpus and one ten times smaller. Best of --repeats runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT.parent / "shared" / "assets"
PREPARE_OVERRIDES = [  # FineWeb-like: a fixed set of leading documents (1%) forms val
    "tokenizer.name=gpt2",
    "data.split=first_docs",
    "data.shard_tokens=10000000",
]


def seed_tiktoken_offline() -> None:
    """Use ../shared/assets/tiktoken when no tiktoken cache is configured (offline machines)."""
    if "TIKTOKEN_CACHE_DIR" in os.environ or not (ASSETS / "tiktoken").is_dir():
        return
    from nanogptx import tokenizer

    cache = Path(tempfile.mkdtemp(prefix="bench-tiktoken-"))
    tokenizer.seed_tiktoken_cache(ASSETS / "tiktoken", cache)
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)


def make_documents(text: str, total_bytes: int, mean_chars: int, seed: int = 0) -> list[str]:
    """Runs of whole lines from random places in text, of mean_chars (0.5x to 1.5x) on average."""
    rng = np.random.default_rng(seed)
    line_starts = np.flatnonzero(np.frombuffer(text.encode(), np.uint8) == 10) + 1
    line_starts = line_starts[line_starts < len(text) - 2 * mean_chars]
    n = int(total_bytes / mean_chars * 1.02) + 1
    starts = rng.choice(line_starts, n)
    wanted = starts + (mean_chars * rng.uniform(0.5, 1.5, n)).astype(np.int64)
    ends = line_starts[np.minimum(np.searchsorted(line_starts, wanted), len(line_starts) - 1)]
    ends = np.maximum(ends, starts + 1)
    docs, size = [], 0
    for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
        docs.append(text[a:b])
        size += b - a
        if size >= total_bytes:
            break
    return docs


def write_corpus(docs: list[str], raw: Path, fmt: str, files: int = 4) -> list[str]:
    """docs split over `files` files, plus raw/provenance.json as the download stage writes it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from nanogptx import provenance

    raw.mkdir(parents=True)
    names = []
    for i, part in enumerate(np.array_split(np.arange(len(docs)), files)):
        texts = docs[part[0] : part[-1] + 1]
        name = f"{i:03d}.{fmt}"
        if fmt == "parquet":
            pq.write_table(pa.table({"text": texts}), raw / name, row_group_size=10_000)
        else:
            with open(raw / name, "w") as f:
                f.writelines(json.dumps({"text": t}) + "\n" for t in texts)
        names.append(name)
    outputs = [provenance.file_entry(raw / n) | {"check": "pinned"} for n in names]
    provenance.Record.start("download", {}).finish(raw, inputs=[], outputs=outputs)
    return names


def child(raw: Path, out: Path, threads: int, fmt: str, val_docs: int) -> None:
    """Run prepare on the corpus in raw and print its time and token count as JSON."""
    from nanogptx import config, prepare, tokenizer
    from nanogptx.datasets import Dataset, RemoteFile

    names = sorted(p.name for p in raw.iterdir() if p.name.endswith(fmt))
    ds = Dataset("bench", tuple(RemoteFile(n, f"file://{raw / n}") for n in names), fmt, "")
    cfg = config.load(None, [*PREPARE_OVERRIDES, f"data.val_docs={val_docs}"])
    tokenizer.gpt2().identity()  # load tiktoken's files first: the baselines have them loaded
    t0, cpu0 = time.perf_counter(), time.process_time()
    m = prepare.prepare(cfg, raw, out, threads, dataset=ds)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    tokens = sum(s["tokens"] for s in m["splits"].values())
    print(json.dumps({"seconds": seconds, "cpu": cpu, "tokens": tokens, "peak_mb": peak_rss_mb()}))


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM). Not getrusage's ru_maxrss: Linux carries the
    parent's high-water mark into a child across fork/vfork and exec, so a child started by this
    benchmark (which holds the corpus in memory) would report the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(raw: Path, out: Path, threads: int, fmt: str, docs: int) -> dict[str, float]:
    """seconds, cpu (seconds), tokens and peak_mb (RSS) of prepare in a fresh process."""
    shutil.rmtree(out, ignore_errors=True)
    val_docs = str(max(1, docs // 100))
    cmd = [sys.executable, __file__, "--child", str(raw), str(out), str(threads), fmt, val_docs]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"prepare failed:\n{r.stderr}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process's threads) of fn()."""
    t0, cpu0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - cpu0


def own_share_each(enc: Any, docs: list[str], threads: int) -> Callable[[], None]:
    """`threads` threads, each running encode_ordinary over its own contiguous share of docs."""

    def encode(share: list[str]) -> None:
        for d in share:
            enc.encode_ordinary(d)

    def run() -> None:
        shares = np.array_split(np.arange(len(docs)), threads)
        ts = [threading.Thread(target=encode, args=(docs[s[0] : s[-1] + 1],)) for s in shares]
        for t in ts:
            t.start()
        for t in ts:
            t.join()

    return run


def bench(text: str, mean_chars: int, args: argparse.Namespace, work: Path) -> None:
    import tiktoken

    enc = tiktoken.get_encoding("gpt2")
    # The first thread to use an encoding runs it fastest (see nanogptx.tokenizer): make that
    # the main thread, which runs the single-threaded baseline.
    enc.encode_ordinary(text[:10_000])
    n = args.threads
    docs = make_documents(text, int(args.mb * 1e6), mean_chars)
    mb = sum(map(len, docs)) / 1e6  # the source is ASCII: characters are bytes
    tokens = sum(len(t) for t in enc.encode_ordinary_batch(docs, num_threads=n))
    raw, small = work / f"raw{mean_chars}", work / f"small{mean_chars}"
    write_corpus(docs, raw, args.format)
    write_corpus(docs[: len(docs) // 10], small, args.format)
    print(
        f"\n{mb:,.0f} MB in {len(docs):,} documents of {mb * 1e6 / len(docs):,.0f} bytes on "
        f"average ({tokens:,} tokens), {args.format} in 4 files; {n} threads",
        flush=True,
    )
    methods: dict[str, tuple[str, Callable[[], tuple[float, float]]]] = {
        "single": (
            "encode_ordinary per document, 1 thread (nanoGPT)",
            lambda: timed(lambda: [enc.encode_ordinary(d) for d in docs]),
        ),
        "batch": (
            f"encode_ordinary_batch, {n} threads (tiktoken)",
            lambda: timed(lambda: enc.encode_ordinary_batch(docs, num_threads=n)),
        ),
        "share": (
            f"encode_ordinary per document, {n} threads, a share each",
            lambda: timed(own_share_each(enc, docs, n)),
        ),
    }
    runs: dict[str, list[tuple[float, float]]] = {k: [] for k in [*methods, "prepare"]}
    peak = {"full": 0.0, "small": 0.0}
    for _ in range(args.repeats):  # interleaved, so that all see the same machine load
        for key, (_, fn) in methods.items():
            runs[key].append(fn())
        r = run_child(raw, work / "out", n, args.format, len(docs))
        assert r["tokens"] == tokens + len(docs), (r, tokens, len(docs))  # + one end-of-text each
        runs["prepare"].append((r["seconds"], r["cpu"]))
        peak["full"] = max(peak["full"], r["peak_mb"])
        peak["small"] = max(
            peak["small"],
            run_child(small, work / "out", n, args.format, len(docs) // 10)["peak_mb"],
        )
    labels = {k: label for k, (label, _) in methods.items()}
    labels["prepare"] = f"prepare, the whole stage, {n} threads"
    best = {k: min(v) for k, v in runs.items()}  # the fastest run, with its CPU time
    single = mb / best["single"][0]
    print(f"  {'':56s} {'MB/s':>6s} {'Mtok/s':>6s} {'x single':>8s} {'MB/CPU-s':>8s}")
    for key, label in labels.items():
        wall, cpu = best[key]
        print(
            f"  {label:56s} {mb / wall:6.1f} {tokens / wall / 1e6:6.2f} "
            f"{mb / wall / single:8.2f} {mb / cpu:8.1f}"
        )
    target = 0.75 * n * single
    got = mb / best["prepare"][0]
    print(
        f"  target: prepare >= 0.75 x {n} x single = {target:.1f} MB/s: "
        f"{'met' if got >= target else 'NOT met'} ({got / single / n:.2f} x {n} x single)"
    )
    print(
        f"  peak RSS of prepare: {peak['full']:,.0f} MB for this corpus, "
        f"{peak['small']:,.0f} MB for one ten times smaller ({mb / 10:,.0f} MB)"
    )
    walls = ", ".join(f"{k} {' '.join(f'{w:.2f}' for w, _ in v)}" for k, v in runs.items())
    print(f"  every run (wall s): {walls}", flush=True)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        raw, out, threads, fmt, val_docs = sys.argv[2:7]
        seed_tiktoken_offline()
        child(Path(raw), Path(out), int(threads), fmt, int(val_docs))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=300, help="corpus size in MB")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--repeats", type=int, default=3, help="runs of each; the best counts")
    parser.add_argument("--format", choices=["parquet", "jsonl"], default="parquet")
    parser.add_argument("--docs", default="3000,150", help="mean document sizes in bytes")
    parser.add_argument(
        "--source",
        type=Path,
        default=ASSETS / "tinyshakespeare" / "input.txt",
        help="text the documents are cut from",
    )
    args = parser.parse_args()
    seed_tiktoken_offline()
    text = args.source.read_text()
    print(f"bench_prepare: {os.cpu_count()} CPUs, {args.threads} threads, best of {args.repeats}")
    with tempfile.TemporaryDirectory(prefix="bench-prepare-") as work:
        for mean_chars in (int(x) for x in args.docs.split(",")):
            bench(text, mean_chars, args, Path(work))
            for p in Path(work).iterdir():
                shutil.rmtree(p)


if __name__ == "__main__":
    main()
