# Helpers of the workflow: the runs, their resolved configs, and the paths they map to.
# Only nanogptx.config (standard library) is imported here: parsing stays fast.

import hashlib
import os
import re
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from nanogptx import config as nconfig

validate(config, "../schemas/config.schema.yaml")


def _runs(value):
    """config runs: a list, or a string of comma-separated names (--config runs=a,b)."""
    names = value if isinstance(value, list) else str(value).split(",")
    return [n.strip() for n in names if n.strip()]


RUNS = _runs(config["runs"])
# The mirror reaches download through the environment, not a param: where the bytes come from
# changes nothing (they are hash-checked), so switching mirrors must not rerun anything.
os.environ.update(NANOGPTX_MIRROR=config["mirror"])
DATA = config["paths"]["data"]
RESULTS = config["paths"]["results"]
LOCK = config["paths"]["lock"]
LOGS = f"{RESULTS}/logs"
BENCH = f"{RESULTS}/benchmarks"


def _load_run(run):
    path = Path("config") / f"{run}.toml"
    if not path.is_file():
        known = sorted(p.stem for p in Path("config").glob("*.toml"))
        raise WorkflowError(
            f"run {run!r}: no file {path}; runs in config/: {', '.join(known)}"
        )
    try:
        return nconfig.load(path)
    except nconfig.ConfigError as e:
        raise WorkflowError(f"run {run!r}: {e}")


CFG = {run: _load_run(run) for run in RUNS}
# Runs with equal data and tokenizer settings share one prepared dataset.
DATA_RUN = {nconfig.data_id(cfg): run for run, cfg in reversed(CFG.items())}


wildcard_constraints:
    run="|".join(map(re.escape, RUNS)) or "NO_RUN",
    dataset="[A-Za-z0-9._-]+",
    data_id="[A-Za-z0-9._-]+",


def run_config(run):
    return f"config/{run}.toml"


def raw_provenance(run):
    return f"{DATA}/raw/{CFG[run].data.dataset}/provenance.json"


def prepared_dir(run):
    return f"{DATA}/prepared/{nconfig.data_id(CFG[run])}"


# The modules each stage runs: editing one reruns that stage (and, through its outputs, the
# stages after it). Editing only sample.py reruns only sampling.
STAGE_CODE = {
    "download": ["download.py", "datasets.py", "provenance.py"],
    "prepare": ["prepare.py", "readers.py", "tokenizer.py", "provenance.py"],
    "train": ["train.py", "model.py", "loader.py", "checkpoint.py", "provenance.py"],
    "sample": [
        "sample.py",
        "model.py",
        "tokenizer.py",
        "checkpoint.py",
        "provenance.py",
    ],
}
SRC = Path(workflow.basedir) / "src" / "nanogptx"
# Rules run the stages of this checkout whichever Python environment runs them: the one
# nanogptx is pip-installed in, or the conda environment of workflow/envs with --sdm conda.
os.environ.update(
    PYTHONPATH=os.pathsep.join(
        filter(None, [str(SRC.parent), os.environ.get("PYTHONPATH")])
    )
)


def code_hash(stage):
    """sha256 of the source of the modules a stage runs (params: a change reruns it)."""
    h = hashlib.sha256()
    for name in STAGE_CODE[stage]:
        path = SRC / name
        h.update(name.encode() + b"\0" + (path.read_bytes() if path.exists() else b""))
    return h.hexdigest()


def stage_hash(run, stage):
    """sha256 of the config sections a stage reads: a change reruns the stage (params)."""
    return nconfig.section_hash(CFG[run], nconfig.STAGE_SECTIONS[stage])


def allow_unverified_arg(dataset):
    allow = any(
        c.data.allow_unverified for c in CFG.values() if c.data.dataset == dataset
    )
    return "data.allow_unverified=true" if allow else ""


def srun_prefix(wildcards, resources, threads):
    """Start a train job of several tasks as that many JAX processes, one per task, under srun
    (they join with jax.distributed; the SLURM profile sets tasks and mpi); one task: nothing.
    """
    tasks = resources.get("tasks", 1)
    if tasks <= 1:
        return ""
    if resources.get("mpi") != "srun":
        raise WorkflowError(
            f"train_run: tasks={tasks} needs mpi=srun as well, so that the SLURM executor lets"
            " this job start its own tasks (profiles/slurm/profile.yaml shows both)"
        )
    return f"srun --ntasks={tasks} --cpus-per-task={threads} --kill-on-bad-exit=1 "
