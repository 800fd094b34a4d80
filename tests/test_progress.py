"""Progress lines for a person watching: a channel that fails stops; the stage goes on."""

from __future__ import annotations

import math
import os
import re
import threading
import time

import pytest

from nanogptx import progress


def test_a_progress_channel_writes_labelled_lines_when_due_and_stops_when_it_fails(
    capsys: pytest.CaptureFixture[str],
) -> None:
    r, w = os.pipe()
    channel = progress.Channel(w, "train tiny (log x.log)", every_s=3600)
    assert channel.due()
    channel.say("step 1/10")
    assert not channel.due()  # the next line only after every_s
    assert os.read(r, 100) == b"train tiny (log x.log): step 1/10\n"
    os.close(r)  # nobody reads any more: writing fails (EPIPE), and the channel stops
    channel.say("step 2/10")
    assert not channel.due()
    channel.say("step 3/10")  # nothing more, no error
    assert f"progress lines to fd {w} stopped" in capsys.readouterr().err
    os.close(w)
    assert not progress.Channel(9999, "x").open  # not open here: no channel, no error


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0, "0:00"), (59.4, "0:59"), (59.6, "1:00"), (119.7, "2:00"), (3599.5, "1:00:00"),
     (3725, "1:02:05"), (86_400, "1 day 0:00:00"), (56_360_761, "652 days 7:46:01"),
     (math.inf, "?"), (math.nan, "?")],
)  # fmt: skip
def test_a_duration_is_whole_seconds_never_sixty(seconds: float, shown: str) -> None:
    assert progress.duration(seconds) == shown


def test_a_meter_and_a_busy_step_tell_the_channel_while_the_work_is_inside_one_call(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Sample and eval: a line at the start and every channel interval, from a thread, so a
    long compile or generation shows too (they printed nothing for up to half a minute)."""
    r, w = os.pipe()
    channel = progress.Channel(w, "eval t", every_s=0.05)
    meter = progress.Meter("val_loss windows", 40, channel, tty=False)
    time.sleep(0.2)  # inside a compile: no update yet
    meter.update(40)
    meter.close()
    with progress.busy("compiling the generation loop", channel, print):
        time.sleep(0.2)
    os.close(w)
    lines = os.read(r, 100_000).decode().splitlines()
    step = lines.index("eval t: compiling the generation loop ...")
    meter_lines, busy_lines = lines[:step], lines[step + 1 :]
    assert meter_lines[0] == "eval t: val_loss windows: 0/40, 0:00 in"
    assert len(meter_lines) >= 3 and meter_lines[-1].startswith("eval t: val_loss windows: 40/40")
    assert busy_lines[0] == "eval t: compiling the generation loop: 0:00 so far"
    assert busy_lines[-1] == "eval t: compiling the generation loop: done in 0:00"
    out = capsys.readouterr().out  # the log: the meter's lines and the step's start and end
    assert re.search(r"val_loss windows: 40/40 \([\d.,]+/s, ETA 0:00\)", out)
    assert re.search(r"compiling the generation loop: done in 0\.\d s", out)


def test_a_meter_on_a_terminal_is_a_tqdm_bar(capsys: pytest.CaptureFixture[str]) -> None:
    meter = progress.Meter("hellaswag items", 8, None, tty=True)
    meter.update(4)
    meter.close()
    captured = capsys.readouterr()
    assert "hellaswag items:" in captured.err and captured.out == ""


def test_trainings_meter_says_steps_loss_and_its_eta_never_sixty_seconds() -> None:
    """progress.steps, the meter training adopts: a line before the first step (a compile),
    then the step, the trainer's note and its ETA (one step left at 59.7 s a step: 'ETA 1:00',
    where train once printed 'ETA 0:60'); the steps a run resumed from are not in its rate."""
    r, w = os.pipe()
    watch = progress.steps(10, 4, progress.Channel(w, "train t", every_s=3600))
    assert watch.rate() == 0.0
    watch.update(9, "loss 1.5000, 1,000 tok/s", eta_s=59.7)
    watch.close()
    os.close(w)
    assert os.read(r, 1000).decode().splitlines() == [
        "train t: step 4/10, 0:00 in",
        "train t: step 9/10, loss 1.5000, 1,000 tok/s, ETA 1:00",
    ]
    quiet = progress.steps(10, 0, progress.Channel(w, "train t"), show=False)  # process 1 of 2
    assert quiet.channel is None and quiet.bar is None


def test_a_meter_of_unknown_size_logs_its_stages_words_and_ends_with_its_last(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """As prepare uses it: tokens of a size nobody knows beforehand, its own line (text), the
    documents as the note, lines in its log, and a last line through the channel."""
    r, w = os.pipe()
    logged: list[str] = []

    def text(m: progress.Meter) -> str:
        return progress.plural(m.done, "token") + (f", {m.note}" if m.note else "")

    channel = progress.Channel(w, "prepare d", every_s=3600)
    with progress.Meter("prepare", None, channel, 0.0, unit="tok", log=logged.append,
                        text=text) as meter:  # fmt: skip
        meter.add(1000, "1 document")
        meter.add(500, "2 documents")
        meter.say("a message")
        meter.close("1,500 tokens; writing the manifest")  # leaving the block: nothing more
    os.close(w)
    assert logged == ["1,000 tokens, 1 document", "1,500 tokens, 2 documents", "a message"]
    assert os.read(r, 1000).decode().splitlines() == [
        "prepare d: 0 tokens",
        "prepare d: 1,500 tokens; writing the manifest",
    ]
    assert capsys.readouterr() == ("", "")


def test_a_plan_at_a_peak_too_small_for_a_float_warns_instead_of_crashing() -> None:
    """train.peak_flops = 1e-320 is > 0, so allowed; the time at that peak overflows to inf, and
    the long-plan warning (printed before anything compiles) raised OverflowError."""
    from nanogptx import config, logbook

    cfg = config.load(None, ["train.max_iters=2", "train.peak_flops=1e-320"])
    warning = logbook.long_plan(cfg, 2, 4e7, cfg.train.peak_flops, 1, "train.peak_flops")
    assert "FLOPs: at least ? on 1 device" in warning


def test_a_meter_closes_at_once_when_nobody_reads_its_channel(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A channel whose reader stopped reading (a full pipe, a terminal paused with Ctrl-S)
    blocked the stage's writes, and Meter.close waited on them: its lines are dropped."""
    r, w = os.pipe()
    meter = progress.Meter("work", 10**6, progress.Channel(w, "t", every_s=0), None, tty=False)

    def work() -> None:
        for _ in range(5_000):  # more than a pipe holds (64 KiB on Linux)
            meter.add(1)
            meter.channel.say(f"{meter.line()} {'x' * 100}")
        meter.close()

    done = threading.Thread(target=work, daemon=True)
    try:
        done.start()
        done.join(timeout=20)
        assert not done.is_alive(), "the meter waited on a pipe nobody reads"
    finally:
        os.close(r)  # a write still waiting (before the fix) fails now, and the thread ends
        done.join(timeout=60)
        os.close(w)
    assert meter.closed and meter.channel.dropped > 0
    assert capsys.readouterr().err.count(f"progress lines to fd {w}: dropped") == 1
