"""Passage vectors on disk: float16 shards that are written once, resumed after a kill, and read by row.

    INDEX_DIR/vectors/
        vectors.json        rows, dim, shard_rows, corpus hash, encoder identity, precision, complete
        shard-00000.npy     float16 [shard_rows, dim] (the last shard shorter); plain .npy files

A shard is the unit of work: it is encoded by one process (shard ``i`` by rank ``i % world``), written to
a temporary file and renamed into place, so a shard file that exists is complete. ``--resume`` re-encodes
only the shards that are missing. A shard is encoded ``CHUNK`` passages at a time, length-sorted within
the chunk exactly as before the kill, so a resumed store holds the same bytes as an uninterrupted one.

Why float16: DPR Wikipedia (21M passages) is 16 GB at 384 dimensions instead of 32 GB, and a normalised
vector loses about 1e-3 relative precision, far below the differences between retrieval scores that
matter. The exact vectors that p_r and q use come from here (never from a compressed FAISS index), read
with ``pread`` at their offsets rather than through a memory map: a map's page faults pull 64 KB around
every row into the process, so random candidate lookups would grow its resident memory to the store's size.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from tqdm.auto import tqdm

from jsarag.errors import IndexMismatchError
from jsarag.fileio import reporting_full_disk, write_text_atomic

META_FILE = "vectors.json"
SHARD_ROWS = 65_536  # 48 MiB of float16 at 384 dimensions: the work lost to a kill, at most, per process
CHUNK = 16_384  # passages read from the corpus and length-sorted together (about 10 MB of DPR text)
DTYPE = np.dtype("<f2")


@dataclass
class VectorsMeta:
    rows: int
    dim: int
    shard_rows: int
    corpus_hash: str
    encoder: dict[str, Any] = field(default_factory=dict)
    precision: str = ""  # what the encoder computed in (fp32, bf16...): part of what the vectors are
    dtype: str = "float16"
    complete: bool = False

    def same_work(self, other: "VectorsMeta") -> bool:
        """Whether a store described by ``other`` can be resumed into this one (only ``complete`` may differ)."""
        return {**asdict(self), "complete": None} == {**asdict(other), "complete": None}


def shard_name(i: int) -> str:
    return f"shard-{i:05d}.npy"


def _header_bytes(rows: int, dim: int) -> bytes:
    """The .npy header of a float16 [rows, dim] array (format 1.0, padded to 64 bytes as numpy writes it)."""
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": np.lib.format.dtype_to_descr(DTYPE),
                                                "fortran_order": False, "shape": (rows, dim)})
    return buf.getvalue()


class VectorStore:
    """A complete or partly written store; rows are read as float32."""

    def __init__(self, path: str | os.PathLike, meta: VectorsMeta):
        self.path = Path(path)
        self.meta = meta
        self._fds: dict[int, int] = {}
        self._offsets: dict[int, int] = {}

    # ---- layout -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.meta.rows

    @property
    def dim(self) -> int:
        return self.meta.dim

    @property
    def num_shards(self) -> int:
        return -(-self.meta.rows // self.meta.shard_rows)

    def shard_range(self, i: int) -> tuple[int, int]:
        start = i * self.meta.shard_rows
        return start, min(start + self.meta.shard_rows, self.meta.rows)

    def shard_complete(self, i: int) -> bool:
        """The shard's file exists with the size its rows need (a renamed file is always whole)."""
        start, stop = self.shard_range(i)
        size = len(_header_bytes(stop - start, self.dim)) + (stop - start) * self.dim * DTYPE.itemsize
        path = self.path / shard_name(i)
        return path.is_file() and path.stat().st_size == size

    def missing_shards(self) -> list[int]:
        return [i for i in range(self.num_shards) if not self.shard_complete(i)]

    # ---- opening and creating -----------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike) -> "VectorStore":
        """A complete store; IndexMismatchError when it is missing, unreadable or unfinished."""
        path = Path(path)
        meta = read_meta(path)
        if meta is None:
            raise IndexMismatchError(f"no passage vectors at {path} (expected {META_FILE})")
        if not meta.complete:
            raise IndexMismatchError(f"the passage vectors at {path} were not finished; "
                                     f"run `jsarag index build ... --resume` to complete them")
        return cls(path, meta)

    @classmethod
    def create(cls, path: str | os.PathLike, meta: VectorsMeta, *, resume: bool, strict: bool = True
               ) -> "VectorStore":
        """Start a store at ``path`` (main process only). With ``resume``, shards already written for the
        same corpus, encoder and layout are kept, and a store of other work is an error when ``strict``
        (replaced otherwise). Without it, earlier shards are removed."""
        path = Path(path)
        old = read_meta(path)
        if old is not None and resume and not old.same_work(meta) and not strict:
            old = None
        if old is not None and resume and not old.same_work(meta):
            raise IndexMismatchError(
                f"cannot resume the passage vectors at {path}: they were started for another corpus, encoder, "
                f"precision or layout (rows {old.rows}, dim {old.dim}, shard_rows {old.shard_rows}, encoder "
                f"{old.encoder.get('name')}, precision {old.precision or 'unknown'}); build without --resume "
                f"to start again")
        if path.exists() and not (resume and old is not None):
            shutil.rmtree(path)
        path.mkdir(parents=True, exist_ok=True)
        for stray in path.glob(".shard-*.tmp*"):  # a shard being written when the process was killed
            stray.unlink()
        write_meta(path, VectorsMeta(**{**asdict(meta), "complete": False}))
        return cls(path, meta)

    def mark_complete(self) -> None:
        missing = self.missing_shards()
        if missing:
            raise RuntimeError(f"{len(missing)} shard(s) of {self.path} missing, e.g. {shard_name(missing[0])}")
        self.meta = VectorsMeta(**{**asdict(self.meta), "complete": True})
        write_meta(self.path, self.meta)

    def write_shard(self, i: int, vectors: np.ndarray) -> None:
        """Write shard ``i`` atomically (a temporary file renamed into place)."""
        start, stop = self.shard_range(i)
        if vectors.shape != (stop - start, self.dim):
            raise ValueError(f"shard {i} needs shape {(stop - start, self.dim)}, got {vectors.shape}")
        half = vectors.astype(DTYPE)
        if not np.isfinite(half).all():
            raise ValueError(f"shard {i}: vectors are not finite in float16 (norms above 65504?)")
        tmp = self.path / f".{shard_name(i)}.tmp{os.getpid()}"
        try:
            with reporting_full_disk(f"writing passage vectors {shard_name(i)}", self.path,
                                     "free some space, then build again with --resume"):
                with open(tmp, "wb") as f:
                    f.write(_header_bytes(*half.shape))
                    f.write(np.ascontiguousarray(half).tobytes())
            os.replace(tmp, self.path / shard_name(i))
        finally:
            tmp.unlink(missing_ok=True)

    def missing_bytes(self) -> int:
        """Bytes the shards not yet written will take."""
        return sum(len(_header_bytes(b - a, self.dim)) + (b - a) * self.dim * np.dtype(DTYPE).itemsize
                   for a, b in map(self.shard_range, self.missing_shards()))

    # ---- reading ------------------------------------------------------------------------------
    def _fd(self, i: int) -> tuple[int, int]:
        if i not in self._fds:
            fd = os.open(self.path / shard_name(i), os.O_RDONLY)
            with os.fdopen(os.dup(fd), "rb") as f:
                np.lib.format.read_magic(f)
                np.lib.format.read_array_header_1_0(f)
                self._offsets[i] = f.tell()
            self._fds[i] = fd
        return self._fds[i], self._offsets[i]

    def rows(self, rows: np.ndarray) -> np.ndarray:
        """Vectors of ``rows`` (any shape, int), shape ``rows.shape + (dim,)``, float32."""
        rows = np.asarray(rows, dtype=np.int64)
        flat = rows.reshape(-1)
        if flat.size and (flat.min() < 0 or flat.max() >= self.meta.rows):
            raise IndexError(f"row out of range for {self.meta.rows} passage vectors")
        unique, inverse = np.unique(flat, return_inverse=True)
        out = np.empty((len(unique), self.dim), dtype=DTYPE)
        width = self.dim * DTYPE.itemsize
        for j, row in enumerate(unique.tolist()):
            fd, offset = self._fd(row // self.meta.shard_rows)
            out[j] = np.frombuffer(os.pread(fd, width, offset + (row % self.meta.shard_rows) * width), DTYPE)
        return out[inverse].astype(np.float32).reshape(*rows.shape, self.dim)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` as one float32 array (read shard by shard)."""
        parts = [block for _, block in self.blocks(start, stop)]
        return np.concatenate(parts) if parts else np.empty((0, self.dim), np.float32)

    def blocks(self, start: int = 0, stop: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, float32 vectors) for the rows ``start:stop``, at most one shard at a time."""
        stop = self.meta.rows if stop is None else stop
        while start < stop:
            i = start // self.meta.shard_rows
            first, last = self.shard_range(i)
            end = min(last, stop)
            shard = np.load(self.path / shard_name(i), mmap_mode="r")
            yield start, np.asarray(shard[start - first:end - first], dtype=np.float32)
            del shard
            start = end

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def read_meta(path: Path) -> VectorsMeta | None:
    try:
        return VectorsMeta(**json.loads((Path(path) / META_FILE).read_text()))
    except (OSError, json.JSONDecodeError, TypeError):
        return None


def write_meta(path: Path, meta: VectorsMeta) -> None:
    write_text_atomic(Path(path) / META_FILE, json.dumps(asdict(meta), indent=2))


def encode_shards(store: VectorStore, corpus, encoder, *, rank: int = 0, world: int = 1, batch_size: int = 64,
                  progress: bool = True) -> int:
    """Encode this process's missing shards (shard ``i`` belongs to rank ``i % world``) into ``store``.

    One progress bar counts this process's passages, starting from those already on disk. Returns the
    number of shards encoded now. Every process writes its own shards; the caller waits for all of them
    (a barrier) before the main process marks the store complete.
    """
    from jsarag.models.retriever import passage_text

    mine = [i for i in range(store.num_shards) if i % world == rank]
    todo = [i for i in mine if not store.shard_complete(i)]
    total = sum(b - a for a, b in map(store.shard_range, mine))
    done = total - sum(b - a for a, b in map(store.shard_range, todo))
    with tqdm(total=total, initial=done, desc="encoding passages", unit=" passages", disable=not progress,
              smoothing=0.05) as bar:
        for i in todo:
            start, stop = store.shard_range(i)
            vectors = np.empty((stop - start, store.dim), dtype=np.float32)
            for a in range(start, stop, CHUNK):
                b = min(a + CHUNK, stop)
                texts = [passage_text(p) for part in corpus.iter_chunks(a, b) for p in part]
                vectors[a - start:b - start] = encoder.encode(texts, batch_size=batch_size, progress=bar)
            store.write_shard(i, vectors)
    return len(todo)
