"""Progress lines (and counts in words) for a person watching the workflow. A stage that
Snakemake runs writes its full log to a file; with --progress-fd it also writes a line every few
seconds, its label first, to that file descriptor (the rule passes fd 3: the job's stderr before
the redirection to the log, that is the terminal of `snakemake`, or a SLURM job's output). Best
effort: a channel that fails stops, and the stage goes on."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator


class Channel:
    """A line every `every_s` seconds (when due) to fd, each prefixed with label."""

    def __init__(self, fd: int | None, label: str, every_s: float = 10.0) -> None:
        self.fd, self.label, self.every_s, self.last = fd, label, every_s, -math.inf
        self.stream = None
        if fd is not None:
            try:
                self.stream = os.fdopen(fd, "w", buffering=1, closefd=False)
            except OSError:  # not open in this process: the log has it all
                pass

    def due(self) -> bool:
        return self.stream is not None and time.monotonic() - self.last >= self.every_s

    def say(self, text: str) -> None:
        if self.stream is None:
            return
        self.last = time.monotonic()
        try:
            self.stream.write(f"{self.label}: {text}\n")
        except OSError as e:  # a channel for a person, not the stage's work
            self.stream = None
            print(f"progress lines to fd {self.fd} stopped: {e}", file=sys.stderr, flush=True)


def plural(n: int, word: str) -> str:
    """A count and its noun, as a log line says it: "1 document", "2,048 documents"."""
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def duration(seconds: float) -> str:
    """M:SS, H:MM:SS from an hour on, "N days H:MM:SS" from a day on; whole seconds (rounded
    first, so never 0:60)."""
    s = max(0, round(seconds))
    d, h, m, s = s // 86400, s // 3600 % 24, s // 60 % 60, s % 60
    days = f"{plural(d, 'day')} " if d else ""
    return f"{days}{h}:{m:02d}:{s:02d}" if d or h else f"{m}:{s:02d}"


class _Ticker:
    """Says line() through a channel now and every channel interval after, from a thread: a
    stage inside one long call (a compile, a generation loop) still shows it is alive."""

    def __init__(self, channel: Channel | None, line: Callable[[], str], first: str = "") -> None:
        self.channel, self.line, self.first = channel, line, first
        self.stop, self.thread = threading.Event(), None
        if channel is not None and channel.stream is not None:
            self.thread = threading.Thread(target=self._run, daemon=True)
            self.thread.start()

    def _run(self) -> None:
        self.channel.say(self.first or self.line())
        while not self.stop.wait(self.channel.every_s):
            self.channel.say(self.line())

    def close(self) -> None:
        if self.thread is not None:
            self.stop.set()
            self.thread.join()


class Meter:
    """Work of a known size (windows, items) for a person watching: on a terminal (stderr a
    TTY, no channel) a tqdm bar; with a channel a line at the start and every channel interval,
    compiles included; in the log (stdout) a line every log_every_s. A line: done/total, rate,
    ETA."""

    def __init__(self, what: str, total: int, channel: Channel | None, log_every_s: float = 5.0,
                 tty: bool | None = None) -> None:  # fmt: skip
        self.what, self.total, self.done, self.log_every_s = what, total, 0, log_every_s
        self.t0 = self.logged = time.monotonic()
        self.bar = None
        if channel is None and (sys.stderr.isatty() if tty is None else tty):
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=what, leave=False)
        self.ticker = _Ticker(channel, self.line)

    def rate(self) -> float:
        return self.done / max(time.monotonic() - self.t0, 1e-9)

    def line(self) -> str:
        rate = self.rate()
        if not self.done:
            return f"{self.what}: 0/{self.total:,}, {duration(time.monotonic() - self.t0)} in"
        eta = duration((self.total - self.done) / rate)
        return f"{self.what}: {self.done:,}/{self.total:,} ({rate:,.1f}/s, ETA {eta})"

    def update(self, done: int) -> None:
        self.done = done
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
            return
        now = time.monotonic()
        if now - self.logged >= self.log_every_s or done == self.total:
            self.logged = now
            print(self.line(), flush=True)

    def close(self) -> None:
        self.ticker.close()
        if self.ticker.channel is not None:
            self.ticker.channel.say(self.line())
        if self.bar is not None:
            self.bar.close()


@contextlib.contextmanager
def busy(what: str, channel: Channel | None, log: Callable[[str], None]) -> Iterator[None]:
    """A step of unknown length (loading, compiling, generating): its start and its seconds in
    the log, and through the channel its start, then every channel interval how long it runs."""
    t0 = time.monotonic()
    log(f"{what} ...")
    ticker = _Ticker(channel, lambda: f"{what}: {duration(time.monotonic() - t0)} so far",
                     f"{what} ...")  # fmt: skip
    try:
        yield
    finally:
        ticker.close()
    log(f"{what}: done in {time.monotonic() - t0:.1f} s")
    if channel is not None:
        channel.say(f"{what}: done in {duration(time.monotonic() - t0)}")


def add_arguments(parser: argparse.ArgumentParser, stage: str) -> None:
    parser.add_argument(
        "--progress-fd",
        type=int,
        help="also write a progress line every 10 s to this file descriptor (the workflow: "
        "snakemake's terminal, while stdout and stderr go to the log)",
    )
    parser.add_argument(
        "--progress-label", default=stage, help="what the progress lines begin with"
    )


def from_args(args: argparse.Namespace) -> Channel | None:
    return None if args.progress_fd is None else Channel(args.progress_fd, args.progress_label)
