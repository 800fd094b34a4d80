"""The eval stage: the whole validation split's loss and bits per byte against a direct
computation, HellaSwag scoring against an independent scorer on HF transformers and torch, and
clear errors for malformed HellaSwag lines with nothing written."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nanogptx import checkpoint, config, datasets, eval, evaltasks, loader, model, tokenizer
from prepared import synthetic_text, write_prepared

HELLASWAG = evaltasks.get("hellaswag")
HELLASWAG_FILE = HELLASWAG.options["file"]
ENDINGS = [
    "went to the market and bought bread.", "sat down.", "flew over the moon at night, singing.",
    "opened the door", "closed it again and left the room quietly.", "ran.",
]  # fmt: skip
CONTEXTS = [
    "A man is standing in a kitchen. He", "The cat looked at the window and then",
    "After the rain stopped, the children", "She picked up the guitar and",
    "In the morning the old king", "Two dogs are playing in a park; one of them",
]  # fmt: skip


def hellaswag_file(path: Path, n: int) -> Path:
    rng = np.random.default_rng(0)
    with open(path, "w") as f:
        for i in range(n):
            ends = [ENDINGS[j] for j in rng.choice(len(ENDINGS), 4, replace=False)]
            ctx = CONTEXTS[i % len(CONTEXTS)] + " " * int(rng.integers(0, 2))
            f.write(json.dumps({"ctx": ctx, "endings": ends, "label": int(rng.integers(4))}) + "\n")
    return path


@pytest.fixture(scope="module")
def gpt2_model(tmp_path_factory: pytest.TempPathFactory, gpt2_offline: None) -> Path:
    """A random HF GPT2LMHeadModel, and the same weights as a nanogptx model directory."""
    torch = pytest.importorskip("torch", reason="the test extra brings torch (CPU)")
    transformers = pytest.importorskip("transformers", reason="the test extra brings it")
    root = tmp_path_factory.mktemp("eval")
    torch.manual_seed(0)
    hf_cfg = transformers.GPT2Config(n_layer=2, n_head=4, n_embd=64, n_positions=64)
    m = transformers.GPT2LMHeadModel(hf_cfg).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(3.0) if p.ndim >= 2 else p.add_(torch.randn_like(p) * 0.1)
    m.save_pretrained(root / "hf", safe_serialization=True)
    from nanogptx import hf

    cfg = config.load(None, [f"model.init_from={json.dumps(str(root / 'hf'))}"])
    params = hf.load_params(root / "hf", cfg.model)
    checkpoint.save_model(root / "model", params, cfg, tokenizer.gpt2().identity(), 0)
    return root


def hf_scores(hf_dir: Path, items: list[dict]) -> tuple[float, float]:
    """An independent scorer: one item at a time through HF's torch model, the ending's
    log-probabilities summed and averaged (llm.c's rule), with tiktoken's GPT-2 tokens; a
    context too long for the model's positions loses its first tokens (lm-evaluation-harness's
    rule: the last n_positions + 1 tokens, of which the last n_positions are scored)."""
    import tiktoken
    import torch
    import transformers

    enc = tiktoken.get_encoding("gpt2")
    m = transformers.GPT2LMHeadModel.from_pretrained(hf_dir).eval()
    L = m.config.n_positions
    right = right_norm = 0
    for item in items:
        sums, means = [], []
        for ending in item["choices"]:
            end = enc.encode_ordinary(" " + ending)
            ids = torch.tensor([(enc.encode_ordinary(item["context"]) + end)[-(L + 1) :]])
            with torch.no_grad():
                logp = torch.log_softmax(m(ids[:, :-1]).logits[0].double(), -1)
            n = ids.shape[1]
            picked = logp[torch.arange(n - len(end) - 1, n - 1), ids[0, n - len(end) :]]
            sums.append(picked.sum().item())
            means.append(picked.mean().item())
        right += int(np.argmax(sums) == item["label"])
        right_norm += int(np.argmax(means) == item["label"])
    return right / len(items), right_norm / len(items)


def test_hellaswag_scores_equal_an_independent_hf_scorer(gpt2_model: Path, tmp_path: Path) -> None:
    (tmp_path / "hs").mkdir()  # apart from --out: a stage never writes where it reads
    path = hellaswag_file(tmp_path / "hs" / HELLASWAG_FILE, 30)
    with open(path, "a") as f:  # contexts longer than the model's 64 positions: cropped
        for i in range(3):
            ctx = " ".join(CONTEXTS[i:] * 3)
            f.write(json.dumps({"ctx": ctx, "endings": ENDINGS[i : i + 4], "label": i}) + "\n")
    cfg = config.load(None, ['eval.tasks=["hellaswag"]', "eval.batch_size=4"])
    out = eval.evaluate(
        cfg, gpt2_model / "model", None, tmp_path / "out", {"hellaswag": path.parent}
    )
    r = out["hellaswag"]
    items = eval.read_items(path, HELLASWAG)
    acc, acc_norm = hf_scores(gpt2_model / "hf", items)
    assert (r["acc"], r["acc_norm"], r["items"], r["cropped_items"]) == (acc, acc_norm, 33, 3)
    assert r["acc"] != r["acc_norm"] or acc == acc_norm  # the two rules are both computed
    assert "completion-style" in r["method"] and r["items_per_second"] > 0
    written = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert written["hellaswag"]["acc_norm"] == acc_norm
    prov = json.loads((tmp_path / "out" / "provenance.json").read_text())
    assert [Path(e["path"]).name for e in prov["inputs"]] == ["params.safetensors", path.name]
    # eval.max_items: the first items only.
    cfg = config.load(None, ['eval.tasks=["hellaswag"]', "eval.max_items=7"])
    out = eval.evaluate(
        cfg, gpt2_model / "model", None, tmp_path / "o2", {"hellaswag": path.parent}
    )
    assert out["hellaswag"]["items"] == 7


@pytest.fixture(scope="module")
def gpt2_tiny(tmp_path_factory: pytest.TempPathFactory, gpt2_offline: None) -> Path:
    """A tiny random model in GPT-2 tokens (block_size 16), without torch."""
    root = tmp_path_factory.mktemp("gpt2-tiny")
    m = config.load(None, ["model.n_layer=1", "model.n_head=1", "model.n_embd=8",
                           "model.block_size=16", "model.vocab_size=50257"])  # fmt: skip
    params = model.init_params(m.model, 50257, jax.random.key(0))
    checkpoint.save_model(root / "model", params, m, tokenizer.gpt2().identity(), 0)
    return root / "model"


def test_an_ending_longer_than_the_window_is_refused_naming_file_and_line(
    gpt2_tiny: Path, tmp_path: Path
) -> None:
    """block_size 16: a context of any length is cropped from the left, but an ending of more
    than 16 tokens cannot follow a context token in the window (it crashed with a numpy
    broadcast error)."""
    (tmp_path / "hs").mkdir()  # apart from --out: a stage never writes where it reads
    path = tmp_path / "hs" / HELLASWAG_FILE
    long_ctx = {"ctx": " ".join(CONTEXTS), "endings": ENDINGS[:4], "label": 0}
    too_long = {"ctx": "A man", "endings": ["a", " ".join(ENDINGS), "b", "c"], "label": 1}
    path.write_text(json.dumps(long_ctx) + "\n" + json.dumps(too_long) + "\n")
    cfg = config.load(None, ['eval.tasks=["hellaswag"]'])
    with pytest.raises(
        eval.EvalError, match=rf"{path.name}:2: ending 1 is \d+ tokens.*block_size = 16"
    ):
        eval.evaluate(cfg, gpt2_tiny, None, tmp_path / "out", {"hellaswag": path.parent})
    assert not (tmp_path / "out" / "metrics.json").exists()
    path.write_text(json.dumps(long_ctx) + "\n")  # the long context alone: cropped, scored
    r = eval.evaluate(cfg, gpt2_tiny, None, tmp_path / "out", {"hellaswag": path.parent})[
        "hellaswag"
    ]
    assert (r["items"], r["cropped_items"]) == (1, 1)


def test_a_model_without_gpt2_tokens_is_refused_hellaswag_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """In config, where the run's file names the tokenizer (snakemake -n refuses the run); at
    the eval stage's start where only the model says it (it used to score val_loss first)."""
    run = tmp_path / "run.toml"
    run.write_text('[tokenizer]\nname = "char"\n\n[eval]\ntasks = ["val_loss", "hellaswag"]\n')
    with pytest.raises(config.ConfigError, match=rf"{run}: eval.tasks has hellaswag.*'char'"):
        config.load(run)
    with pytest.raises(config.ConfigError, match="tokenizer.name = 'char'"):
        config.load(None, ['eval.tasks=["hellaswag"]', "tokenizer.name=char"])
    (tmp_path / "hs").mkdir()  # apart from --out
    hellaswag_file(tmp_path / "hs" / HELLASWAG_FILE, 3)
    data_dir = write_prepared(tmp_path / "data", synthetic_text(3000), 2000)
    data = loader.open_prepared(data_dir)
    m = config.load(None, ["model.n_layer=1", "model.n_head=1", "model.n_embd=8",
                           "model.block_size=8"])  # fmt: skip
    params = model.init_params(m.model, data.vocab_size, jax.random.key(0))
    checkpoint.save_model(tmp_path / "model", params, m, data.manifest["tokenizer"], 0)
    cfg = config.load(None, ['eval.tasks=["val_loss", "hellaswag"]'])  # the model decides
    capsys.readouterr()
    with pytest.raises(eval.EvalError, match=r"hellaswag.*GPT-2 tokens.*'char' tokenizer"):
        eval.evaluate(
            cfg, tmp_path / "model", data_dir, tmp_path / "out", {"hellaswag": tmp_path / "hs"}
        )
    assert "val_loss" not in capsys.readouterr().out  # nothing was scored
    assert not (tmp_path / "out").exists()


def test_val_loss_covers_every_window_of_the_split_and_gives_bits_per_byte(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    text = synthetic_text(5000)
    data_dir = write_prepared(tmp_path / "data", text, 2000)
    data = loader.open_prepared(data_dir)
    m = config.load(None, ["model.n_layer=1", "model.n_head=2", "model.n_embd=16",
                           "model.block_size=16", f"model.vocab_size={data.vocab_size}"],
                    )  # fmt: skip
    params = model.init_params(m.model, data.vocab_size, jax.random.key(3))
    checkpoint.save_model(tmp_path / "model", params, m, data.manifest["tokenizer"], 0)
    cfg = config.load(None, ["eval.batch_size=3"])  # windows do not fill the last batch
    r = eval.evaluate(cfg, tmp_path / "model", data_dir, tmp_path / "out")["val_loss"]
    val = data.split("val")
    n = (val.n_tokens - 1) // 16
    assert (r["windows"], r["tokens"], r["whole_split"]) == (n, 16 * n, True)
    tokens = val.read(0, 16 * n + 1)
    x = np.stack([tokens[i * 16 : i * 16 + 16] for i in range(n)])
    y = np.stack([tokens[i * 16 + 1 : i * 16 + 17] for i in range(n)])
    want = float(model.loss_fn(params, jnp.asarray(x), jnp.asarray(y), m.model)[0])
    assert r["loss"] == pytest.approx(want, rel=1e-5)
    assert r["bits_per_byte"] == pytest.approx(want / math.log(2), rel=1e-5)  # ASCII: 1 byte
    # How it ran on this CPU, recorded (and logged): the fast primitives, the layer unrolled.
    runtime = json.loads((tmp_path / "out" / "provenance.json").read_text())["runtime"]
    assert runtime == {"kernels": "fast", "attention": "einsum", "unroll": 1,
                       "loss_chunk": 1 << 23, "remat": "none"}  # fmt: skip
    assert f"runtime: {runtime}" in capsys.readouterr().out
    cfg = config.load(None, ["eval.max_windows=4"])
    r = eval.evaluate(cfg, tmp_path / "model", data_dir, tmp_path / "out2")["val_loss"]
    assert (r["windows"], r["whole_split"]) == (4, False)


@pytest.mark.parametrize(
    "line, error",
    [
        ("{not json", r":2: not a JSON object"),
        ('{"ctx": "A man", "label": 0}', r":2: key 'endings' is missing"),
        ('{"ctx": "A man", "endings": ["a", "b"], "label": 0}', r":2: endings: expected a list"),
        ('{"ctx": "A man", "endings": ["a", "b", "c", "d"], "label": 7}', r":2: label: expected"),
        # No context: the first ending token would be scored from a padding slot.
        ('{"ctx": "", "endings": ["a", "b", "c", "d"], "label": 0}', r":2: ctx is empty"),
        ('{"ctx": " ", "endings": ["a", "b", "c", "d"], "label": 0}', r":2: ctx is empty"),
    ],
)
def test_a_bad_hellaswag_line_names_file_line_and_key_and_writes_nothing(
    tmp_path: Path, gpt2_tiny: Path, line: str, error: str
) -> None:
    (tmp_path / "hs").mkdir()  # apart from --out: a stage never writes where it reads
    path = tmp_path / "hs" / HELLASWAG_FILE
    good = {"ctx": "A man", "endings": ["a", "b", "c", "d"], "label": 1}
    path.write_text(json.dumps(good) + "\n" + line + "\n")
    with pytest.raises(eval.EvalError, match=f"{path.name}{error}"):
        eval.read_items(path, HELLASWAG)
    # Through the stage: the error comes before any work, and nothing is written.
    cfg = config.load(None, ['eval.tasks=["hellaswag"]'])
    with pytest.raises(eval.EvalError, match=f"{path.name}{error}"):
        eval.evaluate(cfg, gpt2_tiny, None, tmp_path / "out", {"hellaswag": path.parent})
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "line, error",
    [
        (b'{"ctx": "caf\xe9", "endings": ["a", "b", "c", "d"], "label": 0}', r":2: not UTF-8 "
         r"text \(byte 12 of the line\)"),
        # Valid JSON, but no character: it was scored as U+FFFD without a word.
        (b'{"ctx": "A man \\ud800", "endings": ["a", "b", "c", "d"], "label": 0}',
         r":2: ctx holds a lone surrogate"),
        (b'{"ctx": "A man", "endings": ["a", "\\udc00", "c", "d"], "label": 0}',
         r":2: endings\[1\] holds a lone surrogate"),
    ],
)  # fmt: skip
def test_a_hellaswag_line_that_is_not_text_names_file_and_line(
    tmp_path: Path, line: bytes, error: str
) -> None:
    # Bytes that are not UTF-8 ended the stage in a UnicodeDecodeError traceback.
    path = tmp_path / HELLASWAG_FILE
    good = {"ctx": "A man \u00e9 \U0001f600", "endings": ["a", "b", "c", "d"], "label": 1}
    path.write_bytes(json.dumps(good).encode() + b"\n" + line + b"\n")
    with pytest.raises(eval.EvalError, match=f"{path.name}{error}"):
        eval.read_items(path, HELLASWAG)
    path.write_bytes(json.dumps(good).encode() + b"\n")
    assert eval.read_items(path, HELLASWAG)[0]["context"] == "A man \u00e9 \U0001f600"


def toy_dataset(registry: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The registry dataset toy-data that toy_task reads: config/datasets/toy-data.toml, beside
    the defaults' tinyshakespeare."""
    shipped = datasets.entry_file("tinyshakespeare").read_bytes()
    monkeypatch.setenv("NANOGPTX_DATASETS", str(registry))
    monkeypatch.setattr(datasets, "REGISTRY", {})
    registry.mkdir(parents=True, exist_ok=True)
    (registry / "tinyshakespeare.toml").write_bytes(shipped)
    (registry / "toy-data.toml").write_text(
        'about = "toy items"\nreader = "none"\nuse = "eval"\n'
        '[[files]]\nname = "toy.jsonl"\nurl = "https://example.org/toy.jsonl"\n'
    )


def toy_task(registry: Path, **keys: object) -> Path:
    """A multiple-choice task file of two choices, its items' keys named otherwise than
    HellaSwag's: config/tasks/toy.toml in registry."""
    entry = {
        "about": '"a toy"', "kind": '"multiple_choice"', "label": '"toy"',
        "dataset": '"toy-data"', "file": '"toy.jsonl"', "items": "3", "choices": "2",
        "fields": '{context = "q", choices = "options", label = "answer"}',
        "metrics": '["acc", "acc_norm"]', **keys,
    }  # fmt: skip
    registry.mkdir(parents=True, exist_ok=True)
    path = registry / "toy.toml"
    path.write_text("".join(f"{k} = {v}\n" for k, v in entry.items()))
    return path


def test_a_new_multiple_choice_task_is_a_file_and_scores_as_a_direct_computation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A task of an existing kind is data: its file names the dataset, the items' keys, the
    number of choices and the delimiter; its scores equal the log-probabilities of each choice
    computed directly with model.forward, on a character model."""
    shipped = evaltasks.entry_file("val_loss").read_bytes()
    monkeypatch.setenv("NANOGPTX_TASKS", str(tmp_path / "tasks"))
    monkeypatch.setattr(evaltasks, "REGISTRY", {})
    toy_task(tmp_path / "tasks", delimiter='"."')
    toy_dataset(tmp_path / "datasets", monkeypatch)
    (tmp_path / "tasks/val_loss.toml").write_bytes(shipped)
    data_dir = write_prepared(tmp_path / "data", synthetic_text(3000), 2000)
    data = loader.open_prepared(data_dir)
    m = config.load(None, ["model.n_layer=1", "model.n_head=1", "model.n_embd=8",
                           "model.block_size=16"])  # fmt: skip
    params = model.init_params(m.model, data.vocab_size, jax.random.key(5))
    checkpoint.save_model(tmp_path / "model", params, m, data.manifest["tokenizer"], 0)
    items = [("the king", ["shall be", "and thee"], 1), ("my lord", ["not", "queen to"], 0),
             ("thee and the queen and the king and my lord", ["be", "to be"], 1)]  # fmt: skip
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw/toy.jsonl").write_text("".join(
        json.dumps({"q": q, "options": o, "answer": a}) + "\n" for q, o, a in items))  # fmt: skip
    cfg = config.load(None, ['eval.tasks=["toy", "val_loss"]', "eval.batch_size=2"])
    out = eval.evaluate(cfg, tmp_path / "model", data_dir, tmp_path / "out",
                        {"toy-data": tmp_path / "raw"})  # fmt: skip
    tok = tokenizer.from_manifest(data.manifest["tokenizer"])
    right = right_norm = 0
    for q, options, answer in items:
        sums, means = [], []
        for option in options:
            end = tok.encode("." + option)
            ids = (tok.encode(q) + end)[-17:]  # the last block_size + 1: context cut from the left
            logp = jax.nn.log_softmax(model.forward(params, jnp.asarray([ids[:-1]]), m.model)[0])
            picked = [float(logp[i - 1, ids[i]]) for i in range(len(ids) - len(end), len(ids))]
            sums.append(sum(picked))
            means.append(sum(picked) / len(picked))
        right += int(np.argmax(sums) == answer)
        right_norm += int(np.argmax(means) == answer)
    r = out["toy"]
    assert (r["acc"], r["acc_norm"]) == pytest.approx((right / 3, right_norm / 3))
    assert (r["items"], r["all_items"], r["cropped_items"]) == (3, True, 1)
    assert "'.' + ending" in r["method"] and list(out) == ["model_sha256", "toy", "val_loss"]
    prov = json.loads((tmp_path / "out/provenance.json").read_text())
    assert [Path(e["path"]).name for e in prov["inputs"]] == [
        "params.safetensors", "toy.jsonl", "manifest.json",
    ]  # fmt: skip
    # The items' own keys name what is wrong.
    (tmp_path / "raw/toy.jsonl").write_text('{"q": "the king", "options": ["a"], "answer": 0}\n')
    with pytest.raises(eval.EvalError, match=r"toy.jsonl:1: options: expected a list of 2 strings"):
        eval.evaluate(cfg, tmp_path / "model", data_dir, tmp_path / "o2",
                      {"toy-data": tmp_path / "raw"})  # fmt: skip


@pytest.mark.parametrize(
    "keys, error",
    [
        ({"kind": '"multiple_choise"'}, r"kind = 'multiple_choise': expected one of"),
        ({"choises": "2"}, r"key = 'choises': expected one of .* \(did you mean 'choices'\?\)"),
        ({"metrics": '["acc", "loss"]'}, r"metrics = \['acc', 'loss'\]: expected a list of some"),
        ({"choices": "1"}, r"choices = 1: expected >= 2"),
        ({"fields": '{context = "q"}'}, r"fields = \{'context': 'q'\}: expected a table of"),
        ({"dataset": '""'}, r"dataset = '': expected a name"),
        ({"kind": '["multiple_choice"]'}, r"kind = \['multiple_choice'\]: expected one of"),
        ({"metrics": '["acc", "acc"]'}, r"metrics = \['acc', 'acc'\]: expected .*, each once"),
        ({"tokenizer": '"gpt3"'}, r"tokenizer = 'gpt3': expected one of \['', 'gpt2', 'char'\]"),
        ({"file": '"/etc/passwd"'}, r"file = '/etc/passwd': expected a name"),
        ({"file": '"data/../../x.jsonl"'}, r"file = 'data/../../x.jsonl': expected a name"),
        ({"dataset": '"../toy-data"'}, r"dataset = '../toy-data': expected a name"),
    ],
)
def test_a_malformed_task_file_is_refused_naming_file_and_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keys: dict, error: str
) -> None:
    monkeypatch.setenv("NANOGPTX_TASKS", str(tmp_path / "tasks"))
    monkeypatch.setattr(evaltasks, "REGISTRY", {})
    path = toy_task(tmp_path / "tasks", **keys)
    with pytest.raises(config.ConfigError, match=rf"eval.tasks: {re.escape(str(path))}: {error}"):
        config.load(None, ['eval.tasks=["toy"]'])
    with pytest.raises(config.ConfigError, match=r"eval.tasks = 'toi': expected one of \['toy'\]"):
        config.load(None, ['eval.tasks=["toi"]'])


def test_the_task_registry_lists_task_names_only_and_follows_nanogptx_tasks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`my task.toml` was listed and offered in messages, and get() kept the tasks of the
    first $NANOGPTX_TASKS for the whole process."""
    monkeypatch.setattr(evaltasks, "REGISTRY", {})
    for label in ("first", "second"):
        monkeypatch.setenv("NANOGPTX_TASKS", str(tmp_path / label))
        toy_task(tmp_path / label, label=f'"{label}"')
        (tmp_path / label / "my task.toml").write_text((tmp_path / label / "toy.toml").read_text())
        assert evaltasks.names() == ["toy"]
        assert evaltasks.get("toy").label == label
    with pytest.raises(evaltasks.TaskError, match=r"known tasks: toy \("):
        evaltasks.get("my task")


@pytest.mark.parametrize(
    "keys, error",
    [
        ({}, r"dataset = 'toy-data': unknown dataset 'toy-data'"),
        ({"split": '"tset"'}, r"split = 'tset': expected one of \['train', 'val'\]"),
    ],
)
def test_a_task_naming_what_is_not_there_is_refused_when_the_config_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keys: dict, error: str
) -> None:
    """A dataset the registry lacks, a split prepare never writes: refused with the run's
    config, not by its eval job after the training."""
    monkeypatch.setenv("NANOGPTX_TASKS", str(tmp_path / "tasks"))
    monkeypatch.setattr(evaltasks, "REGISTRY", {})
    toy_dataset(tmp_path / "datasets", monkeypatch)
    (tmp_path / "datasets/toy-data.toml").unlink()
    path = toy_task(tmp_path / "tasks")
    if keys:  # a split_loss task
        path.write_text('about = "a"\nkind = "split_loss"\nlabel = "b"\nmetrics = ["loss"]\n'
                        + "".join(f"{k} = {v}\n" for k, v in keys.items()))  # fmt: skip
    with pytest.raises(config.ConfigError, match=rf"{re.escape(str(path))}: {error}"):
        config.load(None, ['eval.tasks=["toy"]'])
    if not keys:  # the same through a group (eval.tasks = ["core"] names only the group)
        toy_task(tmp_path / "tasks", style='"core"', baseline="50.0", shots="0",
                 metrics='["acc", "centered"]')  # fmt: skip
        (tmp_path / "tasks/grp.toml").write_text(
            'about = "g"\nkind = "group"\nlabel = "G"\ntasks = ["toy"]\nmetrics = ["core"]\n'
        )
        monkeypatch.setattr(evaltasks, "REGISTRY", {})
        with pytest.raises(config.ConfigError, match=rf"{re.escape(str(path))}: {error}"):
            config.load(None, ['eval.tasks=["grp"]'])
    if not keys:  # the dataset there; a file of its directory (an archive's, extracted)
        toy_dataset(tmp_path / "datasets", monkeypatch)
        toy_task(tmp_path / "tasks", file='"bundle/data/toy.jsonl"')
        monkeypatch.setattr(evaltasks, "REGISTRY", {})
        assert config.load(None, ['eval.tasks=["toy"]']).eval.tasks == ("toy",)
