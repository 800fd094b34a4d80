"""benchmarks/gpu_check.py without a GPU: its command line refuses bad arguments, and its rows
run on a CPU as --cpu runs them (on a GPU: bash benchmarks/gpu_check.sh)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_an_unknown_row_is_refused_naming_the_rows_before_any_work() -> None:
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--cpu", "--only",
         "float32,flaot32"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert "--only float32,flaot32: no row flaot32; the rows: workflow,float32,attention," in (
        r.stderr
    )
    assert "Traceback" not in r.stderr and "work files" not in r.stdout


@pytest.mark.slow
def test_the_attention_row_runs_on_a_cpu() -> None:
    # Its GPU form differs only in the pair compared (cuDNN's against XLA's): a row that
    # cannot run on a CPU (a NameError, once) would fail on the first GPU too.
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--cpu", "--only",
         "attention"],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    row = next(line for line in r.stdout.splitlines() if line.startswith("attention"))
    assert " ok " in row and "xla against einsum (--cpu: cuDNN needs a GPU), bfloat16" in row
