"""Read back what the experiment trackers of a run directory hold (W&B offline runs, MLflow file store)."""

from __future__ import annotations

import json
import struct
from pathlib import Path


def wandb_history(run_dir: Path) -> list[dict[str, object]]:
    """The history rows of every W&B offline run under run_dir/wandb, read from the .wandb files
    (a LevelDB-style log of protobuf records: 7-byte header, 32 KiB blocks, fragmented records)."""
    from wandb.proto import wandb_internal_pb2

    rows = []
    for path in sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb")):
        data = path.read_bytes()
        assert data[:4] == b":W&B"
        pos, block, buf = 7, 32768, b""
        while pos + 7 <= len(data):
            left = block - pos % block
            if left < 7:  # a block's tail too short for a record header is padding
                pos += left
                continue
            _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
            if kind == 0:
                pos += left
                continue
            buf += data[pos + 7 : pos + 7 + length]
            pos += 7 + length
            if kind in (1, 4):  # FULL or LAST fragment: a whole record
                record = wandb_internal_pb2.Record()
                record.ParseFromString(buf)
                buf = b""
                if record.WhichOneof("record_type") == "history":
                    # W&B stores "reward/mean" as the nested key ["reward", "mean"]
                    items = record.history.item
                    rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in items})
    return rows


def mlflow_series(run_dir: Path, key: str) -> list[tuple[int, float]]:
    """(step, value) of our metric `key` in the run's MLflow run, by step."""
    from mlflow import MlflowClient

    from cocoedit.cluster.train.runlog import mlflow_key

    key = mlflow_key(key)
    ids = json.loads((run_dir / "trackers.json").read_text())
    client = MlflowClient(tracking_uri=(run_dir / "mlruns").resolve().as_uri())
    return [
        (m.step, m.value) for m in sorted(client.get_metric_history(ids["mlflow"], key), key=lambda m: m.step)
    ]
