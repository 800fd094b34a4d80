"""The plain-text reader on one huge line: time and peak memory at 100 MB and 400 MB for text with
no safe cut point ("ab  " repeated, and no whitespace at all), beside prose of the same size
(Tiny Shakespeare repeated) as the anchor.

    python benchmarks/bench_readers.py [--mb 100,400] [--piece-chars 1048576]

Each measurement runs `readers.read_text` over a generated file in a fresh process and prints
seconds, MB/s and the process's peak RSS. Time linear and memory flat mean: MB/s about equal at
both sizes, and peak RSS independent of the size. (Before the reader searched only a bounded
window, 10 MB of "ab  " took 11.5 s and 20 MB 40.7 s, and a 200 MB line without whitespace
peaked at 2.59 GB.)

Measured here (2-core Zen 5, 2026-12-02): "ab  " 33.0 MB/s at 100 MB, 41.6 at 400; no whitespace
336 / 414 MB/s; prose 227 / 291 MB/s; peak RSS 48-49 MB for every file.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT.parent / "shared" / "assets"

READ = """
import resource, sys, time
from pathlib import Path
from nanogptx import readers
t0 = time.perf_counter()
pieces = chars = 0
for b in readers.read_text(Path(sys.argv[1]), piece_chars=int(sys.argv[2])):
    pieces += len(b.texts)
    chars += sum(map(len, b.texts))
seconds = time.perf_counter() - t0
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(seconds, rss, pieces, chars)
"""


def write(path: Path, unit: bytes, n_bytes: int) -> None:
    block = unit * (4 << 20 // len(unit) + 1)
    with open(path, "wb") as f:
        left = n_bytes
        while left > 0:
            f.write(block[:left])
            left -= len(block[:left])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", default="100,400", help="file sizes in MB, comma-separated")
    parser.add_argument("--piece-chars", type=int, default=1 << 20)
    args = parser.parse_args()
    shapes = {"'ab  ' repeated": b"ab  ", "no whitespace": b"abcdefghij"}
    prose = ASSETS / "tinyshakespeare" / "input.txt"
    if prose.is_file():
        shapes["prose (anchor)"] = prose.read_bytes()
    print(f"{'text':<18} {'MB':>5} {'seconds':>8} {'MB/s':>7} {'peak RSS MB':>12} {'pieces':>7}")
    with tempfile.TemporaryDirectory(prefix="nanogptx-bench-readers-") as tmp:
        for name, unit in shapes.items():
            for mb in map(int, args.mb.split(",")):
                path = Path(tmp) / "a.txt"
                write(path, unit, mb * 10**6)
                out = subprocess.run(
                    [sys.executable, "-c", READ, str(path), str(args.piece_chars)],
                    capture_output=True, text=True, check=True,
                ).stdout.split()  # fmt: skip
                seconds, rss, pieces = float(out[0]), float(out[1]), int(out[2])
                print(
                    f"{name:<18} {mb:>5} {seconds:>8.2f} {mb / seconds:>7.1f} {rss:>12.0f} "
                    f"{pieces:>7}"
                )
                path.unlink()


if __name__ == "__main__":
    main()
