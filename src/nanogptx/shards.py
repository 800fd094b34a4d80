"""The shard files of prepared data, defined once: names, dtype and format tag, the writer that
prepare uses (`Writer`) and the reader that the loader maps them with (`load`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from nanogptx import provenance

FORMAT = "nanogptx-shards/1"  # manifest.json's "format"
FORMATS = ("npy", "parquet")  # data.shard_format
NAME = re.compile(r"(train|val)_\d{6}\.(npy|parquet)")  # what prepare writes
PLAIN_NAME = re.compile(r"[A-Za-z0-9_-]+\.(npy|parquet)")  # what the loader opens: no path in it


def token_dtype(vocab_size: int) -> np.dtype:
    """The shards' dtype: uint16 when every id fits, else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def load(path: Path, shard_format: str) -> np.ndarray:
    """A shard's tokens: memory-mapped (npy), or the rows laid end to end (parquet)."""
    if shard_format == "npy":
        return np.load(path, mmap_mode="r")
    import pyarrow as pa
    import pyarrow.parquet as pq

    column = pq.read_table(path, columns=["tokens"], memory_map=True).column("tokens")
    return pa.concat_arrays(column.chunks).flatten().to_numpy(zero_copy_only=False)


class Writer:
    """The shards of one split: .npy of exactly shard_tokens tokens each (the last fewer), or
    .parquet of whole rows, closed once they hold shard_tokens tokens. Each is written to a
    temporary file beside its final name and renamed when complete."""

    def __init__(self, out: Path, split: str, fmt: str, dtype: np.dtype, shard_tokens: int) -> None:
        self.out, self.split, self.fmt, self.dtype = out, split, fmt, dtype
        self.shard_tokens = shard_tokens
        self.entries: list[dict[str, Any]] = []
        self.tokens = self.documents = 0
        self._tmp: Path | None = None
        self._file: Any = None  # an open .npy file or a pyarrow ParquetWriter
        self._n = 0  # tokens in the open shard

    def add(self, tokens: np.ndarray, lengths: np.ndarray, documents: int) -> None:
        """tokens of consecutive rows (documents or pieces of one) of lengths tokens each."""
        self.tokens += len(tokens)
        self.documents += documents
        if self.fmt == "npy":
            while len(tokens):
                self._open()
                take = min(self.shard_tokens - self._n, len(tokens))
                self._file.write(tokens[:take].data)
                self._n, tokens = self._n + take, tokens[take:]
                if self._n == self.shard_tokens:
                    self._close()
            return
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        row = 0
        while row < len(lengths):
            self._open()
            end = int(np.searchsorted(offsets, offsets[row] + self.shard_tokens - self._n))
            end = max(min(end, len(lengths)), row + 1)  # rows row..end-1 fill the shard
            self._write_rows(
                tokens[offsets[row] : offsets[end]], offsets[row : end + 1] - offsets[row]
            )
            self._n += int(offsets[end] - offsets[row])
            row = end
            if self._n >= self.shard_tokens:
                self._close()

    def _write_rows(self, values: np.ndarray, offsets: np.ndarray) -> None:
        import pyarrow as pa

        rows = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values))
        self._file.write_table(pa.table({"tokens": rows}))

    def _name(self) -> str:
        return f"{self.split}_{len(self.entries):06d}.{self.fmt}"

    def _open(self) -> None:
        if self._file is not None:
            return
        fd, tmp = provenance.create_temp(self.out / self._name())
        self._tmp, self._n = tmp, 0
        if self.fmt == "npy":
            self._file = os.fdopen(fd, "wb")
            self._npy_header(0)
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            os.close(fd)
            schema = pa.schema([("tokens", pa.list_(pa.from_numpy_dtype(self.dtype)))])
            self._file = pq.ParquetWriter(tmp, schema, compression="zstd")

    def _npy_header(self, n: int) -> None:
        # numpy pads the header so that the shape can grow in place: written first with 0, then
        # rewritten with the final count, it keeps its length.
        start = self._file.tell()
        descr = np.lib.format.dtype_to_descr(self.dtype)
        header = {"descr": descr, "fortran_order": False, "shape": (n,)}
        np.lib.format.write_array_header_1_0(self._file, header)
        if start == 0:
            self._header_len = self._file.tell()
        elif self._file.tell() != self._header_len:
            raise AssertionError("npy header changed length")

    def _close(self) -> None:
        """Finish the open shard: header, rename into place, hash. Shards are not fsynced: the
        rename is atomic against a killed process, and the manifest's hashes catch the rest."""
        if self._file is None:
            return
        if self.fmt == "npy":
            self._file.seek(0)
            self._npy_header(self._n)
        self._file.close()
        self._file = None
        final = self.out / self._name()
        os.replace(self._tmp, final)
        self._tmp = None
        self.entries.append(
            {
                "file": final.name,
                "split": self.split,
                "tokens": self._n,
                "sha256": provenance.sha256_file(final),
            }
        )

    def finish(self) -> list[dict[str, Any]]:
        self._close()
        return self.entries

    def abort(self) -> None:
        """Remove the open temporary file and the shards written so far."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
        for e in self.entries:
            (self.out / e["file"]).unlink(missing_ok=True)
