"""Progress for a person watching, one Meter for every stage: a tqdm bar on a terminal, lines
in the log, and with --progress-fd labelled lines to Snakemake's terminal (a Channel: the rule
passes fd 3, the job's stderr before its redirection to the log). Best effort: a channel that
fails stops, and the stage goes on. Counts in words: plural, duration.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import select
import sys
import threading
import time
from collections.abc import Callable, Iterator

# poll's events on which a write does not wait: room, or an error the write then raises.
WRITE_NOW = select.POLLOUT | select.POLLERR | select.POLLHUP | select.POLLNVAL


class Channel:
    """A line every `every_s` seconds (when due) to fd, each prefixed with label. A write never
    waits: a line the fd cannot take now (its reader stopped reading) is dropped."""

    def __init__(self, fd: int | None, label: str, every_s: float = 10.0) -> None:
        self.fd, self.label, self.every_s, self.last = fd, label, every_s, -math.inf
        self.open, self.dropped = False, 0
        if fd is not None:
            try:
                os.fstat(fd)
                self.open = True
            except OSError:  # not open in this process: the log has it all
                pass

    def due(self) -> bool:
        return self.open and time.monotonic() - self.last >= self.every_s

    def say(self, text: str) -> None:
        if not self.open:
            return
        self.last = time.monotonic()
        # At most PIPE_BUF bytes, written only when poll says the fd takes them: one write
        # that cannot block (setting O_NONBLOCK would change the fd for snakemake too).
        line = f"{self.label}: {text}"[: select.PIPE_BUF // 4 - 1] + "\n"
        poll = select.poll()
        poll.register(self.fd, select.POLLOUT)
        try:
            if not any(events & WRITE_NOW for _, events in poll.poll(0)):
                self.dropped += 1
                if self.dropped == 1:
                    _note(f"progress lines to fd {self.fd}: dropped while nobody reads them")
                return
            os.write(self.fd, line.encode("utf-8", "replace"))
        except OSError as e:  # a channel for a person, not the stage's work
            self.open = False
            _note(f"progress lines to fd {self.fd} stopped: {e}")


def _note(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def plural(n: int, word: str) -> str:
    """A count and its noun, as a log line says it: "1 document", "2,048 documents"."""
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def duration(seconds: float) -> str:
    """M:SS, H:MM:SS from an hour on, "N days H:MM:SS" from a day on; whole seconds (rounded
    first, so never 0:60); "?" for a time that is not finite (a rate of 0, a peak of 1e-300)."""
    if not math.isfinite(seconds):
        return "?"
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
        if channel is not None and channel.open:
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
    """Work of a known size (total) or of unknown size (None), one output per place: on a
    terminal (stderr a TTY, no channel) a tqdm bar; through a channel a line at the start and
    every channel interval (from a thread: a compile shows too) and one at close; in the log
    (log, default stdout) a line every log_every_s (None: the stage logs its own). A line is
    text(meter), by default done/total, rate and ETA. add() may be called from threads."""

    def __init__(
        self,
        what: str,
        total: int | None,
        channel: Channel | None,
        log_every_s: float | None = 5.0,
        tty: bool | None = None,
        *,
        unit: str = "it",
        scale: bool = False,
        initial: int = 0,
        leave: bool = False,
        log: Callable[[str], None] | None = None,
        text: Callable[[Meter], str] | None = None,
        ended: Callable[[Meter], bool] | None = None,
    ) -> None:
        self.what, self.total, self.channel, self.log_every_s = what, total, channel, log_every_s
        self.done = self.base = initial  # base: done without work here (resumed, present)
        self.note, self.eta_s, self.lock, self.closed = "", None, threading.RLock(), False
        self.log = log or (lambda line: print(line, flush=True))
        self.text = text or Meter.counts
        self.ended = ended or (lambda m: m.done == m.total)  # the log's last line is due
        self.t0 = self.logged = time.monotonic()
        self.bar = None
        if channel is None and (sys.stderr.isatty() if tty is None else tty):
            from tqdm import tqdm

            self.bar = tqdm(
                total=total, initial=initial, desc=what, unit=unit, unit_scale=scale, leave=leave
            )
        self.ticker = _Ticker(channel, self.line)

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def rate(self) -> float:
        """Units per second of the work done here since the meter started."""
        return (self.done - self.base) / max(self.elapsed(), 1e-9)

    def eta(self) -> str:
        """What is left at the rate so far (or the eta_s given with the last update)."""
        if self.eta_s is not None:
            return duration(self.eta_s)
        rate = self.rate()
        return duration((self.total - self.done) / rate) if self.total and rate > 0 else "?"

    def counts(self) -> str:
        of = "" if self.total is None else f"/{self.total:,}"
        if self.done == self.base:
            return f"{self.what}: {self.done:,}{of}, {duration(self.elapsed())} in"
        eta = "" if self.total is None else f", ETA {self.eta()}"
        return f"{self.what}: {self.done:,}{of} ({self.rate():,.1f}/s{eta})"

    def line(self) -> str:
        with self.lock:
            return self.text(self)

    def update(self, done: int, note: str | None = None, eta_s: float | None = None) -> None:
        """done so far (note: what the bar and text show beside it, eta_s: the stage's own)."""
        with self.lock:
            self.done, self.eta_s = done, eta_s
            self.note = self.note if note is None else note
            if self.bar is not None:
                self.bar.update(done - self.bar.n)
                if note:
                    self.bar.set_postfix_str(note, refresh=False)
                return
            now = time.monotonic()
            due = self.log_every_s is not None and now - self.logged >= self.log_every_s
            if due or (self.log_every_s is not None and self.ended(self)):
                self.logged = now
                self.log(self.line())

    def add(self, n: int, note: str | None = None) -> None:
        with self.lock:
            self.update(self.done + n, note)

    def skip(self, n: int) -> None:
        """n more done without work here (resumed, already present): not in the rate."""
        with self.lock:
            self.base += n
            self.done += n
            if self.bar is not None:
                self.bar.update(n)

    def say(self, msg: str, channel: bool = False) -> None:
        """A message of its own: above the bar (which stays at the bottom), else in the log;
        with channel=True also through the channel."""
        with self.lock:
            if self.bar is not None:
                self.bar.write(msg, file=sys.stderr)
            else:
                self.log(msg)
            if channel and self.channel is not None:
                self.channel.say(msg)

    def close(self, final: str | None = None) -> None:
        """Stop (once; leaving a with block closes too); the channel gets final, or the last
        line."""
        if self.closed:
            return
        self.closed = True
        self.ticker.close()
        if self.channel is not None:
            self.channel.say(final or self.line())
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> Meter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def steps(total: int, start: int, channel: Channel | None, show: bool = True) -> Meter:
    """Training's meter: step/total, the note (loss, tokens/s) and the ETA its updates give
    (from the step time: compiles are not steps); nothing where show is False (a process of a
    multi-process job but the first). update(step + 1, note, eta_s) after each step."""

    def text(m: Meter) -> str:
        if not m.note:
            return f"step {m.done}/{m.total}, {duration(m.elapsed())} in"
        return f"step {m.done}/{m.total}, {m.note}, ETA {m.eta()}"

    return Meter(
        "train",
        total,
        channel if show else None,
        None,
        None if show else False,
        unit="step",
        initial=start,
        leave=True,
        text=text,
    )


@contextlib.contextmanager
def busy(what: str, channel: Channel | None, log: Callable[[str], None]) -> Iterator[None]:
    """A step of unknown length (loading, compiling, generating): its start and its seconds in
    the log, and through the channel its start, then every channel interval how long it runs."""
    t0 = time.monotonic()
    log(f"{what} ...")
    ticker = _Ticker(
        channel, lambda: f"{what}: {duration(time.monotonic() - t0)} so far", f"{what} ..."
    )
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
