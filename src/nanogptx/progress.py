"""Progress lines for a person watching the workflow. A stage that Snakemake runs writes its full
log to a file; with --progress-fd it also writes a line every few seconds, its label first, to
that file descriptor (the rule passes fd 3: the job's stderr before the redirection to the log,
that is the terminal of `snakemake`, or a SLURM job's output). Best effort: a channel that fails
stops, and the stage goes on."""

from __future__ import annotations

import argparse
import math
import os
import sys
import time


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
