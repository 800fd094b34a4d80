"""Progress lines for a person watching: a channel that fails stops; the stage goes on."""

from __future__ import annotations

import os
import re
import time

import pytest

from nanogptx import logbook, progress


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
    assert progress.Channel(9999, "x").stream is None  # not open here: no channel, no error


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0, "0:00"), (59.4, "0:59"), (59.6, "1:00"), (119.7, "2:00"), (3599.5, "1:00:00"),
     (3725, "1:02:05"), (86_400, "1 day 0:00:00"), (56_360_761, "652 days 7:46:01")],
)  # fmt: skip
def test_a_duration_is_whole_seconds_never_sixty(seconds: float, shown: str) -> None:
    assert progress.duration(seconds) == shown


def test_trainings_eta_never_reads_sixty_seconds() -> None:
    """One step left at 59.7 s a step: 'ETA 1:00' (it printed 'ETA 0:60')."""
    r, w = os.pipe()
    watch = logbook.Progress(10, 0, progress.Channel(w, "train t"))
    watch.update(8, 1.5, 1000.0, 59.7)
    os.close(w)
    assert os.read(r, 200).decode().endswith("ETA 1:00\n")


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
