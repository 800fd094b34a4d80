# Helpers of the workflow: the runs, their resolved configs and the paths they map to, the
# params every stage rule declares (stage_params), the eval tasks' inputs and the targets of
# STAGES (in the Snakefile). The nanogptx modules imported here (config, datasets, evaltasks,
# provenance, stagecode, sweep) use the standard library only, so parsing never imports JAX.

import dataclasses
import functools
import hashlib
import json
import os
import re
import shlex
import urllib.parse
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from nanogptx import config as nconfig
from nanogptx import datasets, evaltasks, provenance, stagecode
from nanogptx import sweep as nsweep

try:  # one line for what is wrong (not Snakemake's dump of the whole schema)
    nconfig.check_workflow(
        config, Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml"
    )
except nconfig.ConfigError as e:
    raise WorkflowError(str(e))
validate(config, "../schemas/config.schema.yaml")


def _runs(value):
    """config runs: a list, or a string of comma-separated names (--config runs=a,b); each name
    checked, so that it is safe as a path and a shell word, each once."""
    try:
        return nconfig.run_names(value)
    except nconfig.ConfigError as e:
        raise WorkflowError(f"config runs: {e}")


def _sweep(name):
    """Sweep `name` (config/sweeps/NAME.toml): its runs {run: overrides}, base and axes."""
    try:
        s = nsweep.load(name)
        return nsweep.expand(s), s.base, nsweep.keys(s)
    except nconfig.ConfigError as e:
        raise WorkflowError(f"config sweep: {e}")


# --config sweep=NAME: the runs are the sweep's points (the base run's file plus overrides).
SWEEP = config.get("sweep", "")
POINTS, SWEEP_BASE, SWEEP_AXES = _sweep(SWEEP) if SWEEP else ({}, None, [])
RUNS = list(POINTS) if SWEEP else _runs(config["runs"])
# The report's captions name the runs of this invocation (a sweep's points too) as words.
config["run_names"] = ", ".join(RUNS)
# The mirror reaches download through the environment, not a param: where the bytes come from
# changes nothing (they are hash-checked), so switching mirrors must not rerun anything.
os.environ.update(NANOGPTX_MIRROR=config["mirror"])
DATA = config["paths"]["data"]
RESULTS = config["paths"]["results"]
LOCK = config["paths"]["lock"]
LOGS = f"{RESULTS}/logs"
BENCH = f"{RESULTS}/benchmarks"


def run_config(run):
    return f"config/{SWEEP_BASE if run in POINTS else run}.toml"


def _load_run(run):
    path = Path(run_config(run))
    if not path.is_file():
        known = sorted(p.stem for p in Path("config").glob("*.toml"))
        raise WorkflowError(
            f"run {run!r}: no file {path}; runs in config/: {', '.join(known)}"
        )
    try:
        return nconfig.load(path, POINTS.get(run, []))
    except nconfig.ConfigError as e:
        raise WorkflowError(f"run {run!r}: {e}")


CFG = {run: _load_run(run) for run in RUNS}
# Runs with equal data and tokenizer settings share one prepared dataset.
DATA_RUN = {nconfig.data_id(cfg): run for run, cfg in reversed(CFG.items())}


wildcard_constraints:
    run="|".join(map(re.escape, RUNS)) or "NO_RUN",
    dataset="[A-Za-z0-9._-]+",
    data_id="[A-Za-z0-9._-]+",


def run_overrides(run):
    """A sweep point's settings as section.key=value arguments of the stages (else none)."""
    return shlex.join(POINTS.get(run, []))


def raw_provenance(run):
    return f"{DATA}/raw/{CFG[run].data.dataset}/provenance.json"


def _dataset(name):
    try:
        return datasets.get(name)
    except (datasets.UnknownDataset, datasets.RegistryError) as e:
        raise WorkflowError(str(e))


def dataset_entry(wildcards):
    """A param of download: the dataset's registry entry (its file's sha256, and the files a
    local_dir holds). Editing one dataset's entry reruns its download and, through it, the
    stages of the runs that use it; no other run's."""
    files = [f.url for f in _dataset(wildcards.dataset).files]
    text = (
        datasets.entry_file(wildcards.dataset).read_bytes() + "\n".join(files).encode()
    )
    return hashlib.sha256(text).hexdigest()


LOCAL_SHA256 = Path(DATA) / "raw" / f"{provenance.MARKER}local-sha256.json"


def local_files(wildcards):
    """A param of download: "path sha256" of each of the dataset's files on disk (file: URLs,
    local_dir). An edit of one reruns the download; a new modification time of the same bytes
    (a copy, a checkout, touch) reruns nothing, as it would as an input. The sha256 are kept in
    LOCAL_SHA256 by path, size, modification and status change times and inode: a file is read
    again only when one of these changes."""
    paths = [
        urllib.parse.unquote(urllib.parse.urlsplit(f.url).path)
        for f in _dataset(wildcards.dataset).files
        if f.local
    ]
    return [f"{p} {_content_sha256(p)}" for p in paths]


def _content_sha256(path):
    try:
        st = os.stat(path)
    except OSError as e:
        raise WorkflowError(f"dataset file on disk {path}: {e.strerror}")
    # The status change time too: other bytes with the modification time put back (tar
    # --overwrite of an archive with fixed times) keep size, mtime and inode, never ctime.
    key = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
    try:
        cache = json.loads(LOCAL_SHA256.read_text())
    except (OSError, ValueError):
        cache = {}  # none yet, or damaged: the files are hashed again
    cache = cache if isinstance(cache, dict) else {}
    entry = cache.get(path)
    if isinstance(entry, dict) and entry.get("stat") == key:
        return entry.get("sha256")
    cache[path] = {"stat": key, "sha256": provenance.sha256_file(path)}
    provenance.write_json_atomic(LOCAL_SHA256, cache)
    return cache[path]["sha256"]


def prepared_dir(run):
    return f"{DATA}/prepared/{nconfig.data_id(CFG[run])}"


def init_weights(run):
    """Train's pretrained weights: a named checkpoint's download (its provenance, whose
    sha256 record changes when the file does), or a directory's two files; none from scratch.
    """
    init = CFG[run].model.init_from
    if init == "scratch":
        return []
    if nconfig.init_dataset(init):
        return [f"{DATA}/raw/{nconfig.init_dataset(init)}/provenance.json"]
    if Path(init).resolve().is_relative_to(Path(RESULTS, run).resolve()):
        raise WorkflowError(
            f"run {run!r}: model.init_from = {init!r} lies in the run's own results "
            f"({RESULTS}/{run}): a run cannot start from its own outputs (each export would "
            "train it again from the last); start from a copy, or from another run's"
        )
    return [f"{init}/config.json", f"{init}/model.safetensors"]


def init_arg(wildcards, input):
    """--init DIR for a pretrained model.init_from (the directory holding its weights)."""
    if not input.init:
        return ""
    return f"--init {shlex.quote(str(Path(input.init[0]).parent))}"


def eval_tasks(run):
    """The registry entries of the tasks a run's eval.tasks runs (a group's members)."""
    try:
        return [evaltasks.get(name) for name in evaltasks.expand(CFG[run].eval.tasks)]
    except evaltasks.TaskError as e:
        raise WorkflowError(f"run {run!r}: eval.tasks: {e}")


def eval_datasets(run):
    """The registry datasets that a run's eval tasks read, each once."""
    tasks = eval_tasks(run)
    return list(
        dict.fromkeys(t.options["dataset"] for t in tasks if t.input == "dataset")
    )


def eval_inputs(run):
    """What the eval tasks of a run read beyond the model: the prepared data (the tasks whose
    kind reads it), the downloads of the registry datasets they read."""
    out = {}
    if any(t.input == "prepared" for t in eval_tasks(run)):
        out["data"] = prepared_dir(run)
    if names := eval_datasets(run):
        out["datasets"] = [f"{DATA}/raw/{name}/provenance.json" for name in names]
    return out


def downloads(run):
    """What the download target fetches for a run: its dataset, its pretrained weights (a named
    checkpoint's download, or a directory's files) and the datasets its eval tasks read.
    """
    return [
        raw_provenance(run),
        *init_weights(run),
        *eval_inputs(run).get("datasets", []),
    ]


def eval_args(wildcards, input):
    """--data DIR and --dataset NAME=DIR of the eval stage, from its inputs."""
    args = ["--data", input.data] if "data" in input.keys() else []
    for name in eval_datasets(wildcards.run):
        args += ["--dataset", f"{name}={DATA}/raw/{name}"]
    return shlex.join(args)


def task_entries(wildcards):
    """A param of eval: the sha256 of the registry files of the tasks of the run. Editing the file
    of a task reruns the evaluations of the runs that use it, and no others."""
    h = hashlib.sha256()
    tasks = CFG[wildcards.run].eval.tasks  # a group, and its members
    for name in dict.fromkeys([*tasks, *evaltasks.expand(tasks)]):
        h.update(f"{name}\0".encode() + evaltasks.entry_file(name).read_bytes())
    return h.hexdigest()


SRC = Path(workflow.basedir) / "src" / "nanogptx"
# Rules run the stages of this checkout whichever Python environment runs them: the one
# nanogptx is pip-installed in, or the conda environment of workflow/envs with --sdm conda.
os.environ.update(
    PYTHONPATH=os.pathsep.join(
        filter(None, [str(SRC.parent), os.environ.get("PYTHONPATH")])
    )
)


def code_hash(module):
    """sha256 of the source of the modules a stage runs (params: editing one reruns the stage,
    and through its outputs the stages after it)."""
    h = hashlib.sha256()
    for name in stagecode.stage_modules(module, SRC):
        h.update(name.encode() + b"\0" + (SRC / name).read_bytes())
    return h.hexdigest()


@functools.cache
def _settings(run):
    """{"train.learning_rate": "train.learning_rate=0.001", ...} of a run's resolved config."""
    items = nconfig.settings(CFG[run], nconfig.SECTIONS)
    return {item.split("=", 1)[0]: item for item in items}


def setting_params(stage, run_of=lambda w: w.run):
    """One param per config key that a stage reads, "section.key=value": a change reruns the
    stage, and Snakemake's reason names the key with its values before and now. run_of gives a
    run whose settings the job's are (prepare: any run of its data id)."""
    keys = [
        f"{name}.{f.name}"
        for name in nconfig.STAGE_SECTIONS[stage]
        for f in dataclasses.fields(nconfig.SECTIONS[name])
    ]
    keys = [k for k in keys if stage != "prepare" or k not in nconfig.NOT_DATA_IDENTITY]
    return {
        key.replace(".", "__"): lambda w, key=key: _settings(run_of(w))[key]
        for key in keys
    }


def stage_params(stage, run_of=lambda w: w.run, run_file=True):
    """The params that decide when a stage reruns, declared the same way for every stage: one
    per config key it reads (setting_params; none for a stage that reads no section), with
    run_file the run's config file and sweep overrides it is called with, and the sha256 of the
    code it runs (code_hash). Its rule adds only paths and derived params."""
    params = {}
    if stage in nconfig.STAGE_SECTIONS:
        params.update(setting_params(stage, run_of))
    if run_file:
        params.update(
            config=lambda w: run_config(w.run), overrides=lambda w: run_overrides(w.run)
        )
    return {**params, "code": code_hash(stage)}


def prepare_args(wildcards, input):
    """The data settings as section.key=value arguments of the prepare stage (a derived param,
    since it takes `input`: the per-key params are what Snakemake compares)."""
    return shlex.join(nconfig.data_settings(CFG[DATA_RUN[wildcards.data_id]]))


def checkpoint_dir(wildcards, input):
    """A run's checkpoints, named by what a resume must share (config.checkpoint_id): a longer
    max_iters or a logging edit resumes there; a model or optimizer edit starts afresh. (Derived,
    as it takes `input`: it follows from the settings, which the per-key params compare.)
    """
    return f"{RESULTS}/{wildcards.run}/checkpoints/{nconfig.checkpoint_id(CFG[wildcards.run])}"


def allow_unverified_arg(wildcards, input):
    """data.allow_unverified=true if a selected run of the dataset allows it. A derived param
    (it takes `input`), so not compared: it changes no downloaded byte, and which runs are
    selected must not rerun a download."""
    allow = any(
        c.data.allow_unverified
        for c in CFG.values()
        if c.data.dataset == wildcards.dataset
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


def _progress(stage, run):
    label = f"{stage} {run} (log {LOGS}/{stage}/{run}.log)"
    return f"--progress-fd 3 --progress-label {shlex.quote(label)}"


def progress_args(wildcards, resources, threads):
    """train's progress lines to fd 3 (the job's stderr), except for tasks srun starts: fd 3
    there is not the job's (srun passes on stdin, stdout and stderr only)."""
    if srun_prefix(wildcards, resources, threads):
        return ""
    return _progress("train", wildcards.run)


def stage_progress(stage):
    """A param of sample and eval: their progress lines to fd 3, as train's (derived, as it
    takes `input`: how a job talks to the terminal never reruns it)."""
    return lambda wildcards, input: _progress(stage, wildcards.run)


def sweep_name(runs):
    """The sweep report's file name: the runs' names joined while short, else their count and
    a hash of the list (a file name may hold 255 bytes; a long sweep passes that); for
    --config sweep=NAME, the sweep's name (cut, with a hash, where long)."""
    digest = lambda text: hashlib.sha256(text.encode()).hexdigest()[:10]
    if SWEEP:
        return (
            f"sweep-{SWEEP}"
            if len(SWEEP) <= 80
            else f"sweep-{SWEEP[:60]}-{digest(SWEEP)}"
        )
    joined = "+".join(runs)
    if len(joined) <= 80:
        return joined
    return f"{len(runs)}-runs-{digest(joined)}"


def of_run(pattern):
    """A stage's outputs of a run: a rule's output pattern with the run filled in."""
    return lambda run: expand(pattern, run=run)


def target(*stages):
    """What `snakemake STAGE` asks for: the stage's outputs of every run (STAGES, in the
    Snakefile), and what the target of the stage before it asks for; of several stages, all of
    it, each file once."""
    files = []
    for stage in stages:
        before, outputs, _ = STAGES[stage]
        files += [
            *(target(before) if before else []),
            *(f for r in RUNS for f in outputs(r)),
        ]
    return list(dict.fromkeys(files))


def run_dirs(run):
    """Every directory the stages of a run write into, each held by its stage while it writes:
    the directory of each output of a stage (STAGES in the Snakefile; prepare's output is its
    directory) and the run's checkpoints; not a model.init_from directory, which is not ours.
    """
    init = CFG[run].model.init_from
    theirs = [] if nconfig.init_dataset(init) else init_weights(run)
    outs = [
        f for _, outputs, _ in STAGES.values() for f in outputs(run) if f not in theirs
    ]
    dirs = [f if f == prepared_dir(run) else str(Path(f).parent) for f in outs]
    ckpt = f"{RESULTS}/{run}/checkpoints/{nconfig.checkpoint_id(CFG[run])}"
    return [*dirs, ckpt]


def refuse_if_in_use():
    """Before any job starts (starting one deletes its outputs and its log): refuse while a live
    stage holds a directory of the selected runs. It belongs to another Snakemake in this
    directory (say, after `snakemake --unlock` while one still ran) or to a stage run by hand.
    """
    held = {}
    for d in dict.fromkeys(d for run in RUNS for d in run_dirs(run)):
        if who := provenance.holder(d):
            held.setdefault(who, []).append(d)
    if held:
        what = "; ".join(f"{', '.join(ds)} (held by {who})" for who, ds in held.items())
        raise WorkflowError(
            f"a stage is still writing into {what}. Starting jobs now would delete its "
            "outputs and its log: wait until it finishes (python -m nanogptx.status shows "
            "where it stands), then run this command again. Nothing was changed."
        )
