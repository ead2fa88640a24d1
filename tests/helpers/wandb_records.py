"""The records of a W&B offline run file (`run-ID.wandb`), read with W&B's own protobuf
definitions. wandb no longer ships a Python reader of this file (its Go core reads it for
`wandb sync`); the container is LevelDB's log format: a 7-byte header (":W&B", magic, version),
then 32 KiB blocks of chunks (crc32 4 bytes, length 2, type 1: full, first, middle, last)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

BLOCK = 32768
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def _payloads(data: bytes):
    position, pieces = HEADER, []
    while position + HEADER <= len(data):
        left = BLOCK - position % BLOCK
        if left < HEADER:  # the rest of a block too short for a chunk header: padding
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + HEADER])
        chunk = data[position + HEADER:position + HEADER + length]
        position += HEADER + length
        if kind == 0 and length == 0:
            continue
        pieces.append(chunk)
        if kind in (FULL, LAST):
            yield b"".join(pieces)
            pieces = []


def read_records(path: str | Path) -> list:
    """Every Record of a .wandb file, in order."""
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path}: not a W&B run file"
    records = []
    for payload in _payloads(data):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        records.append(record)
    return records


def history(path: str | Path) -> list[dict]:
    """The rows logged with `run.log` (key -> value)."""
    return [{_key(item): json.loads(item.value_json) for item in record.history.item}
            for record in read_records(path) if record.HasField("history")]


def updates(path: str | Path, kind: str) -> dict:
    """The keys set in the run's "summary" (`run.summary.update`) or "config"
    (`run.config.update`), the last value of each."""
    values = {}
    for record in read_records(path):
        if record.HasField(kind):
            values |= {_key(item): json.loads(item.value_json)
                       for item in getattr(record, kind).update}
    return values


def _key(item) -> str:
    return item.key or ".".join(item.nested_key)
