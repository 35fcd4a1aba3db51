"""The loop on a data file: the driver holds ItemRefs, the rollout worker reads and prefetches items."""

from pathlib import Path

import pytest
import ray

from cocoedit.actors.synth import write_synthetic_dataset
from cocoedit.actors.types import ItemRef
from cocoedit.cluster.config import load_config
from cocoedit.cluster.train.loop import run_epochs, start_run
from tests.cluster.test_train import TINY


@pytest.mark.slow  # a whole run (~2 min): pytest -m slow tests/cluster/test_data_run.py
def test_a_manifest_run_reads_each_epoch_ahead_on_the_workers(
    tmp_path: Path,
    ray_local,
    monkeypatch: pytest.MonkeyPatch,  # noqa: ANN001
) -> None:
    monkeypatch.setenv("COCOEDIT_CACHE", str(tmp_path / "cache"))
    manifest = write_synthetic_dataset(tmp_path / "data", 8, 32, seed=0)
    # no validation images: they would edit (and read) the first training items again each epoch
    overrides = [*TINY, "run.epochs=3", "run.eval_every=0", "run.image_every=0", f"data.manifest={manifest}"]
    cfg = load_config(None, [*overrides, f"run.run_dir={tmp_path / 'run'}"])
    with start_run(cfg) as run:
        assert all(isinstance(item, ItemRef) for item in run.items.values())
        rows = [row for _, row in run_epochs(run)]
        reads = ray.get(run.rollout.workers[0].reads.remote())
    assert [row["samples/edits"] for row in rows] == [2 * 4] * 3
    assert 0.0 <= rows[-1]["reward/mean"] <= 1.0
    # epoch 0 is read when it is sampled; each later epoch was prefetched while the one before sampled
    # (unless a ban after an epoch changed the next one's items)
    assert reads["prefetched"] + reads["read_on_the_spot"] == 3 * 2
    assert reads["read_on_the_spot"] == 2 or any(row["adv/banned"] for row in rows[:-1])
