"""CORE's in-context tasks (nanogptx.icl): each kind's scores against an independent scorer
written here (plain numpy over the logits of model.forward, one row at a time, with its own
rendering, spans, cut and argmin), on items built for the purpose; the centered accuracy and
the CORE of a group; the baseline checked against the bundle's CSV; bad task files and items."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nanogptx import (
    checkpoint,
    config,
    eval,
    evaltasks,
    icl,
    model,
    report,
    spans,
    status,
    tokenizer,
)
from tinymodels import random_gpt2_model

L = 48  # the tiny model's block_size: few-shot prompts outgrow it
CSV = "Eval Task,Task Category,Task Type,#shots,Random baseline,Centered Metric?\n"
FIELDS = {
    "multiple_choice": '{context = "query", choices = "choices", label = "gold"}',
    "schema": '{contexts = "context_options", continuation = "continuation", label = "gold"}',
    "language_modeling": '{context = "context", continuation = "continuation"}',
}
# Items built for the purpose: choices with shared prefixes (" the red"), contexts with a shared
# suffix (" said that she"), a context long enough to be cut from the left on its own.
MC = [
    {"query": "Where do fish go?", "choices": ["in the sea", "in the sky", "in trees"], "gold": 0},
    {"query": "What colour is grass?", "choices": ["the red one", "the green one"], "gold": 1},
    {"query": "Which is a pet?", "choices": ["a dog", "a cloud", "a rock", "a dogma"], "gold": 0},
    {"query": "What do you drink?", "choices": ["water", "sand", "water, cold"], "gold": 0},
    {"query": "Question: " + "the king rode on and on " * 8 + "and then he", "choices":
     ["stopped.", "flew away over the hills."], "gold": 0},
    {"query": "How many legs has a cat?", "choices": ["four", "four hundred", "two"], "gold": 0},
    {"query": "What is hot?", "choices": ["the sun", "the snow", "the sunny ice"], "gold": 0},
]  # fmt: skip
SCHEMA = [
    {"context_options": ["Anna thanked Bea because Anna", "Anna thanked Bea because Bea"],
     "continuation": "had helped her.", "gold": 1},
    {"context_options": ["The cup fell off the table and the cup", "The cup fell off the table "
     "and the table"], "continuation": "broke.", "gold": 0},
    {"context_options": ["Tom said that he", "Tim said that he", "Ted said that he"],
     "continuation": "was tired of it all.", "gold": 2},
    {"context_options": ["The man " * 12 + "said that she", "The woman " * 12 + "said that she"],
     "continuation": "would come.", "gold": 1},
    {"context_options": ["It rained, so we", "It was sunny, so we"], "continuation": "stayed in.",
     "gold": 0},
]  # fmt: skip
LM = [
    {"context": "The capital of France is ", "continuation": "Paris"},
    {"context": "One, two, three,", "continuation": "four"},
    {"context": "  Roses are red, violets are  ", "continuation": "blue"},
    {"context": "A B C D E F", "continuation": "G H"},
    {"context": "The quick brown fox jumps over the lazy", "continuation": "dog"},
    {"context": "Count: " + "one two " * 14, "continuation": "one"},
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, gpt2_offline: None) -> tuple[Path, dict]:
    """A tiny random model in GPT-2 tokens (block_size 48), its weights scaled up so that its
    choices differ clearly."""
    model_dir, params, _ = random_gpt2_model(tmp_path_factory.mktemp("core-model"), 1, L, 7)
    return model_dir, params


def registry(root: Path, tasks: dict[str, dict], group: list[str] | None = None) -> Path:
    """A registry of in-context tasks (files from their keys) and a group "core" of them."""
    root.mkdir(parents=True, exist_ok=True)
    for name, keys in tasks.items():
        kind = keys["kind"]
        entry = {"about": '"a test task"', "label": f'"{keys.get("label", name)}"',
                 "dataset": '"eval-bundle"', "file": f'"eval_bundle/eval_data/{name}.jsonl"',
                 "fields": FIELDS[kind], "metrics": '["acc", "centered", "items", "shots"]',
                 "baselines": '"eval_bundle/eval_meta_data.csv"', "bos": "true",
                 **({"style": '"core"'} if kind == "multiple_choice" else {}),
                 **{k: v for k, v in keys.items() if k != "label"}}  # fmt: skip
        entry["kind"] = f'"{kind}"'
        (root / f"{name}.toml").write_text("".join(f"{k} = {v}\n" for k, v in entry.items()))
    if group:
        (root / "core.toml").write_text(
            'about = "the group"\nkind = "group"\nlabel = "CORE"\n'
            f'tasks = {json.dumps(group)}\nmetrics = ["core", "core_partial"]\n'
        )
    return root


def bundle(root: Path, files: dict[str, list[dict]], baselines: dict[str, float]) -> Path:
    """A bundle directory as the eval-bundle dataset's download extracts it."""
    data = root / "eval_bundle" / "eval_data"
    data.mkdir(parents=True, exist_ok=True)
    for name, items in files.items():
        (data / f"{name}.jsonl").write_text("".join(json.dumps(it) + "\n" for it in items))
    rows = "".join(f"{k},cat,type,0,{v},yes\n" for k, v in baselines.items())
    (root / "eval_bundle" / "eval_meta_data.csv").write_text(CSV + rows)
    return root


@pytest.fixture
def use_registry(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("NANOGPTX_TASKS", str(tmp_path / "tasks"))
    monkeypatch.setattr(evaltasks, "REGISTRY", {})
    return tmp_path / "tasks"


# ---------------------------------------------------------------- the independent scorer


def reference(kind: str, data: list[dict], shots: int, delim: str, params: dict, m) -> list:
    """Per item: True/False (right or wrong), or "cut" (a span without a token before it in
    the window). Written from the rules, not from nanogptx.icl: shuffle with 1337, examples
    with Random(1234 + i), prompts as strings, spans by comparing token lists, rows cut to
    the last L + 1 tokens, one row at a time through model.forward (right-padded), numpy
    log-softmax, the first lowest mean loss (or greedy equality)."""
    enc = tokenizer.gpt2()
    forward = jax.jit(lambda p, ids: model.forward(p, ids, m))
    data = list(data)
    random.Random(1337).shuffle(data)
    out = []
    for i, item in enumerate(data):
        others = [j for j in range(len(data)) if j != i]
        ex = [data[j] for j in random.Random(1234 + i).sample(others, shots)] if shots else []
        if kind == "multiple_choice":
            head = "".join(e["query"] + delim + e["choices"][e["gold"]] + "\n\n" for e in ex)
            rows = [[50256] + enc.encode(head + item["query"] + delim + c) for c in item["choices"]]
            p = 0
            while all(len(r) > p for r in rows) and len({r[p] for r in rows}) == 1:
                p += 1
            starts = [p] * len(rows)
        elif kind == "schema":
            head = "".join(e["context_options"][e["gold"]] + delim + e["continuation"] + "\n\n"
                           for e in ex)  # fmt: skip
            rows = [[50256] + enc.encode(head + c + delim + item["continuation"])
                    for c in item["context_options"]]  # fmt: skip
            k = 0
            while all(len(r) > k for r in rows) and len({r[-1 - k] for r in rows}) == 1:
                k += 1
            starts = [len(r) - k for r in rows]
        else:
            head = "".join(e["context"].strip() + delim + e["continuation"] + "\n\n" for e in ex)
            text = head + item["context"].strip() + delim
            short = [50256] + enc.encode(text.strip())
            rows = [[50256] + enc.encode(text + item["continuation"])]
            assert rows[0][: len(short)] == short
            starts = [len(short)]
        losses, greedy = [], True
        for row, start in zip(rows, starts, strict=True):
            drop = max(0, len(row) - (L + 1))
            row, start = row[drop:], start - drop
            if start < 1:
                break
            ids = np.zeros((1, L), np.int32)
            ids[0, : len(row) - 1] = row[:-1]
            logits = np.asarray(forward(params, jnp.asarray(ids)), np.float64)[0, : len(row) - 1]
            logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1,
                   keepdims=True)) - logits.max(-1, keepdims=True)  # fmt: skip
            pos, target = np.arange(start - 1, len(row) - 1), np.array(row[start:])
            losses.append(-logp[pos, target].mean())
            greedy = greedy and bool((logits[pos].argmax(-1) == target).all())
        if len(losses) < len(rows):
            out.append("cut")
        elif kind == "language_modeling":
            out.append(greedy)
        else:
            out.append(losses.index(min(losses)) == item["gold"])
    return out


def greedy_item(params: dict, m) -> dict:
    """A language-modeling item whose continuation is the model's greedy next token (one whose
    text starts with the delimiter " " and tokenizes back to itself)."""
    enc = tokenizer.gpt2()
    for i in range(200):
        context = f"Item {i}: the answer is"
        ids = [50256, *enc.encode(context)]
        g = int(np.asarray(model.forward(params, jnp.asarray([ids]), m))[0, -1].argmax())
        text = enc.decode([g])
        if text.startswith(" ") and enc.encode(context + text) == ids[1:] + [g]:
            return {"context": context, "continuation": text[1:]}
    raise AssertionError("no greedy token of the tiny model tokenizes back to itself")


def run(tasks: list[str], model_dir: Path, root: Path, out: Path, *over: str) -> dict:
    cfg = config.load(None, [f"eval.tasks={json.dumps(tasks)}", "eval.batch_size=2", *over])
    return eval.evaluate(cfg, model_dir, None, out, {"eval-bundle": root})


# ---------------------------------------------------------------- the tests


@pytest.mark.parametrize(
    "kind, items, shots, delim",
    [
        ("multiple_choice", MC, 0, " "),
        ("multiple_choice", MC, 3, "\nAnswer: "),  # 3-shot: prompts cut from the left
        ("schema", SCHEMA, 0, " "),
        ("schema", SCHEMA, 2, " "),
        ("language_modeling", LM, 0, " "),
        ("language_modeling", LM, 2, "\nAnswer: "),
    ],
)
def test_each_kind_scores_as_an_independent_scorer(
    tiny: tuple[Path, dict], use_registry: Path, tmp_path: Path,
    kind: str, items: list, shots: int, delim: str,
) -> None:  # fmt: skip
    model_dir, params = tiny
    m = checkpoint.load_model(model_dir)[1].model
    if kind == "language_modeling" and not shots:  # one the model gets right
        items = [*items, greedy_item(params, m)]
    keys = {"kind": kind, "shots": str(shots), "delimiter": json.dumps(delim), "baseline": "20.0"}
    if kind != "language_modeling":
        keys["choices"] = "4"
    registry(use_registry, {"t": keys})
    root = bundle(tmp_path / "b", {"t": items}, {"t": 20.0})
    r = run(["t"], model_dir, root, tmp_path / "out")["t"]
    want = reference(kind, items, shots, delim, params, m)
    assert True in want or kind == "language_modeling" and shots  # not all wrong
    right = sum(w is True for w in want)
    assert (r["acc"], r["items"], r["shots"]) == (right / len(items), len(items), shots)
    assert r["unscored_items"] == want.count("cut")
    assert r["centered"] == pytest.approx((right / len(items) - 0.2) / 0.8)
    assert r["all_items"] and r["cropped_items"] >= (1 if shots else 0)
    assert "in-context, as CORE" in r["method"]


def test_a_model_with_uniform_logits_ties_every_choice_and_the_first_wins(
    tiny: tuple[Path, dict], use_registry: Path, tmp_path: Path
) -> None:
    """wte = 0 (the head is tied): every token gets the same logit, so every choice's mean
    loss is the same (ties: the first wins, nanochat's min) and greedy decoding gives token 0
    ("!") everywhere (a continuation "!" is right, any other wrong)."""
    model_dir, params = tiny
    flat = {**params, "wte": jnp.zeros_like(params["wte"])}
    cfg, tok = checkpoint.load_model(model_dir)[1:]
    checkpoint.save_model(tmp_path / "flat", flat, cfg, tok, 0)
    mc = [dict(it, gold=g) for it, g in zip(MC, [0, 1, 0, 2, 1, 0, 0], strict=True)]
    lm = [{"context": "Wow", "continuation": "!"}, {"context": "Hey", "continuation": "!"},
          {"context": "Wow", "continuation": "?"}]  # fmt: skip
    registry(use_registry, {
        "mc": {"kind": "multiple_choice", "choices": "4", "baseline": "25.0"},
        "lm": {"kind": "language_modeling", "delimiter": '""', "baseline": "0.0"},
    })  # fmt: skip
    root = bundle(tmp_path / "b", {"mc": mc, "lm": lm}, {"mc": 25, "lm": 0})
    out = run(["mc", "lm"], tmp_path / "flat", root, tmp_path / "out")
    assert out["mc"]["acc"] == pytest.approx(4 / 7)  # the items whose gold is 0
    assert out["lm"]["acc"] == pytest.approx(2 / 3)


def test_a_span_longer_than_the_window_is_counted_wrong_unscored(
    tiny: tuple[Path, dict], use_registry: Path, tmp_path: Path
) -> None:
    """A continuation of more than block_size tokens keeps no token before it in the window:
    the item is counted wrong (as a model that cannot see it), not refused, and said so."""
    long = {"context": "Say it:", "continuation": " ".join(["again"] * (L + 5))}
    registry(use_registry, {"lm": {"kind": "language_modeling", "baseline": "0.0"}})
    root = bundle(tmp_path / "b", {"lm": [*LM[:3], long]}, {"lm": 0})
    r = run(["lm"], tiny[0], root, tmp_path / "out")["lm"]
    assert (r["items"], r["unscored_items"], r["cropped_items"]) == (4, 1, 1)
    assert r["acc"] <= 3 / 4


def test_a_choice_whose_tokens_every_other_shares_is_counted_wrong_unscored(
    tiny: tuple[Path, dict], use_registry: Path, tmp_path: Path
) -> None:
    """The choices "a dog" and "a dog food": their common prefix is all of the first, which
    leaves it no token to score. The item is counted wrong and said so (nanochat averages an
    empty span to nan), and the task goes on: one such item must not stop CORE."""
    shared = {"query": "Which?", "choices": ["a dog", "a dog food"], "gold": 0}
    registry(use_registry, {"mc": {"kind": "multiple_choice", "baseline": "0.0", "choices": "4"}})
    root = bundle(tmp_path / "b", {"mc": [*MC[:3], shared]}, {"mc": 0})
    r = run(["mc"], tiny[0], root, tmp_path / "out")["mc"]
    assert (r["items"], r["unscored_items"]) == (4, 1)
    assert r["acc"] <= 3 / 4


@pytest.mark.parametrize(
    "kind, line, error",
    [
        ("language_modeling", {"context": "Hello", "continuation": ""},
         r":2: continuation is empty"),
        ("language_modeling", {"context": "Hello"}, r":2: key 'continuation' is missing"),
        ("multiple_choice", {"query": "Q", "choices": ["same", "same"], "gold": 0},
         r":2: choices\[0\] and choices\[1\] are the same text \('same'\)"),
        ("multiple_choice", {"query": "Q", "choices": ["a dog", ""], "gold": 0},
         r":2: choices\[1\] is empty: it is scored"),
        ("multiple_choice", {"query": "Q", "choices": ["a"] * 5, "gold": 0},
         r":2: choices: expected a list of 2 to 4 strings \(choices = 4"),
        ("multiple_choice", {"query": "Q", "choices": ["a", "b"], "gold": 2},
         r":2: gold: expected 0 to 1, got 2"),
        ("schema", {"context_options": ["A", "B"], "continuation": "", "gold": 0},
         r":2: continuation is empty"),
        ("schema", {"context_options": ["A b", "A b"], "continuation": "c", "gold": 0},
         r":2: context_options\[0\] and context_options\[1\] are the same text \('A b'\)"),
    ],
)  # fmt: skip
def test_a_bad_item_is_refused_naming_file_and_line_before_any_work(
    tiny: tuple[Path, dict], use_registry: Path, tmp_path: Path, kind: str, line: dict, error: str
) -> None:
    good = {"language_modeling": LM[0], "multiple_choice": MC[0], "schema": SCHEMA[0]}[kind]
    keys = {"kind": kind, "baseline": "0.0"}
    if kind != "language_modeling":
        keys["choices"] = "4"
    registry(use_registry, {"t": keys})
    root = bundle(tmp_path / "b", {"t": [good, line]}, {"t": 0})
    with pytest.raises(eval.EvalError, match=rf"t\.jsonl{error}"):
        run(["t"], tiny[0], root, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_items_file_with_a_byte_order_mark_and_crlf_lines_reads_as_without(
    use_registry: Path, tmp_path: Path
) -> None:
    registry(use_registry, {"t": {"kind": "schema", "choices": "3"}})
    task = evaltasks.get("t")
    plain = bundle(tmp_path / "plain", {"t": SCHEMA}, {})
    path = bundle(tmp_path / "bom", {"t": SCHEMA}, {}) / "eval_bundle/eval_data/t.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes().replace(b"\n", b"\r\n"))

    def texts(p: Path) -> list:
        items = spans.read_items(p, task, lambda it, where: icl.check_item(it, task, where))
        return [{k: v for k, v in it.items() if k != "where"} for it in items]

    assert texts(path) == texts(plain / "eval_bundle/eval_data/t.jsonl")
    # A byte order mark anywhere else is a character of the line: refused naming it.
    path.write_bytes(path.read_bytes().replace(b"\r\n", b"\r\n\xef\xbb\xbf", 1))
    with pytest.raises(eval.EvalError, match=r"t\.jsonl:2: not a JSON object"):
        texts(path)


def test_too_few_items_for_the_shots_names_the_file_or_eval_max_items(
    tiny: tuple[Path, dict], use_registry: Path, tmp_path: Path
) -> None:
    registry(use_registry, {"t": {"kind": "language_modeling", "shots": "6"}})
    root = bundle(tmp_path / "b", {"t": LM}, {"t": 0.0})  # 6 items: one short of 6-shot
    path = re.escape(str(root / "eval_bundle" / "eval_data" / "t.jsonl"))
    with pytest.raises(eval.EvalError, match=rf"need at least 7 items, {path} has 6$"):
        run(["t"], tiny[0], root, tmp_path / "out")
    bundle(tmp_path / "b", {"t": LM * 2}, {"t": 0.0})
    # eval.max_items: refused with the run's config, before any job (after training, else)
    with pytest.raises(config.ConfigError, match=r"eval.max_items = 5: t draws 6 few-shot "
                       r"examples per item from the other items kept: expected 0 \(all\) or at "
                       r"least 7"):  # fmt: skip
        run(["t"], tiny[0], root, tmp_path / "out", "eval.max_items=5")
    assert not (tmp_path / "out").exists()


def test_core_is_the_mean_centered_accuracy_and_a_cut_one_is_never_called_core(
    tiny: tuple[Path, dict], use_registry: Path, tmp_path: Path
) -> None:
    registry(use_registry, {
        "a": {"kind": "multiple_choice", "choices": "4", "baseline": "25.0", "shots": "1"},
        "b": {"kind": "schema", "choices": "3", "baseline": "50.0"},
        "c": {"kind": "language_modeling", "baseline": "0.0"},
    }, group=["a", "b", "c"])  # fmt: skip
    root = bundle(tmp_path / "b", {"a": MC, "b": SCHEMA, "c": LM}, {"a": 25, "b": 50, "c": 0})
    out = run(["core"], tiny[0], root, tmp_path / "out")
    assert list(out) == ["model_sha256", "a", "b", "c", "core"]
    centered = [(out["a"]["acc"] - 0.25) / 0.75, (out["b"]["acc"] - 0.5) / 0.5, out["c"]["acc"]]
    assert out["core"]["core"] == pytest.approx(sum(centered) / 3)
    r = out["core"]
    assert (r["tasks"], r["cut"], "core_partial" in r) == (3, False, False)
    # eval.max_items: a fixed random subset of each task (the same as the first items of the
    # whole run's order), and the aggregate is "core_partial", cut.
    cut = run(["core"], tiny[0], root, tmp_path / "cut", "eval.max_items=4")
    assert "core" not in cut["core"] and cut["core"]["cut"] is True
    assert cut["core"]["core_partial"] == pytest.approx(
        np.mean([cut[t]["centered"] for t in "abc"])
    )
    assert [cut[t]["items"] for t in "abc"] == [4, 4, 4] and not cut["a"]["all_items"]
    # The report: a CORE table, the runs side by side, the val loss beside; status: one line.
    out["val_loss"], cut["val_loss"] = {"loss": 3.25}, {"loss": 3.5}
    page = report.evals_html({"full": out, "quick": cut}, "evals")
    assert "<th>full acc</th><th>centered</th><th>quick acc</th><th>centered</th>" in page
    assert f"<td>{out['b']['acc']:.4f}</td><td>{out['b']['centered']:.4f}</td>" in page
    assert f"<b>{out['core']['core']:.4f}</b>" in page
    assert f"<b>{cut['core']['core_partial']:.4f} (cut: not CORE)</b>" in page
    assert "<td>3.2500</td>" in page and "a (1-shot, b = 25%)" in page
    line = status.eval_summary(out)
    assert f"CORE {out['core']['core']:.4f} over 3 tasks" in line
    assert f"b acc {out['b']['acc']:.4f} (centered" in line
    assert "cut CORE" in status.eval_summary(cut)
    # The arithmetic alone.
    assert icl.centered(0.62, 62.0) == 0.0 and icl.centered(1.0, 25.0) == 1.0
    assert icl.centered(0.25, 50.0) == pytest.approx(-0.5)


def test_the_baseline_is_checked_against_the_bundles_csv(
    tiny: tuple[Path, dict], use_registry: Path, tmp_path: Path
) -> None:
    registry(use_registry, {"lm": {"kind": "language_modeling", "baseline": "25.0",
                                   "label": "bigbench_language_identification"}})  # fmt: skip
    root = bundle(tmp_path / "b", {"lm": LM}, {"bigbench_language_identification": 9.1})
    entry = re.escape(str(use_registry / "lm.toml"))
    csv = re.escape(str(root / "eval_bundle" / "eval_meta_data.csv"))
    with pytest.raises(eval.EvalError, match=rf"lm: baseline = 25.0 in {entry}, but {csv} "
                       "gives 9.1 for bigbench_language_identification"):  # fmt: skip
        run(["lm"], tiny[0], root, tmp_path / "out")
    bundle(tmp_path / "b", {"lm": LM}, {"other": 25.0})
    with pytest.raises(eval.EvalError, match=rf"{csv}: no random baseline for 'bigbench_lang"):
        run(["lm"], tiny[0], root, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "table, error",
    [
        # float("nan") is a number that no comparison finds different: CORE would be nan.
        ("lm,cat,type,0,nan,yes\n", r"no random baseline for 'lm' .* got 'nan'"),
        ("lm,cat,type,0,inf,yes\n", r"no random baseline for 'lm' .* got 'inf'"),
        # Two rows of the task: which one holds is an accident of order.
        ("lm,cat,type,0,25.0,yes\nlm,cat,type,0,9.1,yes\n", r"'lm' has 2 rows \(25.0, 9.1\)"),
    ],
)
def test_a_baseline_csv_without_one_number_per_task_is_refused(
    use_registry: Path, tmp_path: Path, table: str, error: str
) -> None:
    registry(use_registry, {"lm": {"kind": "language_modeling", "baseline": "25.0"}})
    root = bundle(tmp_path / "b", {"lm": LM}, {})
    (root / "eval_bundle" / "eval_meta_data.csv").write_text(CSV + table)
    with pytest.raises(eval.EvalError, match=error):
        icl.baseline(evaltasks.get("lm"), root)


def test_a_baseline_csv_saved_with_a_byte_order_mark_or_crlf_reads_as_without(
    use_registry: Path, tmp_path: Path
) -> None:
    registry(use_registry, {"lm": {"kind": "language_modeling", "baseline": "25.0"}})
    root = bundle(tmp_path / "b", {"lm": LM}, {"lm": 25.0})
    path = root / "eval_bundle" / "eval_meta_data.csv"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes().replace(b"\n", b"\r\n"))
    assert icl.baseline(evaltasks.get("lm"), root) == 25.0
    path.write_text(CSV + "lm,cat,type,0,25.0,yes\nlm,other,type,0,25,yes\n")  # alike: one
    assert icl.baseline(evaltasks.get("lm"), root) == 25.0


@pytest.mark.parametrize(
    "keys, error",
    [
        ({"shots": "-1"}, r"shots = -1: expected a whole number >= 0"),
        ({"bos": '"yes"'}, r"bos = 'yes': expected true or false"),
        ({"baseline": "100.0"}, r"baseline = 100.0: expected a percentage >= 0 and < 100"),
        ({"style": '"nanochat"'}, r"style = 'nanochat': expected one of \['llm.c', 'core'\]"),
        ({"style": '"llm.c"', "items": "3"}, r"shots = 3: expected nothing with style = "),
        ({"delimiter": "1"}, r"delimiter = 1: expected a string"),
        ({"shot": "1"}, r"key = 'shot': expected one of .*did you mean 'shots'"),
        # The baselines' CSV is a file of the dataset, as the items' file: never outside it.
        ({"baselines": '"/etc/passwd"'}, r"baselines = '/etc/passwd': expected a name"),
        ({"baselines": '"../other/meta.csv"'}, r"baselines = '../other/meta.csv': expected"),
    ],
)
def test_a_bad_in_context_task_file_names_file_and_key(
    use_registry: Path, keys: dict, error: str
) -> None:
    keys = {"kind": "multiple_choice", "choices": "4", "shots": "3", **keys}
    registry(use_registry, {"t": keys})
    path = re.escape(str(use_registry / "t.toml"))
    with pytest.raises(config.ConfigError, match=rf"eval.tasks: {path}: {error}"):
        config.load(None, ['eval.tasks=["t"]'])


def test_a_group_runs_its_members_and_holds_only_in_context_tasks(use_registry: Path) -> None:
    registry(use_registry, {"a": {"kind": "schema", "choices": "2"}}, group=["a"])
    assert evaltasks.expand(["core", "a"]) == ["a"]
    config.load(None, ['eval.tasks=["core"]'])
    with pytest.raises(config.ConfigError, match=r"BOS token before every row .* character"):
        config.load(None, ['eval.tasks=["core"]', "tokenizer.name=char"])
    (use_registry / "core.toml").write_text(
        'about = "g"\nkind = "group"\nlabel = "g"\ntasks = ["a", "core"]\nmetrics = ["core"]\n'
    )
    evaltasks.REGISTRY.clear()
    with pytest.raises(config.ConfigError, match=r"core.toml: tasks has 'core': expected tasks"):
        config.load(None, ['eval.tasks=["core"]'])


def test_the_shipped_core_group_names_the_22_tasks_of_core_yaml() -> None:
    core = evaltasks.get("core")
    tasks = [evaltasks.get(t) for t in evaltasks.expand(["core"])]
    assert len(tasks) == 22 and core.options["tasks"][0] == "core-hellaswag_zeroshot"
    kinds = [t.kind for t in tasks]
    assert (kinds.count("multiple_choice"), kinds.count("schema")) == (11, 2)
    assert {t.options["dataset"] for t in tasks} == {"eval-bundle"}
    assert all(t.options["bos"] and t.centered() for t in tasks)
    shots = {t.label: t.options["shots"] for t in tasks}
    assert (shots["agi_eval_lsat_ar"], shots["hellaswag_zeroshot"], shots["squad"]) == (3, 0, 10)
    assert evaltasks.get("core-boolq").options["baseline"] == 62.0


def test_rows_are_split_over_all_local_devices(
    tiny: tuple[Path, dict], use_registry: Path, tmp_path: Path
) -> None:
    """On 4 fake CPU devices (a subprocess) the scores equal those on one device."""
    registry(use_registry, {
        "a": {"kind": "multiple_choice", "choices": "4", "baseline": "25.0", "shots": "1"},
        "c": {"kind": "language_modeling", "baseline": "0.0"},
    })  # fmt: skip
    root = bundle(tmp_path / "b", {"a": MC, "c": LM}, {"a": 25, "c": 0})
    one = run(["a", "c"], tiny[0], root, tmp_path / "one")
    env = dict(os.environ, NANOGPTX_TASKS=str(use_registry))
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    cmd = [sys.executable, "-m", "nanogptx.eval", "--model", str(tiny[0]), "--out",
           str(tmp_path / "four"), "--dataset", f"eval-bundle={root}", 'eval.tasks=["a", "c"]',
           "eval.batch_size=2"]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "rows split over 4 local devices" in done.stdout
    assert re.search(r"a items: 7/7 \([\d.,]+/s", done.stdout)  # the meter: rate and ETA
    four = json.loads((tmp_path / "four" / "metrics.json").read_text())
    for t in ("a", "c"):
        assert (four[t]["acc"], four[t]["items"]) == (one[t]["acc"], one[t]["items"])


def test_the_miniature_bundle_goes_through_download_eval_and_report(
    tiny: tuple[Path, dict], tmp_path: Path
) -> None:
    """The bundle in the real format (tests/corebundle.py: core.yaml's 22 tasks, their item
    formats, the CSV of baselines) through the download stage (a mirror), then every shipped
    CORE task (the registry's files, their baselines checked against the CSV) and the report."""
    corebundle = pytest.importorskip("corebundle", reason="the miniature bundle of issue 26")
    raw = corebundle.downloaded(tmp_path)
    cfg = config.load(None, ['eval.tasks=["core"]', "eval.batch_size=4"])
    out = eval.evaluate(cfg, tiny[0], None, tmp_path / "out", {"eval-bundle": raw})
    names = evaltasks.get("core").options["tasks"]
    assert [t.label for t in corebundle.TASKS] == [evaltasks.get(t).label for t in names]
    assert all(out[t]["items"] == corebundle.ITEMS and out[t]["all_items"] for t in names)
    centered = [out[t]["centered"] for t in names]
    assert out["core"]["core"] == pytest.approx(sum(centered) / 22) and not out["core"]["cut"]
    page = report.evals_html({"tiny": out}, "tiny")
    assert f"<b>{out['core']['core']:.4f}</b>" in page and "arc_easy (10-shot, b = 25%)" in page
    prov = json.loads((tmp_path / "out" / "provenance.json").read_text())
    assert sum(Path(e["path"]).name == "eval_meta_data.csv" for e in prov["inputs"]) == 1


def test_few_shot_draws_are_nanochats_without_a_list_per_item() -> None:
    """random.Random(1234 + i).sample of the other indices, drawn from a view of them (a list
    per item is 10^8 entries for HellaSwag's 10,042): the same draws, both of sample's paths."""
    for n, k in [(2, 1), (4, 3), (12, 10), (60, 10), (5000, 10)]:
        for i in (0, 1, n // 2, n - 1):
            want = random.Random(1234 + i).sample([j for j in range(n) if j != i], k)
            assert icl.shots_of(i, n, k) == want


@pytest.mark.parametrize("n, kept, start", [(8, 8, 5), (9, 9, 5), (10, 9, 4), (11, 9, 3)])
def test_a_row_is_cut_from_the_left_to_block_size_plus_one_tokens(
    n: int, kept: int, start: int
) -> None:
    """block_size 8: the window holds 9 tokens (8 inputs, the last a target only); a row of 8 or
    9 is whole, one of 10 or 11 loses 1 or 2 from the left and its span start moves with them;
    a span that loses the token before it is counted wrong (fits false)."""
    row = list(range(100, 100 + n))
    [(got, at)], fits = icl.cut([(row, 5)], 8)
    assert (list(got), at, fits) == (row[n - kept :], start, True)
    assert got[at:] == row[5:]  # the span itself is whole
    if n > 8:  # a span of block_size tokens keeps the one before it; one longer, none
        [(_, at)], fits = icl.cut([(row, n - 8)], 8)
        assert (at, fits) == (1, True)
    if n > 9:
        [(_, at)], fits = icl.cut([(row, n - 9)], 8)
        assert (at, fits) == (0, False)
