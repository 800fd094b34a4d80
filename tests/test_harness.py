"""The lm-evaluation-harness model "nanogptx" (the harness extra), offline: harness tasks defined
here from local jsonl files run through the harness's simple_evaluate on a tiny model directory;
multiple choice against the eval stage's scorer and a direct computation from model.forward,
rolling log-likelihood against the training loss over the same windows, greedy generation
against sample.py's, and the command line on eight devices against one."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nanogptx import checkpoint, config, eval, evaltasks, model, sample, tokenizer

# The harness's datasets never look for the hub: the tasks' data are local files.
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_CACHE", tempfile.mkdtemp(prefix="nanogptx-hf-datasets-"))
lm_eval = pytest.importorskip(
    "lm_eval", reason="lm-evaluation-harness is the harness extra: pip install -e '.[harness]'"
)
from lm_eval.tasks import TaskManager  # noqa: E402

from nanogptx import harness  # noqa: E402
from tinymodels import random_gpt2_model  # noqa: E402

L = 32  # the tiny model's block_size: several items below are longer
CONTEXTS = [
    "A man is standing in a kitchen. He", "The cat looked at the window and then",
    "After the rain stopped, the children", "She picked up the guitar and",
    "In the morning the old king", "Two dogs are playing in a park; one of them",
]  # fmt: skip
ENDINGS = [
    "went to the market and bought bread.", "sat down.", "flew over the moon at night, singing.",
    "opened the door", "closed it again and left the room quietly.", "ran.",
]  # fmt: skip
LONG = " ".join(CONTEXTS)  # about 50 tokens: cut from the left


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, gpt2_offline: None) -> tuple:
    """A random model in GPT-2 tokens (block_size 32) written as the train stage writes one, its
    weights scaled up so that its choices are far from ties; (model dir, params, config)."""
    return random_gpt2_model(tmp_path_factory.mktemp("harness"), 2, L, 3)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_task(tasks: Path, name: str, data: Path, **keys: object) -> None:
    """A harness task over a local jsonl file (its whole file the test split)."""
    entry = {
        "task": name, "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}}, "test_split": "test", **keys,
    }  # fmt: skip
    tasks.mkdir(parents=True, exist_ok=True)
    (tasks / f"{name}.yaml").write_text(json.dumps(entry))  # JSON is YAML


def choice_task(tasks: Path, data: Path) -> list[dict]:
    """nx_choice: HellaSwag's items (the eval stage's file name, in data), two of them longer
    than the model's window; its items."""
    rng = np.random.default_rng(0)
    items = []
    for i in range(9):
        ends = [ENDINGS[j] for j in rng.choice(len(ENDINGS), 4, replace=False)]
        ctx = LONG[7 * i :] if i >= 7 else CONTEXTS[i % len(CONTEXTS)]
        items.append({"ctx": ctx, "endings": ends, "label": int(rng.integers(4))})
    path = write_jsonl(data / evaltasks.get("hellaswag").options["file"], items)
    write_task(tasks, "nx_choice", path, output_type="multiple_choice",
               doc_to_text="{{ctx}}", doc_to_choice="{{endings}}", doc_to_target="{{label}}",
               metric_list=[{"metric": "acc"}, {"metric": "acc_norm"}])  # fmt: skip
    return items


def rolling_task(tasks: Path, tok: tokenizer.GPT2Tokenizer) -> list[str]:
    """nx_rolling: texts shorter than the window, exactly three windows, and three and a bit."""
    words = " ".join(CONTEXTS + ENDINGS).split()
    texts = [" ".join(words[:5])]
    for n in (3 * L, 3 * L + 11):
        ids, k = [], 1
        while len(ids) < n:
            ids = tok.encode(" ".join((words * 9)[:k]))
            k += 1
        texts.append(tok.decode(ids[:n]))
    assert [len(tok.encode(t)) for t in texts][1:] == [3 * L, 3 * L + 11]
    path = write_jsonl(tasks.parent / "rolling.jsonl", [{"text": t} for t in texts])
    write_task(tasks, "nx_rolling", path, output_type="loglikelihood_rolling",
               doc_to_text="", doc_to_target="{{text}}",
               metric_list=[{"metric": "word_perplexity"}])  # fmt: skip
    return texts


def generate_task(tasks: Path, prompts: list[str], answers: list[str], stop: str, S: int) -> None:
    """nx_generate: greedy, up to S tokens, until the stop string."""
    rows = [{"prompt": p, "answer": a} for p, a in zip(prompts, answers, strict=True)]
    path = write_jsonl(tasks.parent / "generate.jsonl", rows)
    write_task(tasks, "nx_generate", path, output_type="generate_until",
               doc_to_text="{{prompt}}", doc_to_target="{{answer}}",
               generation_kwargs={"until": [stop], "max_gen_toks": S, "do_sample": False},
               metric_list=[{"metric": "exact_match"}])  # fmt: skip


def run(lm: harness.NanoGPTX, tasks: Path, names: list[str]) -> dict:
    return lm_eval.simple_evaluate(
        model=lm, tasks=names, log_samples=True, bootstrap_iters=0,
        task_manager=TaskManager(include_path=str(tasks), include_defaults=False),
    )  # fmt: skip


def logprobs(params: dict, m: object, rows: list[list[int]], spans: list[int]) -> np.ndarray:
    """The summed log-probability of the last spans[i] tokens of each row, each row cut to its
    last block_size + 1 tokens: model.forward's logits (rows right-padded: causal), then numpy
    in float64."""
    rows = [row[-(L + 1) :] for row in rows]
    ids = np.zeros((len(rows), L), np.int32)
    for i, row in enumerate(rows):
        ids[i, : len(row) - 1] = row[:-1]
    logits = np.asarray(model.forward(params, jnp.asarray(ids), m))
    out = []
    for i, (row, n) in enumerate(zip(rows, spans, strict=True)):
        at = np.arange(len(row) - n - 1, len(row) - 1)  # the positions predicting the span
        z = logits[i, at].astype(np.float64)
        top = z.max(-1, keepdims=True)
        logz = top[:, 0] + np.log(np.exp(z - top).sum(-1))
        out.append((z[np.arange(n), np.asarray(row)[at + 1]] - logz).sum())
    return np.array(out)


def test_multiple_choice_and_rolling_equal_the_eval_stage_and_direct_computations(
    tiny: tuple, tmp_path: Path
) -> None:
    model_dir, params, m = tiny
    tok = tokenizer.gpt2()
    items = choice_task(tmp_path / "tasks", tmp_path / "hs")
    assert sum(len(tok.encode(it["ctx"])) > L for it in items) == 2  # cut from the left
    texts = rolling_task(tmp_path / "tasks", tok)
    out = run(harness.NanoGPTX(model=str(model_dir), batch_size=3), tmp_path / "tasks",
              ["nx_choice", "nx_rolling"])  # fmt: skip

    # Multiple choice: each choice's log-likelihood as model.forward gives it.
    samples = sorted(out["samples"]["nx_choice"], key=lambda s: s["doc_id"])
    got = np.array([[r[0][0] for r in s["resps"]] for s in samples])
    rows = [tok.encode(it["ctx"]) + tok.encode(" " + e) for it in items for e in it["endings"]]
    spans = [len(tok.encode(" " + e)) for it in items for e in it["endings"]]
    direct = logprobs(params, m, rows, spans).reshape(len(items), 4)
    np.testing.assert_allclose(got, direct, rtol=1e-5, atol=1e-4)
    labels = np.array([it["label"] for it in items])
    r = out["results"]["nx_choice"]
    assert r["acc,none"] == pytest.approx((direct.argmax(1) == labels).mean())
    # acc_norm: the harness divides by the choice's length in characters, not in tokens.
    chars = np.array([[len(e) for e in it["endings"]] for it in items])
    assert r["acc_norm,none"] == pytest.approx(((direct / chars).argmax(1) == labels).mean())
    # The eval stage scores the same file as the HellaSwag kind: acc the same rule, its acc_norm
    # the mean per token.
    cfg = config.load(None, ['eval.tasks=["hellaswag"]', "eval.batch_size=2"])
    stage = eval.evaluate(cfg, model_dir, None, tmp_path / "eval", {"hellaswag": tmp_path / "hs"})
    tokens = np.array(spans).reshape(len(items), 4)
    assert stage["hellaswag"]["acc"] == pytest.approx(r["acc,none"])
    assert stage["hellaswag"]["acc_norm"] == pytest.approx(
        ((got / tokens).argmax(1) == labels).mean()
    )

    # Rolling: windows of block_size predicted tokens, the first after the end-of-text token.
    rolled = {s["doc_id"]: s["resps"][0][0] for s in out["samples"]["nx_rolling"]}
    eot = tok.eot_token
    ids = [eot, *tok.encode(texts[1])]  # three whole windows: the training loss's tiling
    x = np.array([ids[w * L : w * L + L + 1] for w in range(3)])
    loss, _ = model.loss_fn(params, jnp.asarray(x[:, :-1]), jnp.asarray(x[:, 1:]), m)
    assert rolled[1] == pytest.approx(-float(loss) * 3 * L, rel=1e-5)
    for i in (0, 2):
        t = tok.encode(texts[i])
        rows = [[eot, *t][w * L : w * L + L + 1] for w in range(len(t) // L)]
        spans = [L] * len(rows)
        if len(t) % L:  # the rest, after the block_size tokens before it
            rows.append([eot, *t][-(L + 1) :])
            spans.append(len(t) % L)
        assert rolled[i] == pytest.approx(logprobs(params, m, rows, spans).sum(), rel=1e-5)


def test_greedy_generation_equals_sample_py_and_stops_at_the_stop_string(
    tiny: tuple, tmp_path: Path
) -> None:
    model_dir, params, m = tiny
    tok = tokenizer.gpt2()
    S = 6
    prompts = [CONTEXTS[0], CONTEXTS[3], LONG, "The"]  # LONG: cut to its last L - S tokens
    s = dataclasses.replace(config.load(None).sample, max_new_tokens=S, num_samples=1, top_k=1)

    def greedy(prompt: str) -> list[int]:
        ids = tok.encode(prompt)[-(L - S) :]
        return sample.generate(jax.tree.map(jnp.asarray, params), ids, m, s)[0].tolist()

    reference = [greedy(p) for p in prompts]
    stop = tok.decode(reference[0][2:3])  # the first prompt's third token: stops it there
    assert stop.strip() and all(len(set(r)) > 1 for r in reference)
    expected = [tok.decode(r).split(stop)[0] for r in reference]
    generate_task(tmp_path / "tasks", prompts, expected, stop, S)
    out = run(harness.NanoGPTX(model=str(model_dir), batch_size=3), tmp_path / "tasks",
              ["nx_generate"])  # fmt: skip
    got = {s["doc_id"]: s["resps"][0][0] for s in out["samples"]["nx_generate"]}
    assert [got[i] for i in range(len(prompts))] == expected
    assert len(tok.encode(expected[0])) == 2  # stopped before the stop string
    assert out["results"]["nx_generate"]["exact_match,none"] == 1.0


@pytest.mark.slow
def test_the_command_line_on_eight_devices_equals_one_device(tiny: tuple, tmp_path: Path) -> None:
    """python -m nanogptx.harness (lm_eval's command line with the model registered) on eight
    CPU devices, each call's rows split over them, against this process's one device."""
    model_dir, _, _ = tiny
    tasks = tmp_path / "tasks"
    choice_task(tasks, tmp_path / "hs")
    rolling_task(tasks, tokenizer.gpt2())
    generate_task(tasks, [*CONTEXTS, LONG], [""] * 7, ".", 6)
    names = ["nx_choice", "nx_rolling", "nx_generate"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    proc = subprocess.Popen(
        [sys.executable, "-m", "nanogptx.harness", "--model", "nanogptx",
         "--model_args", f"model={model_dir}", "--tasks", ",".join(names),
         "--include_path", str(tasks), "--batch_size", "5", "--log_samples",
         "--output_path", str(tmp_path / "out")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    one = run(harness.NanoGPTX(model=str(model_dir), batch_size=3), tasks, names)
    output = proc.communicate(timeout=600)[0].decode()
    assert proc.returncode == 0, output
    assert "nx_choice" in output and "acc_norm" in output  # lm_eval's results table
    for name in names:
        [path] = (tmp_path / "out").rglob(f"samples_{name}_*.jsonl")
        eight = {s["doc_id"]: s["resps"] for s in map(json.loads, path.read_text().splitlines())}
        ref = {s["doc_id"]: s["resps"] for s in one["samples"][name]}
        assert eight.keys() == ref.keys()
        for doc, resps in ref.items():
            if name == "nx_generate":
                assert eight[doc] == resps
            else:
                # Log-likelihoods: (value, is_greedy) each, written as strings; rolling: a value.
                def value(r: list) -> float:
                    return float(r[0][0] if isinstance(r[0], list | tuple) else r[0])

                np.testing.assert_allclose(
                    [value(r) for r in eight[doc]], [value(r) for r in resps], rtol=1e-5
                )
    config = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())["config"]
    assert config["model_sha256"] == checkpoint.check_model_hash(model_dir)
    assert config["devices"].count("CPU") == 8 or config["devices"].count("cpu") == 8


def test_what_the_model_cannot_serve_is_refused_by_name(tiny: tuple, tmp_path: Path) -> None:
    from lm_eval.api.instance import Instance

    model_dir, params, m = tiny
    with pytest.raises(harness.HarnessError, match=r"unknown pretrained: .* takes model=DIR"):
        harness.NanoGPTX(model=str(model_dir), pretrained="gpt2")
    with pytest.raises(harness.HarnessError, match=r"batch_size = 'auto': give a number"):
        harness.NanoGPTX(model=str(model_dir), batch_size="auto")
    lm = harness.NanoGPTX(model=str(model_dir))

    def ask(kind: str, *args: object) -> Instance:
        return Instance(request_type=kind, doc={}, arguments=args, idx=0)

    with pytest.raises(harness.HarnessError, match="decodes greedily only"):
        lm.generate_until([ask("generate_until", "The", {"do_sample": True, "temperature": 1})])
    with pytest.raises(harness.HarnessError, match=f"max_gen_toks = {L} leaves no room"):
        lm.generate_until([ask("generate_until", "The", {"max_gen_toks": L, "until": ["."]})])
    with pytest.raises(harness.HarnessError, match=f"continuation of {L + 1} tokens"):
        lm.loglikelihood([ask("loglikelihood", "The", " a" * (L + 1))])
    # A character model has no end-of-text token to predict a text's first character after.
    chars = tokenizer.CharTokenizer(" abcdefghijklmnopqrstuvwxyz")
    c = config.load(None, ["model.n_layer=1", "model.n_head=1", "model.n_embd=8",
                           f"model.block_size={L}", f"model.vocab_size={chars.vocab_size}"],
                    )  # fmt: skip
    char_params = model.init_params(c.model, chars.vocab_size, jax.random.key(0))
    checkpoint.save_model(tmp_path / "char", char_params, c, chars.identity(), 0)
    lm = harness.NanoGPTX(model=str(tmp_path / "char"))
    assert lm.loglikelihood([ask("loglikelihood", "the king", " and")])[0][0] < 0
    with pytest.raises(harness.HarnessError, match="char tokenizer has no end-of-text token"):
        lm.loglikelihood_rolling([ask("loglikelihood_rolling", "the king")])


def test_an_empty_context_is_scored_after_the_end_of_text_token(tiny: tuple) -> None:
    """A context of white space only: the harness moves its spaces into the continuation and
    passes no context token; the first continuation token is predicted after end-of-text, as
    for an empty context, never from a position before the row."""
    from lm_eval.api.instance import Instance

    model_dir, params, m = tiny
    lm = harness.NanoGPTX(model=str(model_dir))
    cont = lm.tok_encode("   the king rode on")
    (got, _), (empty, _) = lm.loglikelihood(
        [Instance(request_type="loglikelihood", doc={}, arguments=a, idx=0)
         for a in [("   ", "the king rode on"), ("", "   the king rode on")]]
    )  # fmt: skip
    want = logprobs(params, m, [[lm.eot_token_id, *cont]], [len(cont)])[0]
    assert got == pytest.approx(want, abs=1e-3) and empty == pytest.approx(got, abs=1e-4)


@pytest.mark.parametrize(
    "args, error",
    [
        ({"batch_size": 0}, r"batch_size = 0: give a number of rows per call"),
        ({"batch_size": -4}, r"batch_size = -4: give a number of rows per call"),
        ({"max_gen_toks": "many"}, r"max_gen_toks = 'many': give a whole number >= 0"),
        ({"max_gen_toks": -1}, r"max_gen_toks = -1: give a whole number >= 0"),
    ],
)
def test_bad_model_args_are_refused_by_name(tiny: tuple, args: dict, error: str) -> None:
    with pytest.raises(harness.HarnessError, match=error):
        harness.NanoGPTX(model=str(tiny[0]), **args)


def test_a_negative_max_gen_toks_of_a_request_is_refused(tiny: tuple) -> None:
    from lm_eval.api.instance import Instance

    lm = harness.NanoGPTX(model=str(tiny[0]))
    ask = Instance(request_type="generate_until", doc={}, idx=0,
                   arguments=("The", {"max_gen_toks": -2, "until": ["."]}))  # fmt: skip
    with pytest.raises(harness.HarnessError, match=r"max_gen_toks = -2: give a whole number"):
        lm.generate_until([ask])
