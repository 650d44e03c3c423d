"""Row access to Arrow tables on disk that keeps the process's resident memory flat, and lookup by id.

A store's ``data.arrow`` is an uncompressed Arrow IPC file. Its structure (batch headers, where each
column's buffers lie) is read through a memory map, but values are read with ``os.pread`` at the
offsets those buffers give: reading a passage through the map would make the kernel map 64 KB of the
file around it (fault-around), so 10,000 random passages of a DPR-size corpus would add ~640 MB of
mapped pages to the process; with ``pread`` they add none (the OS page cache still caches the file).
Whole record batches, for sequential reading, are loaded into ordinary memory one at a time.

Ids are found through their 64-bit hashes: ``id_hash.npy`` (sorted) and ``id_row.npy`` (the row of
each). Every 512th hash is kept in memory (``id_hash_sample.npy``; 330 KB for 21M ids); a lookup
searches it, then ``pread``s one 4 KB block of hashes and one row number.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import struct
from array import array
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

SAMPLE = 512  # hashes per in-memory sample entry: one 4 KB block is read per lookup


def id_hashes(ids: Iterable[str]) -> np.ndarray:
    """BLAKE2b-64 of each id as uint64: stable across processes and machines, unlike ``hash()``."""
    digests = b"".join(hashlib.blake2b(i.encode("utf-8"), digest_size=8).digest() for i in ids)
    return np.frombuffer(digests, dtype="<u8")


class _Pread:
    """A read-only file read with ``os.pread``, closed with the object."""

    def __init__(self, path: Path):
        self._file = open(path, "rb")  # noqa: SIM115 - lives as long as the table

    def read(self, size: int, at: int) -> bytes:
        data = os.pread(self._file.fileno(), size, at)
        if len(data) != size:
            raise OSError(f"{self._file.name}: short read at byte {at} (the store is truncated)")
        return data


class Table:
    """Record batches with random access by row: in memory, or from an Arrow IPC file on disk."""

    def __init__(self, batches: Sequence[pa.RecordBatch] | None = None, path: Path | None = None,
                 offsets: np.ndarray | None = None):
        self.path = path
        if path is not None:
            self._file = _Pread(path)
            with open(path, "rb") as handle:
                whole = pa.py_buffer(mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ))
            self._base = whole.address
            self._reader = pa.ipc.open_file(pa.BufferReader(whole))
            self._batches: dict[int, pa.RecordBatch] = {}
            self.offsets = offsets
            self.num_batches = self._reader.num_record_batches
        else:
            self._file = None
            self._batches = dict(enumerate(batches))
            self.offsets = np.cumsum([0] + [b.num_rows for b in batches[:-1]]).astype(np.int64)
            self.num_batches = len(batches)
        self._loaded: tuple[int, pa.RecordBatch] | None = None
        last = self._batch(self.num_batches - 1).num_rows if self.num_batches else 0
        self.num_rows = int(self.offsets[-1]) + last if self.num_batches else 0

    def _batch(self, i: int) -> pa.RecordBatch:
        """Batch ``i``; for a file, its buffers point into the map and are only used for their offsets."""
        if i not in self._batches:
            self._batches[i] = self._reader.get_batch(i)
        return self._batches[i]

    def locate(self, row: int) -> tuple[int, int]:
        """(batch, row within it) of a 0-based row."""
        i = int(np.searchsorted(self.offsets, row, side="right")) - 1
        return i, row - int(self.offsets[i])

    def values(self, row: int) -> tuple:
        """Every column's value at ``row``."""
        i, local = self.locate(row)
        batch = self._batch(i)
        if self._file is None:
            return tuple(column[local].as_py() for column in batch.columns)
        return tuple(self._read(column, local) for column in batch.columns)

    def value(self, row: int, column: int) -> Any:
        i, local = self.locate(row)
        array_ = self._batch(i).column(column)
        return array_[local].as_py() if self._file is None else self._read(array_, local)

    def _where(self, buffer: pa.Buffer) -> int:
        return buffer.address - self._base

    def _offsets(self, buffer: pa.Buffer, first: int, count: int) -> np.ndarray:
        return np.frombuffer(self._file.read(4 * count, self._where(buffer) + 4 * first), dtype="<i4")

    def _read(self, column: pa.Array, i: int) -> Any:
        """The value at ``i`` of a string or list<string> column without nulls, read with pread."""
        buffers = column.buffers()
        i += column.offset
        if pa.types.is_string(column.type):
            start, end = struct.unpack("<ii", self._file.read(8, self._where(buffers[1]) + 4 * i))
            # An empty string reads nothing; where every value of a batch is empty (e.g. no titles) the data
            # buffer is empty and its address need not lie in the file at all.
            return self._file.read(end - start, self._where(buffers[2]) + start).decode() if end > start else ""
        start, end = self._offsets(buffers[1], i, 2)
        if start == end:
            return []
        child = self._offsets(buffers[3], column.values.offset + int(start), int(end - start) + 1)
        size = int(child[-1] - child[0])
        data = self._file.read(size, self._where(buffers[4]) + int(child[0])) if size else b""
        child = child - child[0]
        return [data[a:b].decode() for a, b in zip(child[:-1].tolist(), child[1:].tolist())]

    def rows(self, start: int, stop: int) -> Iterator[dict[str, list]]:
        """Columns of rows [start, stop) as Python lists, one record batch at a time."""
        if start >= stop:
            return
        first = int(np.searchsorted(self.offsets, start, side="right")) - 1
        for i in range(first, self.num_batches):
            begin = int(self.offsets[i])
            if begin >= stop:
                return
            batch = self._whole(i)
            lo, hi = max(start - begin, 0), min(stop - begin, batch.num_rows)
            yield batch.slice(lo, hi - lo).to_pydict()

    def _whole(self, i: int) -> pa.RecordBatch:
        """Batch ``i`` with its data: for a file, read into memory (the last one is kept for the next slice)."""
        if self._file is None:
            return self._batch(i)
        if self._loaded is None or self._loaded[0] != i:
            self._loaded = None  # free the previous batch before reading the next
            self._loaded = (i, pa.ipc.open_file(pa.OSFile(str(self.path))).get_batch(i))
        return self._loaded[1]


class _Sorted:
    """Sorted uint64 hashes: in memory, or on disk behind an in-memory sample of every SAMPLE-th one."""

    def __init__(self, hashes: np.ndarray | None = None, folder: Path | None = None):
        if folder is None:
            self._memory, self.n, self.sample = hashes, len(hashes), hashes[::SAMPLE]
            return
        self._memory = None
        self.sample = np.load(folder / "id_hash_sample.npy")
        self._hashes, self._hash_at, self.n = _npy(folder / "id_hash.npy")
        self._rows, self._row_at, _ = _npy(folder / "id_row.npy")

    def block(self, lo: int, hi: int) -> np.ndarray:
        if self._memory is not None:
            return self._memory[lo:hi]
        return np.frombuffer(self._hashes.read(8 * (hi - lo), self._hash_at + 8 * lo), dtype="<u8")

    def row(self, at: int, rows: np.ndarray | None) -> int:
        if rows is not None:
            return int(rows[at])
        return struct.unpack("<q", self._rows.read(8, self._row_at + 8 * at))[0]


def _npy(path: Path) -> tuple[_Pread, int, int]:
    """A 1-D .npy file of 8-byte items: (reader, byte offset of the data, length)."""
    with open(path, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, _ = read_header(handle)
        return _Pread(path), handle.tell(), shape[0]


class IdIndex:
    """id -> row through sorted id hashes; hash collisions are resolved by comparing the ids."""

    def __init__(self, hashes: _Sorted, rows: np.ndarray | None = None):
        self._hashes, self._rows = hashes, rows

    @classmethod
    def build(cls, hashes: np.ndarray) -> IdIndex:
        order = np.argsort(hashes, kind="stable")
        return cls(_Sorted(hashes[order]), order.astype(np.int64))

    @classmethod
    def open(cls, folder: Path) -> IdIndex:
        return cls(_Sorted(folder=folder))

    def save(self, folder: Path) -> None:
        np.save(folder / "id_hash.npy", self._hashes.block(0, self._hashes.n))
        np.save(folder / "id_row.npy", self._rows)
        np.save(folder / "id_hash_sample.npy", self._hashes.sample)

    def find(self, key: str, id_at) -> int:
        """The row whose id is ``key`` (``id_at(row)`` reads an id), or -1."""
        h, hashes = id_hashes([key])[0], self._hashes
        # sample[j] = hashes[j * SAMPLE], so the first hash >= h lies in ((j-1) * SAMPLE, j * SAMPLE].
        j = int(np.searchsorted(hashes.sample, h, side="left"))
        lo, hi = max(0, (j - 1) * SAMPLE), min(hashes.n, j * SAMPLE + 1)
        at = lo + int(np.searchsorted(hashes.block(lo, hi), h, side="left"))
        while at < hashes.n and hashes.block(at, at + 1)[0] == h:
            row = hashes.row(at, self._rows)
            if id_at(row) == key:
                return row
            at += 1
        return -1

    def first_duplicate(self, id_at) -> tuple[int, int] | None:
        """(first row, later row) of the duplicated id whose second use comes first, or None (at build)."""
        hashes = self._hashes.block(0, self._hashes.n)
        best: tuple[int, int] | None = None
        for at in np.flatnonzero(hashes[1:] == hashes[:-1]).tolist():
            later = int(self._rows[at + 1])
            # A stable sort keeps equal hashes in row order: compare with every earlier row of the group.
            start = at
            while start > 0 and hashes[start - 1] == hashes[at]:
                start -= 1
            for earlier in self._rows[start:at + 1].tolist():
                if id_at(int(earlier)) == id_at(later):
                    if best is None or later < best[1]:
                        best = (int(earlier), later)
                    break
        return best


class BatchSink:
    """Collects rows column by column and emits record batches: into memory, or into an Arrow file."""

    def __init__(self, schema: pa.Schema, path: Path | None, *, batch_rows: int, batch_bytes: int):
        self.schema, self.path = schema, path
        self.batch_rows, self.batch_bytes = batch_rows, batch_bytes
        self._writer = pa.ipc.new_file(str(path), schema) if path is not None else None
        self.batches: list[pa.RecordBatch] = []
        self.sizes: list[int] = []
        self._columns: list[list] = [[] for _ in schema]
        self._bytes = 0
        # Per row, for error messages about duplicates: which source and which line it came from.
        self.lines, self.sources = array("q"), array("I")
        self.hashes: list[np.ndarray] = []

    def add(self, values: tuple, size: int, line: int, source: int) -> None:
        for column, value in zip(self._columns, values):
            column.append(value)
        self.lines.append(line)
        self.sources.append(source)
        self._bytes += size
        if len(self._columns[0]) >= self.batch_rows or self._bytes >= self.batch_bytes:
            self.flush()

    def flush(self) -> None:
        if not self._columns[0]:
            return
        self.hashes.append(id_hashes(self._columns[0]))
        batch = pa.RecordBatch.from_arrays([pa.array(c, type=f.type) for c, f in zip(self._columns, self.schema)],
                                           schema=self.schema)
        self.sizes.append(batch.num_rows)
        if self._writer is not None:
            self._writer.write_batch(batch)
        else:
            self.batches.append(batch)
        self._columns = [[] for _ in self.schema]
        self._bytes = 0

    def close(self) -> tuple[Table | None, np.ndarray]:
        """The table written (None when no row came) and the hash of every row's id, in row order."""
        self.flush()
        offsets = np.cumsum([0] + self.sizes[:-1]).astype(np.int64)
        if self._writer is not None:
            self._writer.close()
            table = Table(path=self.path, offsets=offsets) if self.sizes else None
        else:
            table = Table(batches=self.batches) if self.batches else None
        hashes = np.concatenate(self.hashes) if self.hashes else np.zeros(0, dtype="<u8")
        return table, hashes
