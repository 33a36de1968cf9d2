"""The files the merge pass writes: spill buckets of SFT messages, and parquet cut at fixed row groups."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .. import records
from .selection import run_starts

ROW_GROUP_ROWS = 2048  # fixed, so row groups never depend on how the rows were bucketed
SPILL = pa.schema([("row", pa.int64()), records.SFT.field("messages")])


class Spill:
    """SFT messages of candidates that may be kept, in bucket files by hash of question_id."""

    def __init__(self, folder: Path, buckets: int):
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.bits = max(0, int(buckets - 1).bit_length())
        self.writers: dict[int, pa.ipc.RecordBatchFileWriter] = {}

    def bucket_of(self, order_hash: np.ndarray) -> np.ndarray:
        if not self.bits:
            return np.zeros(len(order_hash), np.int64)
        return (order_hash >> np.uint64(64 - self.bits)).astype(np.int64)

    def path(self, bucket: int) -> Path:
        return self.folder / f"bucket-{bucket:04d}.arrow"

    def add(self, rows: np.ndarray, messages: pa.Array, buckets: np.ndarray) -> None:
        """Spill SFT messages of rows already sorted by bucket."""
        table = pa.table([pa.array(rows, pa.int64()), messages], schema=SPILL)
        starts = np.flatnonzero(run_starts(buckets))
        for start, end in zip(starts, [*starts[1:], len(buckets)]):
            bucket = int(buckets[start])
            if bucket not in self.writers:
                self.writers[bucket] = pa.ipc.new_file(self.path(bucket), SPILL)
            self.writers[bucket].write_table(table.slice(start, end - start))

    def close(self) -> list[int]:
        for writer in self.writers.values():
            writer.close()
        return sorted(self.writers)

    def read(self, bucket: int) -> pa.Table:
        """A bucket, memory-mapped: its pages leave memory when the table is dropped."""
        return pa.ipc.open_file(pa.memory_map(str(self.path(bucket)))).read_all()


class RowGroupWriter:
    """A ParquetWriter that always cuts row groups at ROW_GROUP_ROWS rows."""

    def __init__(self, path: Path, schema: pa.Schema):
        # dictionaries only where values repeat: trying them on every long text costs half the write time
        self.writer = pq.ParquetWriter(
            path, schema, use_dictionary=["messages.list.element.role", "question_id", "domain"]
        )
        self.pending: list[pa.Table] = []
        self.rows = 0
        self.written = 0

    def add(self, table: pa.Table) -> None:
        if table.num_rows:
            self.pending.append(table)
            self.rows += table.num_rows
        if self.rows >= ROW_GROUP_ROWS:
            self.flush(final=False)

    def flush(self, final: bool) -> None:
        if not self.pending:
            return
        merged = pa.concat_tables(self.pending)
        whole = merged.num_rows if final else merged.num_rows - merged.num_rows % ROW_GROUP_ROWS
        if whole:
            self.writer.write_table(merged.slice(0, whole), row_group_size=ROW_GROUP_ROWS)
            self.written += whole
        rest = merged.slice(whole)
        self.pending, self.rows = ([rest] if rest.num_rows else []), rest.num_rows

    def close(self) -> int:
        self.flush(final=True)
        self.writer.close()
        return self.written
