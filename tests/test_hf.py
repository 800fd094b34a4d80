"""GPT-2 weights in and out against the real reference, Hugging Face transformers on torch: a
small random GPT2LMHeadModel saved with save_pretrained, downloaded through the real download
stage from a loopback server, imported, fine-tuned, exported and loaded back."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nanogptx import (
    checkpoint,
    config,
    datasets,
    download,
    export,
    hf,
    model,
    runtime,
    sample,
    train,
)  # fmt: skip
from nanogptx.config import SampleConfig
from prepared import synthetic_text, write_prepared

torch = pytest.importorskip("torch", reason="the test extra brings torch (CPU) as the oracle")
transformers = pytest.importorskip("transformers", reason="the test extra brings transformers")

N_POS, V_SMALL = 64, 40
TRAIN = [
    "train.batch_size=4", "train.max_iters=6", "train.learning_rate=1e-3", "train.min_lr=1e-4",
    "train.warmup_iters=1", "train.lr_decay_iters=6", "train.eval_iters=1",
    "train.eval_interval=100", "logging.log_interval=1", "logging.stats_interval=0",
    "model.block_size=32",
]  # fmt: skip


def hf_model(out: Path, vocab: int, seed: int = 0, **kw) -> Path:
    """A random GPT2LMHeadModel (2 layers, 64 wide) saved as config.json + model.safetensors."""
    torch.manual_seed(seed)
    eot = 50256 if vocab > 50256 else None
    cfg = transformers.GPT2Config(
        n_layer=2, n_head=4, n_embd=64, n_positions=N_POS, vocab_size=vocab,
        bos_token_id=eot, eos_token_id=eot, **kw,
    )  # fmt: skip
    m = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # larger weights than the init: outputs that depend on the context
        for p in m.parameters():  # and the position (else greedy decoding repeats one token)
            p.mul_(3.0) if p.ndim >= 2 else p.add_(torch.randn_like(p) * 0.1)
        m.transformer.wpe.weight.mul_(20.0)
    m.save_pretrained(out, safe_serialization=True)
    return out


def hf_logits(model_dir: Path, ids: np.ndarray) -> np.ndarray:
    m = transformers.GPT2LMHeadModel.from_pretrained(model_dir).eval()
    with torch.no_grad():
        return m(torch.as_tensor(ids, dtype=torch.long)).logits.numpy()


def ours(init_dir: Path, *overrides: str) -> tuple[config.Config, model.Params]:
    cfg = config.load(None, [f"model.init_from={json.dumps(str(init_dir))}", *overrides])
    params = hf.load_params(init_dir, cfg.model)
    return cfg, jax.tree.map(jnp.asarray, params)


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return hf_model(tmp_path_factory.mktemp("hf") / "tiny", 50257)


def test_imported_weights_give_hfs_logits_and_greedy_tokens(gpt2_dir: Path) -> None:
    cfg, params = ours(gpt2_dir)
    m = cfg.model
    assert (m.n_layer, m.n_embd, m.block_size, m.vocab_size, m.activation) == (
        2, 64, N_POS, 50257, "gelu_tanh",
    )  # fmt: skip
    ids = np.random.default_rng(0).integers(0, 50257, (2, 24))
    got = np.asarray(model.forward(params, jnp.asarray(ids), m))
    want = hf_logits(gpt2_dir, ids)
    assert np.abs(got - want).max() < 1e-4
    for kernels in ("reference", "fast"):  # both primitive sets import the same function
        rt = runtime.choose(dataclasses.replace(m, kernels=kernels), "cpu")
        got = np.asarray(model.forward(params, jnp.asarray(ids), m, rt=rt))
        assert np.abs(got - want).max() < 1e-4

    prompt = [464, 2068, 7586, 21831]
    hf_m = transformers.GPT2LMHeadModel.from_pretrained(gpt2_dir).eval()
    with torch.no_grad():
        out = hf_m.generate(
            torch.tensor([prompt]), max_new_tokens=50, do_sample=False, pad_token_id=50256
        )
    want_tokens = out[0, len(prompt) :].tolist()
    assert len(set(want_tokens)) > 5  # a sharp test, not one token repeated
    got_tokens = sample.generate(params, prompt, m, SampleConfig(num_samples=1, max_new_tokens=50,
                                                                 top_k=1))  # fmt: skip
    assert got_tokens[0].tolist() == want_tokens


def test_vocabulary_padding_masks_the_padded_rows_and_export_strips_them(
    gpt2_dir: Path, tmp_path: Path
) -> None:
    cfg, params = ours(gpt2_dir, "model.vocab_multiple=128")
    assert params["wte"].shape[0] == 50304  # 50257 rounded up to 128
    ids = np.random.default_rng(1).integers(0, 50257, (1, 16))
    logits = np.asarray(model.forward(params, jnp.asarray(ids), cfg.model))
    assert np.all(np.isneginf(logits[..., 50257:]))  # never any probability
    assert np.abs(logits[..., :50257] - hf_logits(gpt2_dir, ids)).max() < 1e-4
    hf.save(jax.tree.map(np.asarray, params), cfg.model, tmp_path / "out")
    with hf.safe_open(str(tmp_path / "out" / hf.WEIGHTS), "np") as f:
        assert f.get_tensor("transformer.wte.weight").shape == (50257, 64)
    assert np.abs(hf_logits(tmp_path / "out", ids) - logits[..., :50257]).max() < 1e-4


def serve_as_dataset(monkeypatch: pytest.MonkeyPatch, server, src: Path, name: str) -> None:
    """src's config.json and model.safetensors as registry dataset `name` on the server, as the
    hub serves them: the LFS file announces its sha256 (X-Linked-ETag), config.json is pinned."""
    files = []
    for fname in (hf.CONFIG, hf.WEIGHTS):
        data = (src / fname).read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        lfs = fname == hf.WEIGHTS
        server.add(f"/{name}/{fname}", data, etag=f'"{sha}"' if lfs else None)
        files.append(datasets.RemoteFile(fname, f"https://example.invalid/{fname}",
                                         None if lfs else sha))  # fmt: skip
    ds = datasets.Dataset(name, tuple(files), "none", "test weights", use="init")
    monkeypatch.setitem(datasets.REGISTRY, name, ds)


@pytest.fixture
def server():
    from httpserver import FileServer

    with FileServer() as s:
        yield s


def test_download_fine_tune_export_and_hf_loads_the_same_model(
    gpt2_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server
) -> None:
    # Weights arrive through the real download stage (its sha256 recorded in the lock file).
    small = hf_model(tmp_path / "small", V_SMALL, seed=1)
    serve_as_dataset(monkeypatch, server, small, "hf-test")
    raw, lock = tmp_path / "raw" / "hf-test", tmp_path / "lock.json"
    fetched = download.download(config.Config(), raw, server.url, lock, dataset="hf-test")
    assert {f.check for f in fetched} == {"pinned", "announced"}
    assert "model.safetensors" in json.loads(lock.read_text())["hf-test"]

    # Fine-tune the imported model on characters (a vocabulary of <= 40 fits its 40 rows).
    text = synthetic_text(6000)
    data = write_prepared(tmp_path / "data", text, 3000)
    cfg = config.load(None, [f"model.init_from={json.dumps(str(raw))}", *TRAIN])
    out, ckpts = tmp_path / "model", tmp_path / "ckpt"
    summary = train.train(cfg, data, out, ckpts)
    assert summary["step"] == 6
    prov = json.loads((out / "provenance.json").read_text())
    weights_sha = hashlib.sha256((raw / hf.WEIGHTS).read_bytes()).hexdigest()
    assert {"path": str(raw / hf.WEIGHTS), "sha256": weights_sha} in [
        {k: e[k] for k in ("path", "sha256")} for e in prov["inputs"]
    ]  # the weights are an input of train
    assert prov["init_from"] == str(raw)
    # No step (train.max_iters = 0): the model written is the imported one, exactly.
    cfg0 = config.load(None, [f"model.init_from={json.dumps(str(raw))}", *TRAIN,
                              "train.max_iters=0"])  # fmt: skip
    train.train(cfg0, data, tmp_path / "model0", tmp_path / "ckpt0")
    imported = hf.load_params(raw, cfg0.model)
    written = checkpoint.load_model(tmp_path / "model0")[0]
    for name, x in checkpoint.flatten(imported).items():
        np.testing.assert_array_equal(checkpoint.flatten(written)[name], x)
    assert not np.array_equal(checkpoint.load_model(out)[0]["wte"], imported["wte"])  # trained

    # Export, then transformers loads it and computes the same logits.
    paths = export.export(out, tmp_path / "hf-out")
    assert [p.name for p in paths] == [hf.CONFIG, hf.WEIGHTS]
    params, mcfg, _ = checkpoint.load_model(out)
    ids = np.random.default_rng(2).integers(0, V_SMALL, (2, 32))
    mine = np.asarray(model.forward(jax.tree.map(jnp.asarray, params), jnp.asarray(ids),
                                    mcfg.model))  # fmt: skip
    assert np.abs(hf_logits(tmp_path / "hf-out", ids) - mine).max() < 1e-4


def test_a_scratch_trained_model_round_trips_through_hf(tmp_path: Path) -> None:
    # No biases and no gains (written as zeros and ones), an untied head, exact GELU.
    data = write_prepared(tmp_path / "data", synthetic_text(6000), 3000)
    cfg = config.load(None, [*TRAIN, "model.n_layer=2", "model.n_head=2", "model.n_embd=32",
                             "model.bias=false", "model.tie_embeddings=false",
                             "model.vocab_multiple=8"])  # fmt: skip
    out = tmp_path / "model"
    train.train(cfg, data, out, tmp_path / "ckpt")
    export.export(out, tmp_path / "hf-out")
    params, mcfg, _ = checkpoint.load_model(out)
    V = mcfg.model.vocab_size
    assert params["wte"].shape[0] % 8 == 0 and params["wte"].shape[0] > V
    ids = np.random.default_rng(3).integers(0, V, (2, 32))
    mine = np.asarray(model.forward(jax.tree.map(jnp.asarray, params), jnp.asarray(ids),
                                    mcfg.model))[..., :V]  # fmt: skip
    theirs = hf_logits(tmp_path / "hf-out", ids)
    assert theirs.shape == mine.shape and np.abs(theirs - mine).max() < 1e-4


def test_export_refuses_what_gpt2_cannot_express_naming_the_feature(tmp_path: Path) -> None:
    m = config.load(None, ["model.position=rope", "model.norm=rmsnorm"]).model
    with pytest.raises(hf.HFError, match=r"model.position = 'rope'.*model.norm = 'rmsnorm'"):
        hf.to_tensors({}, m)


def test_bad_checkpoints_are_clear_errors_naming_file_and_tensor(
    gpt2_dir: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / hf.CONFIG).write_text((gpt2_dir / hf.CONFIG).read_text())
    tensors = hf.read_tensors(gpt2_dir / hf.WEIGHTS)
    m = config.load(None, [f"model.init_from={json.dumps(str(bad))}"]).model

    def write(t: dict) -> None:
        hf.safetensors.numpy.save_file(t, str(bad / hf.WEIGHTS))

    write({k: v for k, v in tensors.items() if k != "h.1.mlp.c_fc.weight"})
    with pytest.raises(hf.HFError, match=r"model.safetensors: missing tensors h.1.mlp.c_fc.weight"):
        hf.load_params(bad, m)
    write({**tensors, "h.0.attn.c_proj.weight": np.zeros((64, 32), np.float32)})
    with pytest.raises(hf.HFError, match=r"h.0.attn.c_proj.weight has shape \[64, 32\], expected"):
        hf.load_params(bad, m)
    (bad / hf.WEIGHTS).write_bytes(b"not safetensors")
    with pytest.raises(hf.HFError, match="cannot read it as safetensors"):
        hf.load_params(bad, m)

    cfg_json = json.loads((gpt2_dir / hf.CONFIG).read_text())
    (bad / hf.CONFIG).write_text(json.dumps({**cfg_json, "model_type": "llama",
                                             "architectures": ["LlamaForCausalLM"]}))  # fmt: skip
    with pytest.raises(config.ConfigError, match=r"bad/config.json: architecture 'llama'"):
        config.load(None, [f"model.init_from={json.dumps(str(bad))}"])
    (bad / hf.CONFIG).write_text(json.dumps({**cfg_json, "n_embd": "wide"}))
    with pytest.raises(config.ConfigError, match=r"config.json: n_embd = 'wide': expected an"):
        config.load(None, [f"model.init_from={json.dumps(str(bad))}"])


def test_a_damaged_init_stops_training_before_anything_is_written(
    gpt2_dir: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / hf.CONFIG).write_text((gpt2_dir / hf.CONFIG).read_text())
    (bad / hf.WEIGHTS).write_bytes((gpt2_dir / hf.WEIGHTS).read_bytes()[:5000])  # truncated
    cfg = config.load(None, [f"model.init_from={json.dumps(str(bad))}", *TRAIN])
    data = write_prepared(tmp_path / "data", synthetic_text(6000), 3000)
    with pytest.raises(train.TrainError, match=r"model.init_from = .*model.safetensors"):
        train.train(cfg, data, tmp_path / "model", tmp_path / "ckpt")
    assert not (tmp_path / "model" / "params.safetensors").exists()


def test_the_architecture_follows_the_checkpoint_and_conflicts_name_both_values() -> None:
    m = config.load(None, ['model.init_from="gpt2-xl"', 'tokenizer.name="gpt2"']).model
    assert (m.n_layer, m.n_head, m.n_embd, m.block_size, m.activation, m.bias) == (
        48, 25, 1600, 1024, "gelu_tanh", True,
    )  # fmt: skip
    m = config.load(None, ['model.init_from="gpt2"', 'tokenizer.name="gpt2"',
                           "model.block_size=256", "model.dropout=0.1"]).model  # fmt: skip
    assert (m.block_size, m.dropout) == (256, 0.1)  # cropped positions, dropout settable
    with pytest.raises(config.ConfigError, match=r"model.n_head = 8, but model.init_from = "
                       r"'gpt2' has n_head = 12"):  # fmt: skip
        config.load(None, ['model.init_from="gpt2"', 'tokenizer.name="gpt2"', "model.n_head=8"])
    with pytest.raises(config.ConfigError, match=r"model.position = 'rope', but"):
        config.load(None, ['model.init_from="gpt2"', 'tokenizer.name="gpt2"',
                           'model.position="rope"'])  # fmt: skip
    with pytest.raises(config.ConfigError, match=r"block_size = 2048, but"):
        config.load(None, ['model.init_from="gpt2"', 'tokenizer.name="gpt2"',
                           "model.block_size=2048"])  # fmt: skip


@pytest.mark.slow  # about 20 s
def test_workflow_fine_tunes_from_an_hf_directory_evaluates_and_exports(
    tmp_path: Path, assets: Path
) -> None:
    from test_workflow import make_workdir, planned_jobs, snakemake

    (tmp_path / "work").mkdir()
    work = make_workdir(tmp_path / "work")
    init = hf_model(work / "my-gpt2", 96, seed=2)  # a vocabulary for Shakespeare's 65 chars
    (work / "config" / "ft.toml").write_text(
        '[model]\ninit_from = "my-gpt2"\nblock_size = 32\n\n[train]\nbatch_size = 4\n'
        "max_iters = 10\nlr_decay_iters = 10\nwarmup_iters = 2\nlearning_rate = 1e-3\n"
        "min_lr = 1e-4\neval_interval = 5\neval_iters = 2\n\n[sample]\nnum_samples = 1\n"
        "max_new_tokens = 20\n\n[eval]\nmax_windows = 20\n"
    )
    snakemake(work, "all", "export", "--config", "runs=ft", f"mirror={assets}")
    results = work / "results/ft"
    prov = json.loads((results / "model/provenance.json").read_text())
    assert "my-gpt2/model.safetensors" in [e["path"] for e in prov["inputs"]]
    ev = json.loads((results / "eval/metrics.json").read_text())["val_loss"]
    assert ev["windows"] == 20 and np.isfinite(ev["loss"]) and ev["bits_per_byte"] > 0
    assert "val loss" in (results / "report/eval.html").read_text()
    # The export is the trained model, as transformers computes it.
    params, mcfg, _ = checkpoint.load_model(results / "model")
    ids = np.random.default_rng(4).integers(0, mcfg.model.vocab_size, (1, 32))
    mine = np.asarray(model.forward(jax.tree.map(jnp.asarray, params), jnp.asarray(ids),
                                    mcfg.model))  # fmt: skip
    assert np.abs(hf_logits(results / "export/hf", ids) - mine).max() < 1e-4
    # New weights in the directory: train (and what follows) reruns; nothing else changed.
    assert planned_jobs(work, "all", "export", "--config", "runs=ft") == {}
    hf_model(init, 96, seed=3)
    assert set(planned_jobs(work, "all", "export", "--config", "runs=ft")) == {
        "train_run", "sample_run", "eval_run", "export_run", "report_run", "all", "export",
    }  # fmt: skip


def test_the_shipped_pretrained_runs_download_the_weights_and_hellaswag(tmp_path: Path) -> None:
    from test_workflow import ROOT, make_workdir, snakemake

    plan = snakemake(make_workdir(tmp_path), "-n", "--config", "runs=gpt2-sample").stdout
    for dataset in ("hf-gpt2", "hellaswag", "tinyshakespeare"):
        assert f"dataset={dataset}" in plan  # through the download stage, like any dataset

    plan = {}
    for run in ("gpt2-sample", "finetune-shakespeare"):
        cfg = config.load(ROOT / "config" / f"{run}.toml")
        assert (cfg.model.init_from, cfg.model.n_layer, cfg.model.activation) == (
            "gpt2", 12, "gelu_tanh",
        )  # fmt: skip
        plan[run] = cfg
    assert plan["gpt2-sample"].train.max_iters == 0
    assert "hellaswag" in plan["gpt2-sample"].eval.tasks
    assert datasets.get("hf-gpt2").files[0].url == (
        "https://huggingface.co/openai-community/gpt2/resolve/main/model.safetensors"
    )
