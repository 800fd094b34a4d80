"""Progress lines for a person watching: a channel that fails stops; the stage goes on."""

from __future__ import annotations

import os

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
    assert progress.Channel(9999, "x").stream is None  # not open here: no channel, no error
