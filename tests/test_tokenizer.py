"""Tokenizers: char round trip, GPT-2 documents with end-of-text, identities, from_manifest."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nanogptx import readers, tokenizer
from nanogptx.tokenizer import CharTokenizer, TokenizerError

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\r\nÀ bientôt 😀 — ok?\n"


def char_tok(text: str = TEXT) -> CharTokenizer:
    seen = np.zeros(tokenizer.MAX_CODEPOINT + 1, bool)
    seen[tokenizer.codepoints(text)] = True
    return CharTokenizer.from_seen(seen)


def test_char_vocabulary_is_sorted_characters_and_round_trips() -> None:
    tok = char_tok()
    assert tok.chars == "".join(sorted(set(TEXT)))
    ids = tok.encode(TEXT)
    assert ids == [tok.chars.index(c) for c in TEXT]
    assert tok.decode(ids) == TEXT
    tokens, lengths = tok.encode_documents(["First", " Citizen"])
    assert tok.decode(tokens) == "First Citizen" and lengths.tolist() == [5, 8]
    ident = tok.identity()
    assert ident["vocab_size"] == len(set(TEXT)) and ident["eot_token"] is None
    assert ident["vocab_sha256"] == hashlib.sha256(tok.chars.encode()).hexdigest()


def test_char_vocabulary_learned_batch_by_batch_is_that_of_the_whole_text() -> None:
    vocab = tokenizer.LEARNERS["char"]()
    for line in TEXT.splitlines(keepends=True):
        vocab.add([line[:3], line[3:], ""])
    assert vocab.tokenizer().identity() == char_tok().identity()
    with pytest.raises(TokenizerError, match="non-empty"):
        tokenizer.CharVocabulary().tokenizer()


def test_char_unknown_characters_and_ids_are_refused() -> None:
    tok = char_tok("abc")
    with pytest.raises(TokenizerError, match=r"not in the char vocabulary: 'xz'"):
        tok.encode("abzx")
    with pytest.raises(TokenizerError, match=r"token ids must lie in \[0, 3\)"):
        tok.decode([0, 3])
    with pytest.raises(TokenizerError, match="sorted and without repeats"):
        CharTokenizer("ba")


def test_char_from_manifest_checks_identity() -> None:
    ident = char_tok().identity()
    assert tokenizer.from_manifest(ident).decode(char_tok().encode(TEXT)) == TEXT
    with pytest.raises(TokenizerError, match=r"vocab_sha256"):
        tokenizer.from_manifest({**ident, "vocab_sha256": "0" * 64})
    with pytest.raises(TokenizerError, match=r"unknown tokenizer 'bpe'"):
        tokenizer.from_manifest({**ident, "name": "bpe"})


DOCS = ["Hello world.", "  leading and trailing  \n\n", "a <|endoftext|> b", "x", "\n\n\nY"]


def reference(docs: list[str], joins_prev: bool = False) -> list[int]:
    enc = tokenizer.gpt2()._enc
    out: list[int] = []
    for i, d in enumerate(docs):
        out += ([] if joins_prev and i == 0 else [50256]) + enc.encode_ordinary(d)
    return out


@pytest.mark.parametrize("docs", [DOCS[:2] + DOCS[3:], DOCS])  # DOCS[2] holds "<|endoftext|>"
@pytest.mark.parametrize("joins_prev", [False, True])
def test_gpt2_documents_are_eot_then_encode_ordinary(gpt2_offline, docs, joins_prev) -> None:
    tok = tokenizer.gpt2()
    tokens, lengths = tok.encode_documents(docs, joins_prev)
    ref = reference(docs, joins_prev)
    assert tokens.tolist() == ref
    assert lengths.tolist() == [
        len(reference([d], joins_prev and i == 0)) for i, d in enumerate(docs)
    ]
    assert (
        tokens.tolist().count(50256) == len(docs) - joins_prev
    )  # the text "<|endoftext|>" is text


def test_gpt2_lone_surrogate_is_encoded_as_tiktoken_does(gpt2_offline) -> None:
    tok = tokenizer.gpt2()
    docs = ["json can carry \ud800 alone", "fine"]
    assert tok.encode_documents(docs)[0].tolist() == reference(docs)


def mixed_text(n: int) -> str:
    """Words, numbers, punctuation and emoji between every kind of whitespace run."""
    rng = np.random.default_rng(0)
    words = ["Romeo", "'s", "ÉTÉ", "😀", "--", "42", "x", "hello.", "日本", "\u00a0"]
    gaps = [" ", "\n", "\n\n", "  ", "\t", "\r\n", " \n", "\n "]
    return "".join(w + g for w, g in zip(rng.choice(words, n), rng.choice(gaps, n), strict=True))


@pytest.mark.parametrize("source", ["tinyshakespeare", "mixed"])
def test_gpt2_pieces_of_a_text_tokenize_as_the_whole(
    gpt2_offline, assets, tmp_path, source
) -> None:
    """read_text's cut points never change GPT-2 tokens (hundreds of cuts)."""
    p = tmp_path / "a.txt"
    p.write_text(mixed_text(50_000) if source == "mixed" else "", newline="")
    if source == "tinyshakespeare":
        p = assets / "tinyshakespeare" / "input.txt"
    whole = p.read_bytes().decode()
    pieces = [t for b in readers.read_text(p, piece_chars=1000) for t in b.texts]
    assert len(pieces) > 200 and "".join(pieces) == whole
    tok = tokenizer.gpt2()
    by_piece = [t for piece in pieces for t in tok.encode_documents([piece], True)[0].tolist()]
    assert by_piece == tok.encode(whole)


def test_gpt2_identity_hashes_the_ranks_file(gpt2_offline, assets: Path) -> None:
    ident = tokenizer.gpt2().identity()
    ranks = (assets / "tiktoken" / "r50k_base.tiktoken").read_bytes()
    assert ident == {
        "name": "gpt2",
        "vocab_size": 50257,
        "eot_token": 50256,
        "vocab_sha256": hashlib.sha256(ranks).hexdigest(),
    }
    tok = tokenizer.from_manifest(ident)
    assert tok.decode(tok.encode(TEXT)) == TEXT
    with pytest.raises(TokenizerError, match=r"vocab_size = 50304"):
        tokenizer.from_manifest({**ident, "vocab_size": 50304})


def test_seeding_tiktoken_cache_makes_gpt2_load_offline(tmp_path: Path, assets: Path) -> None:
    cache = tmp_path / "cache"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "nanogptx.tokenizer",
            "--seed-tiktoken-cache",
            str(assets / "tiktoken"),
            "--cache",
            str(cache),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    # A fresh process with only this cache and no network route: tiktoken must not download.
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(cache), "HTTPS_PROXY": "http://127.0.0.1:9"}
    r = subprocess.run(
        [sys.executable, "-c", "import tiktoken; print(tiktoken.get_encoding('gpt2').n_vocab)"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert r.stdout.strip() == "50257", r.stderr


def test_seeding_refuses_a_file_with_the_wrong_hash(tmp_path: Path, assets: Path) -> None:
    src = tmp_path / "files"
    shutil.copytree(assets / "tiktoken", src)
    (src / "gpt2_vocab.bpe").chmod(0o644)
    (src / "gpt2_vocab.bpe").write_text("not the BPE file")
    with pytest.raises(tokenizer.TokenizerError, match="gpt2_vocab.bpe: sha256 is"):
        tokenizer.seed_tiktoken_cache(src, tmp_path / "cache")


@pytest.mark.parametrize("cache", ["shipped", "empty", "unset"])
def test_gpt2_offline_error_says_how_to_seed_the_cache(
    tmp_path: Path, assets: Path, cache: str
) -> None:
    # A user pointing TIKTOKEN_CACHE_DIR at the files as shipped (or at nothing) got "set
    # TIKTOKEN_CACHE_DIR to a directory holding them", which that directory already did.
    env = {k: v for k, v in os.environ.items() if k != "TIKTOKEN_CACHE_DIR"}
    env["HTTPS_PROXY"] = "http://127.0.0.1:9"  # no network route: tiktoken fails at once
    (tmp_path / "empty").mkdir()
    dirs = {"shipped": assets / "tiktoken", "empty": tmp_path / "empty"}
    if cache in dirs:
        env["TIKTOKEN_CACHE_DIR"] = str(dirs[cache])
    r = subprocess.run(
        [sys.executable, "-c", "from nanogptx import tokenizer; tokenizer.gpt2()"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    assert r.returncode != 0
    assert "cannot load tiktoken's GPT-2 files" in r.stderr
    assert "--seed-tiktoken-cache" in r.stderr, r.stderr
    if cache == "shipped":
        assert f"--seed-tiktoken-cache {assets / 'tiktoken'} --cache CACHE" in r.stderr
    elif cache == "empty":
        assert f"--cache {tmp_path / 'empty'}" in r.stderr
    else:
        assert "set TIKTOKEN_CACHE_DIR=CACHE" in r.stderr
