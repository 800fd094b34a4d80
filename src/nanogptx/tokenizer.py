"""Tokenizers: character level (learned from the corpus) and GPT-2 BPE through tiktoken.

    tok = from_manifest(manifest["tokenizer"]); ids = tok.encode("O Romeo"); tok.decode(ids)
    python -m nanogptx.tokenizer --seed-tiktoken-cache DIR   # GPT-2's files, for offline use
prepare learns one from the corpus (LEARNERS) or loads one (READY), and tokenizes with it."""

from __future__ import annotations

import argparse
import base64
import functools
import hashlib
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from nanogptx import provenance
from nanogptx.errors import UserError

EOT_TEXT = "<|endoftext|>"
MAX_CODEPOINT = 0x10FFFF


class TokenizerError(UserError, ValueError):
    """A tokenizer that cannot be built, or text or ids it cannot handle."""


def codepoints(text: str) -> np.ndarray:
    """Unicode code points of text as uint32 (lone surrogates, which JSON can carry, included)."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")


class CharTokenizer:
    """One token per character; ids follow the sorted vocabulary, as nanoGPT's shakespeare_char."""

    name = "char"
    eot_token = None

    def __init__(self, chars: str) -> None:
        cps = codepoints(chars)
        if len(cps) == 0 or np.any(np.diff(cps.astype(np.int64)) <= 0):
            raise TokenizerError("char vocabulary must be non-empty, sorted and without repeats")
        self.chars = chars
        self.vocab_size = len(chars)
        self._cps = cps
        self._ids = np.full(int(cps[-1]) + 1, -1, dtype=np.int32)
        self._ids[cps] = np.arange(len(cps), dtype=np.int32)

    @classmethod
    def from_seen(cls, seen: np.ndarray) -> CharTokenizer:
        """The vocabulary of the code points marked True in seen (indexed by code point)."""
        return cls(
            np.flatnonzero(seen).astype("<u4").tobytes().decode("utf-32-le", "surrogatepass")
        )

    def ids(self, text: str) -> np.ndarray:
        cps = codepoints(text)
        ids = self._ids[np.minimum(cps, len(self._ids) - 1)]
        bad = (ids < 0) | (cps >= len(self._ids))
        if bad.any():
            unknown = sorted(set(np.asarray(list(text))[bad].tolist()))
            raise TokenizerError(
                f"characters not in the char vocabulary: {''.join(unknown)!r} "
                f"(the vocabulary has {self.vocab_size} characters, built from the training data)"
            )
        return ids

    def token_bytes(self) -> np.ndarray:
        """Bytes of UTF-8 text each token id (a character) stands for, for bits per byte."""
        return np.array([len(c.encode("utf-8", "surrogatepass")) for c in self.chars], np.int64)

    def encode(self, text: str) -> list[int]:
        return self.ids(text).tolist()

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise TokenizerError(f"token ids must lie in [0, {self.vocab_size})")
        return self._cps[ids].tobytes().decode("utf-32-le", "surrogatepass")

    def encode_documents(
        self, texts: list[str], joins_prev: bool = False
    ) -> tuple[np.ndarray, ...]:
        """Tokens of the texts end to end (char level has no separator), and each text's count."""
        return self.ids("".join(texts)), np.fromiter(map(len, texts), np.int64, len(texts))

    def identity(self) -> dict[str, Any]:
        sha = hashlib.sha256(self.chars.encode("utf-8", "surrogatepass")).hexdigest()
        return {
            "name": self.name,
            "vocab_size": self.vocab_size,
            "vocab_sha256": sha,
            "eot_token": None,
            "chars": self.chars,
        }


class CharVocabulary:
    """Learns the char tokenizer from the texts it is shown: every character they hold."""

    def __init__(self) -> None:
        self._seen = np.zeros(MAX_CODEPOINT + 1, bool)

    def add(self, texts: list[str]) -> None:
        self._seen[codepoints("".join(texts))] = True

    def tokenizer(self) -> CharTokenizer:
        return CharTokenizer.from_seen(self._seen)


@functools.cache
def _gpt2_encoding() -> Any:
    """tiktoken's files from $TIKTOKEN_CACHE_DIR when cached there (offline use), else fetched."""
    import tiktoken

    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as e:  # network (requests), a cached file with the wrong hash, ...
        raise TokenizerError(
            f"cannot load tiktoken's GPT-2 files ({type(e).__name__}: {e}). {_offline_hint()}"
        ) from e


def _offline_hint() -> str:
    """What to type on a machine without internet, given where $TIKTOKEN_CACHE_DIR points."""
    cache = os.environ.get("TIKTOKEN_CACHE_DIR")
    seed = f"python -m nanogptx.tokenizer --seed-tiktoken-cache DIR --cache {cache or 'CACHE'}"
    names = ", ".join(TIKTOKEN_FILES)
    if cache and any((Path(cache) / name).is_file() for name in TIKTOKEN_FILES):
        # A directory of the files as shipped: tiktoken looks each up by sha1(URL) instead.
        return (
            f"TIKTOKEN_CACHE_DIR={cache} holds the files under their own names, which tiktoken "
            f"does not read; copy them into its layout once with `python -m nanogptx.tokenizer "
            f"--seed-tiktoken-cache {cache} --cache CACHE` and set TIKTOKEN_CACHE_DIR=CACHE "
            "(docs/datasets.md: Offline use)"
        )
    if cache:
        return (
            f"Offline, fill TIKTOKEN_CACHE_DIR={cache} once from a directory DIR holding "
            f"{names}: `{seed}` (docs/datasets.md: Offline use)"
        )
    return (
        f"Offline, fill a cache directory CACHE once from a directory DIR holding {names}: "
        f"`{seed}`, and set TIKTOKEN_CACHE_DIR=CACHE (docs/datasets.md: Offline use)"
    )


@functools.cache
def _gpt2_vocab_sha256() -> str:
    """sha256 of the BPE ranks written as tiktoken's own file format ("base64(token) rank" lines
    by rank), so it equals the sha256 of r50k_base.tiktoken, the file that defines GPT-2's ranks."""
    enc = _gpt2_encoding()
    special = {enc.encode_single_token(s) for s in enc.special_tokens_set}
    h = hashlib.sha256()
    for rank in range(enc.n_vocab):
        if rank not in special:
            token = enc.decode_single_token_bytes(rank)
            h.update(base64.b64encode(token) + b" %d\n" % rank)
    return h.hexdigest()


class GPT2Tokenizer:
    """tiktoken's "gpt2" encoding; documents are preceded by the end-of-text token 50256."""

    name = "gpt2"

    def __init__(self) -> None:
        self._enc = _gpt2_encoding()
        self.eot_token: int = self._enc.eot_token
        self.vocab_size: int = self._enc.n_vocab
        self._local = threading.local()

    def _thread_encoding(self) -> Any:
        """This thread's own copy of the encoding (about 10 MB, 20 ms to build). tiktoken's regex
        runs fastest on the first thread that uses it (the regex crate's cache pool serves its
        owner thread directly, other threads through a shared path): measured here, a worker
        thread encoded ~25% slower with the shared encoding than with its own."""
        enc = getattr(self._local, "enc", None)
        if enc is None:
            e = self._enc
            enc = self._local.enc = type(e)(
                e.name,
                pat_str=e._pat_str,
                mergeable_ranks=e._mergeable_ranks,
                special_tokens=e._special_tokens,
            )
        return enc

    def token_bytes(self) -> np.ndarray:
        """Bytes of text each token id stands for (the end-of-text token: 0), for bits per byte."""
        decode, eot = self._enc.decode_single_token_bytes, self.eot_token
        sizes = [0 if i == eot else len(decode(i)) for i in range(self.vocab_size)]
        return np.array(sizes, np.int64)

    def encode(self, text: str) -> list[int]:
        """Ordinary tokens: "<|endoftext|>" in the text is plain text, not the special token."""
        return self._enc.encode_ordinary(text)

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        return self._enc.decode([int(i) for i in ids])

    def encode_documents(
        self, texts: list[str], joins_prev: bool = False
    ) -> tuple[np.ndarray, ...]:
        """[eot] + encode_ordinary(text) for every text (no eot before texts[0] when it goes on
        from an earlier text), laid end to end, and the token count of each text.

        One tiktoken call for all texts: joined by "<|endoftext|>", which tiktoken turns into the
        special token while encoding the text between them exactly as encode_ordinary would. The
        call releases the GIL, and no Python int is made per token.
        """
        if not texts:
            return np.zeros(0, np.uint32), np.zeros(0, np.int64)
        joined = EOT_TEXT.join(texts) if joins_prev else EOT_TEXT + EOT_TEXT.join(texts)
        if joined.count(EOT_TEXT) == len(texts) - joins_prev:
            tokens = self._encode_with_eot(joined)
        else:  # some text holds "<|endoftext|>" itself: encode one by one, as plain text
            enc = self._thread_encoding()
            parts = [np.asarray(enc.encode_ordinary(t), np.uint32) for t in texts]
            eot = np.array([self.eot_token], np.uint32)
            tokens = np.concatenate(
                [
                    p if joins_prev and i == 0 else np.concatenate([eot, p])
                    for i, p in enumerate(parts)
                ]
            )
        starts = np.flatnonzero(tokens == self.eot_token)
        bounds = np.concatenate([[0] if joins_prev else [], starts, [len(tokens)]])
        return tokens, np.diff(bounds).astype(np.int64)

    def _encode_with_eot(self, text: str) -> np.ndarray:
        enc = self._thread_encoding()
        try:
            return enc.encode_to_numpy(text, allowed_special={EOT_TEXT})
        except UnicodeEncodeError:  # lone surrogates: replaced, as tiktoken's encode_ordinary does
            text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
            return enc.encode_to_numpy(text, allowed_special={EOT_TEXT})

    def identity(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "vocab_size": self.vocab_size,
            "vocab_sha256": _gpt2_vocab_sha256(),
            "eot_token": self.eot_token,
        }


Tokenizer = CharTokenizer | GPT2Tokenizer


def gpt2() -> GPT2Tokenizer:
    return GPT2Tokenizer()


class Learner(Protocol):
    """A tokenizer learned from the corpus: prepare shows it every cleaned batch of texts, in one
    pass before it tokenizes, then asks for the tokenizer."""

    def add(self, texts: list[str]) -> None: ...

    def tokenizer(self) -> Tokenizer: ...


# Each tokenizer.name: learned from the corpus (a trained BPE would be one more learner, with
# its own entry in from_manifest), or ready-made.
LEARNERS: dict[str, Callable[[], Learner]] = {"char": CharVocabulary}
READY: dict[str, Callable[[], Tokenizer]] = {"gpt2": gpt2}


def from_manifest(tok: dict[str, Any]) -> Tokenizer:
    """The tokenizer a manifest names (its "tokenizer" entry), checked against its identity."""
    name = tok.get("name")
    if name == "char":
        if not isinstance(chars := tok.get("chars", ""), str):
            raise TokenizerError(f"chars = {chars!r}: expected the vocabulary as text")
        t: Tokenizer = CharTokenizer(chars)
    elif name == "gpt2":
        t = gpt2()
    else:
        raise TokenizerError(f"unknown tokenizer {name!r} in the manifest; known: char, gpt2")
    mine = t.identity()
    for key in ("vocab_size", "vocab_sha256", "eot_token"):
        if tok.get(key) != mine[key]:
            raise TokenizerError(
                f"tokenizer {name}: the manifest says {key} = {tok.get(key)!r}, but this "
                f"tokenizer has {mine[key]!r}: the data was made with another vocabulary"
            )
    return t


# The GPT-2 files as tiktoken downloads them: (URL, sha256). It caches each under sha1(URL) in
# $TIKTOKEN_CACHE_DIR and uses a cached file without any network access when its sha256 matches.
_OPENAI = "https://openaipublic.blob.core.windows.net"
TIKTOKEN_FILES = {
    "gpt2_vocab.bpe": (
        f"{_OPENAI}/gpt-2/encodings/main/vocab.bpe",
        "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    ),
    "gpt2_encoder.json": (
        f"{_OPENAI}/gpt-2/encodings/main/encoder.json",
        "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    ),
    "r50k_base.tiktoken": (
        f"{_OPENAI}/encodings/r50k_base.tiktoken",
        "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930",
    ),
}


def seed_tiktoken_cache(src: Path, cache: Path) -> list[Path]:
    """Copy the GPT-2 files in src (named as in TIKTOKEN_FILES) into tiktoken's cache layout."""
    cache.mkdir(parents=True, exist_ok=True)
    written = []
    for name, (url, sha256) in TIKTOKEN_FILES.items():
        data = (src / name).read_bytes()
        if hashlib.sha256(data).hexdigest() != sha256:
            raise TokenizerError(
                f"{src / name}: sha256 is {hashlib.sha256(data).hexdigest()}, "
                f"expected {sha256} (tiktoken's own hash of {url})"
            )
        target = cache / hashlib.sha1(url.encode()).hexdigest()
        provenance.write_bytes_atomic(target, data)  # its temporary: provenance.MARKER
        written.append(target)
    return written


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m nanogptx.tokenizer",
        description="Copy tiktoken's GPT-2 files into its cache, so that GPT-2 loads offline.",
    )
    parser.add_argument(
        "--seed-tiktoken-cache",
        type=Path,
        required=True,
        metavar="DIR",
        help=f"a directory holding {', '.join(TIKTOKEN_FILES)}",
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=os.environ.get("TIKTOKEN_CACHE_DIR"),
        help="tiktoken's cache directory (default: $TIKTOKEN_CACHE_DIR)",
    )
    args = parser.parse_args(argv)
    if args.cache is None:
        parser.error("set TIKTOKEN_CACHE_DIR (tiktoken reads it) or pass --cache")
    try:
        written = seed_tiktoken_cache(args.seed_tiktoken_cache, args.cache)
    except (OSError, TokenizerError) as e:
        parser.exit(1, f"{parser.prog}: error: {e}\n")
    print(f"{len(written)} GPT-2 files cached in {args.cache}")


if __name__ == "__main__":
    main()
