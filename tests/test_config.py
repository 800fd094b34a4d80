"""The config tree: defaults, TOML runs, overrides, and errors that name key, value and file."""

from __future__ import annotations

import dataclasses
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from nanogptx import config, schema

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_runs_load_and_hold_only_differences() -> None:
    runs = sorted(p.stem for p in (ROOT / "config").glob("*.toml"))
    assert {"shakespeare-char", "shakespeare-gpt2", "gpt2-124m-fineweb", "tiny"} <= set(runs)
    for run in runs:
        cfg = config.load(ROOT / "config" / f"{run}.toml")
        assert isinstance(cfg, config.Config)
    cpu = config.load(ROOT / "config" / "shakespeare-char.toml")
    assert (cpu.model.n_layer, cpu.model.n_embd, cpu.model.block_size) == (4, 128, 64)
    assert (cpu.train.batch_size, cpu.train.max_iters, cpu.train.beta2) == (12, 2000, 0.99)


def test_overrides_apply_after_the_file_and_parse_types(tmp_path: Path) -> None:
    run = tmp_path / "run.toml"
    run.write_text("[model]\nn_layer = 3\n[train]\nlearning_rate = 1e-3\n")
    cfg = config.load(
        run,
        [
            "model.n_layer=5",
            "train.max_iters=7",
            "data.dataset=tinyshakespeare",
            "data.cleaning=['strip']",
            "train.learning_rate=2",
        ],
    )
    assert cfg.model.n_layer == 5 and cfg.train.max_iters == 7
    assert cfg.data.cleaning == ("strip",)
    assert cfg.train.learning_rate == 2.0 and isinstance(cfg.train.learning_rate, float)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.model.n_layer = 1  # type: ignore[misc]


def test_dump_round_trips(tmp_path: Path) -> None:
    cfg = config.load(ROOT / "config" / "gpt2-124m-fineweb.toml")
    (tmp_path / "dumped.toml").write_text(config.dump(cfg))
    assert config.load(tmp_path / "dumped.toml") == cfg


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ("[model]\nn_layr = 3\n", ["run.toml", "model.n_layr", "did you mean 'n_layer'"]),
        ("[trian]\nmax_iters = 3\n", ["run.toml", "[trian]", "did you mean 'train'"]),
        ('[model]\nn_layer = "4"\n', ["run.toml", "model.n_layer", "expected int", "'4'"]),
        ("[model]\nbias = 1\n", ["model.bias", "expected bool"]),
        ("[model]\nn_embd = 100\nn_head = 3\n", ["model.n_embd = 100", "multiple of model.n_head"]),
        (
            "[model]\nn_head = 12\nn_kv_head = 5\n",
            ["model.n_kv_head = 5", "a divisor of model.n_head = 12"],
        ),
        (
            "[model]\nn_embd = 36\nn_head = 4\nposition = 'rope'\n",
            ["model.n_head = 4", "head width n_embd / n_head = 9", "even, for rope"],
        ),
        ("[model]\nposition = 'alibi'\n", ["model.position = 'alibi'", "['learned', 'rope']"]),
        ("[model]\nactivation = 'swish'\n", ["model.activation", "'swiglu'"]),
        ("[model]\nz_loss = -1e-4\n", ["model.z_loss = -0.0001", ">= 0"]),
        ("[model]\nlogit_softcap = -5\n", ["model.logit_softcap = -5.0", ">= 0"]),
        ("[model]\nrope_theta = 0\n", ["model.rope_theta = 0.0", "> 0"]),
        ("[logging]\nstats_interval = -1\n", ["logging.stats_interval = -1", ">= 0"]),
        ("[train]\nshardng = 'dp'\n", ["train.shardng", "did you mean 'sharding'"]),
        ("[train]\nsharding = 'tp'\n", ["train.sharding = 'tp'", "one of ['dp', 'fsdp']"]),
        (
            "[data]\ndataset = 'tinyshakespear'\n",
            ["unknown dataset", "fineweb-sample-10bt", "did you mean 'tinyshakespeare'"],
        ),
        ("[data]\ncleaning = ['strp']\n", ["data.cleaning = 'strp'", "did you mean 'strip'"]),
        ("[sample]\ntop_p = 1.5\n", ["sample.top_p = 1.5"]),
        ("[model\n", ["run.toml", "not valid TOML"]),
        ("[train]\nlearning_rate = inf\n", ["train.learning_rate", "finite number, got inf"]),
        ("[sample]\ntemperature = nan\n", ["sample.temperature", "finite number, got nan"]),
        ("n_layer = 4\n", ["key 'n_layer' is outside any [section]", "under [model]"]),
        ("\ufeff[model]\nn_layer = 4\n", ["run.toml starts with a UTF-8 byte-order mark"]),
        # Impossible in themselves: refused when the run is loaded (by the Snakefile, before
        # download and prepare), not when their stage starts.
        ("[train]\nseed = -1\n", ["train.seed = -1", "0 to 4294967295"]),
        ("[train]\nseed = 4294967296\n", ["train.seed = 4294967296", "a JAX key holds 32 bits"]),
        ("[sample]\nseed = -2\n", ["sample.seed = -2", "0 to 4294967295"]),
        (
            "[model]\nblock_size = 64\n[sample]\nwindow_shift = 65\n",
            ["sample.window_shift = 65", "to model.block_size = 64"],
        ),
        (
            "[eval]\ntasks = []\n",
            ["eval.tasks = []", "at least one of ['val_loss', 'hellaswag', 'core', 'core-"],
        ),
        ("[sample]\nstart = 'FILE:'\n", ["sample.start = 'FILE:'", "FILE:path with a path"]),
        (
            "[tokenizer]\nname = 'gpt2'\n[model]\nvocab_size = 50000\n",
            ["model.vocab_size = 50000", "at least 50257"],
        ),
        ("[train]\ndivergence_steps = 0\n", ["train.divergence_steps = 0", "> 0"]),
    ],
)
def test_bad_values_are_named_with_file_key_and_expectation(
    tmp_path: Path, toml: str, expected: list[str]
) -> None:
    run = tmp_path / "run.toml"
    run.write_text(toml)
    with pytest.raises(config.ConfigError) as e:
        config.load(run)
    for part in expected:
        assert part in str(e.value)


def test_auto_batch_size_is_spelled_0_or_auto_and_nothing_else(tmp_path: Path) -> None:
    # "auto" is the word for 0: the same config, so the same dump and checkpoint identity.
    auto = ["train.total_batch_tokens=4096", "model.block_size=64"]
    zero = config.load(None, [*auto, "train.batch_size=0"])
    run = tmp_path / "run.toml"
    run.write_text('[train]\nbatch_size = "auto"\ntotal_batch_tokens = 4096\n'
                   "[model]\nblock_size = 64\n")  # fmt: skip
    words = [config.load(None, [*auto, "train.batch_size=auto"]), config.load(run),
             config.load(None, [*auto, 'train.batch_size="auto"'])]  # fmt: skip
    for cfg in words:
        assert cfg == zero and config.checkpoint_id(cfg) == config.checkpoint_id(zero)
    for bad, why in [("'0'", "expected an int, or 'auto' (0), got '0'"),
                     ("Auto", "got 'Auto'"), ("1.5", "expected int, got float 1.5"),
                     ("-1", "train.batch_size = -1: expected >= 0 (0: auto)")]:  # fmt: skip
        with pytest.raises(config.ConfigError, match=re.escape(why)):
            config.load(None, [*auto, f"train.batch_size={bad}"])
    # Elsewhere "auto" is no number.
    with pytest.raises(config.ConfigError, match="train.max_iters: expected int, got str"):
        config.load(None, ["train.max_iters=auto"])


# Strings a user gives (prompts, names, paths): outside the Basic Multilingual Plane, combining
# characters, quotes, backslashes, control characters, newlines, spaces.
NASTY = ["ROMEO 😀", "e\u0301 (e and a combining acute) and \u00e9", 'say "hi"', "C:\\dir\\n",
         "two\nlines\r\n\ttab", "\x00\x1b\x7f", "FILE:/tmp/my prompts 😀/p.txt", ""]  # fmt: skip


@pytest.mark.parametrize("text", NASTY)
def test_every_string_round_trips_through_a_config_file_and_an_override(
    tmp_path: Path, text: str
) -> None:
    # As an override (a TOML value, as sweeps and the workflow pass them), then in the
    # config.toml that train writes of a model, which every later stage loads.
    value = config._toml_value(text)
    cfg = config.load(None, [f"sample.start={value}", f"logging.wandb_run_name={value}"])
    assert cfg.sample.start == text and cfg.logging.wandb_run_name == text
    (tmp_path / "config.toml").write_bytes(config.dump(cfg).encode("utf-8"))
    again = config.load(tmp_path / "config.toml")
    assert again == cfg and again.sample.start.encode() == text.encode()
    # Characters TOML holds as they are are written as they are: the file reads as its text.
    if text.isprintable() and not {'"', "\\"} & set(text):
        assert f'start = "{text}"' in (tmp_path / "config.toml").read_text("utf-8")
    # The same as a shell word of the workflow's commands.
    out = subprocess.run(["bash", "-c", f"printf %s {shlex.quote(f'sample.start={value}')}"],
                         capture_output=True, check=True).stdout  # fmt: skip
    assert config.load(None, [out.decode()]).sample.start == text


def test_a_quoted_override_that_is_not_toml_is_refused_not_taken_as_text() -> None:
    # It once became the string with its quotes and escapes: "ROMEO \ud83d\ude00".
    with pytest.raises(config.ConfigError, match=r"override .*: not a valid TOML value"):
        config.load(None, ['sample.start="ROMEO \\ud83d\\ude00"'])
    with pytest.raises(config.ConfigError, match=r"not a valid TOML value"):
        config.load(None, ["data.cleaning=['strip'"])
    assert config.load(None, ["data.dataset=tinyshakespeare"]).data.dataset == "tinyshakespeare"
    # A lone surrogate (a command line's byte that is not UTF-8) cannot be written to a file.
    with pytest.raises(config.ConfigError, match=r"sample.start: .* lone surrogate"):
        config.load(None, ["sample.start=abc\udcff"])


def test_non_finite_override_and_a_directory_for_a_file_are_refused(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match="train.learning_rate: expected a finite"):
        config.load(None, ["train.learning_rate=inf"])
    with pytest.raises(config.ConfigError, match=f"config file {tmp_path} is a directory"):
        config.load(tmp_path)


def test_an_integer_past_64_bits_is_refused_for_every_integer_key() -> None:
    # numpy and JAX hold at most 64 bits: such a value crashed a stage with an OverflowError.
    defaults, keys = config.Config(), 0
    for section in dataclasses.fields(defaults):
        for f in dataclasses.fields(getattr(defaults, section.name)):
            if f.type in (int, "int"):
                key, keys = f"{section.name}.{f.name}", keys + 1
                with pytest.raises(config.ConfigError, match=rf"{key}.*does not fit in 64 bits"):
                    config.load(None, [f"{key}={2**64}"])
    assert keys > 20  # the walk reached the integer keys


def test_run_names_follow_one_pattern() -> None:
    for good in ("tiny", "sweep-lr-3e-4", "a.b_c"):
        assert config.check_run_name(good) == good
    for bad in ("my run", "-x", "a/b", "", "x;rm"):
        with pytest.raises(config.ConfigError, match="run name"):
            config.check_run_name(bad)


def test_bad_override_syntax() -> None:
    with pytest.raises(config.ConfigError, match="section.key=value"):
        config.load(None, ["n_layer=3"])


def test_data_id_shared_by_equal_data_settings_only() -> None:
    a = config.load(None, ["train.learning_rate=1.0", "model.n_layer=2"])
    b = config.load(None, ["train.learning_rate=2.0"])
    c = config.load(None, ["tokenizer.name=gpt2"])
    d = config.load(None, ["data.cleaning=['strip']"])
    assert config.data_id(a) == config.data_id(b)
    assert len({config.data_id(a), config.data_id(c), config.data_id(d)}) == 3
    # Accepting an unverified download changes no byte of what is prepared from it.
    assert config.data_id(config.load(None, ["data.allow_unverified=true"])) == config.data_id(a)


def test_checkpoint_id_changes_exactly_when_a_resume_would_be_refused() -> None:
    base = config.checkpoint_id(config.load(None))
    same = ["train.max_iters=5", "train.lr_decay_iters=9000", "train.eval_interval=7",
            "logging.log_interval=3", "sample.top_k=3", "train.checkpoint_interval=1"]  # fmt: skip
    for item in same:
        assert config.checkpoint_id(config.load(None, [item])) == base, item
    for item in ["train.learning_rate=1e-3", "train.seed=1", "model.n_layer=3", "data.max_docs=5"]:
        assert config.checkpoint_id(config.load(None, [item])) != base, item


@pytest.mark.parametrize("stage", ["download", "prepare", "train", "sample"])
def test_every_stage_help_lists_its_keys(stage: str) -> None:
    r = subprocess.run(
        [sys.executable, "-m", f"nanogptx.{stage}", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "--config" in r.stdout
    # Only the sections the stage reads are listed.
    reads = {"download": ["data"], "prepare": ["data", "tokenizer"],
             "train": ["model", "train", "logging"], "sample": ["sample"]}[stage]  # fmt: skip
    for name in config.SECTIONS:
        assert (f"\n  {name}." in r.stdout) == (name in reads), (stage, name)
    if stage in ("download", "prepare"):
        assert 'data.dataset (str, default "tinyshakespeare")' in r.stdout
        # download reads two of [data]'s keys (download.READS), prepare all of them
        assert ('data.shard_format (str, default "npy")' in r.stdout) == (stage == "prepare")
    if stage == "prepare":  # every key with fixed values names them
        assert "choices: npy, parquet" in r.stdout and "choices: char, gpt2" in r.stdout
    if stage == "sample":
        assert "[model]" in r.stdout and "does not read them" in r.stdout
    if stage == "train":  # every variant is explained, with its choices
        assert "model.n_layer (int, default 12)" in r.stdout
        for key in (
            "position",
            "rope_theta",
            "norm",
            "norm_gain",
            "qk_norm",
            "activation",
            "mlp_width",
            "n_kv_head",
            "tie_embeddings",
            "logit_softcap",
            "z_loss",
        ):
            assert f"model.{key} (" in r.stdout, key
        assert (
            "swiglu" in r.stdout and "rmsnorm" in r.stdout and "logging.stats_interval" in r.stdout
        )


@pytest.mark.parametrize("stage", ["download", "prepare"])
def test_overrides_go_anywhere_on_the_command_line(stage: str, tmp_path: Path) -> None:
    args = ["data.max_docs=1", "--out", str(tmp_path / "out"), "data.dataset=nonesuch"]
    args += ["--raw", str(tmp_path)] if stage == "prepare" else []
    r = subprocess.run([sys.executable, "-m", f"nanogptx.{stage}", *args],
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    # Parsed (both overrides reach the config), not "unrecognized arguments".
    assert r.returncode == 2 and "unknown dataset 'nonesuch'" in r.stderr, r.stderr


def test_stage_rejects_bad_override_before_work(tmp_path: Path) -> None:
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "nanogptx.prepare",
            "--raw",
            str(tmp_path),
            "--out",
            str(tmp_path / "out"),
            "data.shard_tokns=5",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode != 0
    assert "data.shard_tokns" in r.stderr and "shard_tokens" in r.stderr
    assert not (tmp_path / "out").exists()


# ---- Identity, pinned as it was before the roles derived it (issue 25): every checkpoint
# directory, prepared-data directory and Snakemake param of a run stays what it was.
PINNED_RESUME = {"seed", "batch_size", "total_batch_tokens", "learning_rate", "min_lr",
                 "warmup_iters", "decay_lr", "weight_decay", "beta1", "beta2", "grad_clip",
                 "batch_order", "compute_dtype", "optimizer", "muon_learning_rate",
                 "muon_momentum", "weight_decay_mode"}  # fmt: skip
PINNED_SCHEDULE = {"lr_schedule", "lr_decay_iters", "cooldown_frac"}
PINNED_RUNTIME = {"kernels", "attention", "remat"}
PINNED_PROGRAM = (PINNED_RESUME - {"seed", "batch_order"}) | PINNED_SCHEDULE | {"sharding"}
PINNED_NOT_DATA = {"data.allow_unverified"}
# (data_id, checkpoint_id) of the shipped runs: their prepared data and checkpoints are found.
SHIPPED_IDS = {
    "finetune-shakespeare": ("tinyshakespeare-gpt2-40482be80f", "7b350d3133"),
    "gpt2-124m-fineweb": ("fineweb-sample-10bt-gpt2-630f147f51", "7286c74944"),
    "gpt2-sample": ("tinyshakespeare-gpt2-40482be80f", "b7ad1b505a"),
    "lr-sweep-char": ("tinyshakespeare-char-03b676b2a1", "c2cb4c33c6"),
    "lr-sweep-fineweb": ("fineweb-sample-10bt-gpt2-630f147f51", "790a717572"),
    "shakespeare-char-gpu": ("tinyshakespeare-char-03b676b2a1", "c2ed69f308"),
    "shakespeare-char-modern": ("tinyshakespeare-char-03b676b2a1", "b652b99496"),
    "shakespeare-char": ("tinyshakespeare-char-03b676b2a1", "643355f3b8"),
    "shakespeare-gpt2": ("tinyshakespeare-gpt2-40482be80f", "3be732d85e"),
    "tiny": ("tinyshakespeare-char-03b676b2a1", "55505b665a"),
}


def _edits() -> list[list[str]]:
    """One loadable edit of every key of every section (the first candidate value that loads)."""
    out = []
    for name, cls in config.SECTIONS.items():
        for f in dataclasses.fields(cls):
            d = f.default
            if isinstance(d, tuple):
                tries = [["strip"], ["hellaswag", "val_loss"]]
            elif f.metadata.get("choices"):
                tries = [c for c in f.metadata["choices"] if c != d]
            elif isinstance(d, bool):
                tries = [not d]
            elif isinstance(d, (int, float)):
                tries = [d + 1, d * 2, 0.5, 1, 64]
            else:
                tries = ["fineweb-sample-10bt", "gpt2", "x"]
            base = ["tokenizer.name='gpt2'"] if f.name == "init_from" else []
            for v in tries:
                try:
                    edit = [*base, f"{name}.{f.name}={config._toml_value(v)}"]
                    config.load(None, edit)
                except config.ConfigError:
                    continue
                out.append(edit)
                break
            else:
                raise AssertionError(f"no loadable edit of {name}.{f.name}")
    return out


def _pinned_ids(cfg: config.Config) -> tuple[str, str]:
    data = [s for s in config.settings(cfg, ("data", "tokenizer"))
            if s.split("=", 1)[0] not in PINNED_NOT_DATA]  # fmt: skip
    data_id = f"{cfg.data.dataset}-{cfg.tokenizer.name}-{config._sha256(data)[:10]}"
    model = [s for s in config.settings(cfg, ("model",))
             if s.split("=", 1)[0][6:] not in PINNED_RUNTIME]  # fmt: skip
    train = config.settings(cfg, ("train",), {f"train.{k}" for k in PINNED_RESUME})
    return data_id, config._sha256([*model, *train, f"data_id={data_id}"])[:10]


def test_identity_of_every_edit_is_what_it_was_before_the_roles() -> None:
    from nanogptx import optim

    assert set(config.RESUME_KEYS) == PINNED_RESUME
    assert set(optim.SCHEDULE_KEYS) == PINNED_SCHEDULE
    assert set(config.RUNTIME_KEYS) == PINNED_RUNTIME
    assert set(config.NOT_DATA_IDENTITY) == PINNED_NOT_DATA
    for run, ids in SHIPPED_IDS.items():
        cfg = config.load(ROOT / "config" / f"{run}.toml")
        assert (config.data_id(cfg), config.checkpoint_id(cfg)) == ids == _pinned_ids(cfg), run
    for edit in [[], *_edits()]:
        cfg = config.load(None, edit)
        assert (config.data_id(cfg), config.checkpoint_id(cfg)) == _pinned_ids(cfg), edit
        # The compiled programs' cache key: the model and the program's train keys, as before.
        program = config.TrainConfig(**{k: getattr(cfg.train, k) for k in PINNED_PROGRAM})
        assert config.program_config(cfg) == config.Config(model=cfg.model, train=program), edit


def test_every_setting_declares_its_role_and_short_help() -> None:
    for name, cls in config.SECTIONS.items():
        for f in dataclasses.fields(cls):
            assert schema.role(f) in schema.ROLES, f"{name}.{f.name}: no role (schema.py)"
            assert len(f.metadata["help"]) <= 160, f"{name}.{f.name}: help over two lines"


def test_a_setting_left_unmarked_starts_afresh_and_recompiles(monkeypatch) -> None:
    # Forgetting the role of a new setting must never resume a checkpoint made with another
    # value of it, nor compile a step that sees its default: here train.max_iters and
    # data.allow_unverified, as if declared without one.
    from nanogptx import resume

    keys = (("train", "max_iters"), ("data", "allow_unverified"), ("logging", "log_interval"))
    for name, key in keys:
        f = config.SECTIONS[name].__dataclass_fields__[key]
        monkeypatch.setattr(f, "metadata", {**f.metadata, "role": schema.UNMARKED})
    base, edited = config.load(None), config.load(None, ["train.max_iters=5"])
    assert config.checkpoint_id(edited) != config.checkpoint_id(base)
    # The stage's own check, for --checkpoints reused by hand: refused as checkpoint_id differs
    # (it read the train keys' roles once, at import, and no [logging] key at all).
    meta = {"config": config.sections(base, config.STAGE_SECTIONS["train"]),
            "manifest_sha256": "m", "vocab_size": 65}  # fmt: skip
    logged = config.load(None, ["logging.log_interval=3"])
    assert config.checkpoint_id(logged) != config.checkpoint_id(base)
    assert resume.resume_mismatch(meta, edited, "m", 65) == ["train.max_iters"]
    assert resume.resume_mismatch(meta, logged, "m", 65) == ["logging.log_interval"]
    assert config.program_config(edited).train.max_iters == 5
    unverified = config.load(None, ["data.allow_unverified=true"])
    assert config.data_id(unverified) != config.data_id(base)
    monkeypatch.undo()  # marked again: max_iters resumes and leaves the steps alone
    assert config.checkpoint_id(edited) == config.checkpoint_id(base)
    assert resume.resume_mismatch(meta, edited, "m", 65) == []
    assert resume.resume_mismatch(meta, logged, "m", 65) == []
    changed = config.load(None, ["model.n_layer=3", "train.seed=2", "model.remat='block'"])
    assert resume.resume_mismatch(meta, changed, "n", 64) == [
        "model.n_layer", "train.seed", "data (manifest sha256)", "vocab_size"]  # fmt: skip
    assert config.program_config(edited) == config.program_config(base)
    assert config.data_id(unverified) == config.data_id(base)


def test_the_docs_rerun_table_holds_the_rows_the_roles_make() -> None:
    page = (ROOT / "docs" / "workflow.md").read_text("utf-8")
    assert schema.rerun_table() in page, "docs/workflow.md: paste `python -m nanogptx.schema`"
    # The rows say what the identities do: an edit of a resume key starts afresh, of a
    # schedule key resumes.
    rows = {row.split(" (")[0][2:]: row for row in schema.rerun_rows()}
    assert "afresh" in rows["`train.seed`, `train.batch_order`"]
    assert "resumed" in rows["`train.lr_decay_iters`, `train.lr_schedule`, `train.cooldown_frac`"]


COMMANDS = ["download", "prepare", "train", "sample", "eval", "export", "report", "status",
            "sweep", "plan", "tokenizer", "schema"]  # fmt: skip


@pytest.mark.parametrize("module", COMMANDS)
def test_every_command_says_what_it_does_in_one_or_two_lines(
    module: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`python -m nanogptx.<module> --help`: the paragraph under the usage, at 100 columns
    (export's and plan's took three)."""
    import importlib

    monkeypatch.setenv("COLUMNS", "100")
    with pytest.raises(SystemExit) as e:
        importlib.import_module(f"nanogptx.{module}").main(["--help"])
    assert e.value.code == 0
    about = capsys.readouterr().out.split("\n\n")[1]
    assert 0 < len(about.splitlines()) <= 2, about
