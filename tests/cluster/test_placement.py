"""Placement: what each role asks for is checked against the cluster, and reserved or refused fast."""

import time
from pathlib import Path

import pytest
import ray
from ray.util.placement_group import placement_group, remove_placement_group

from cocoedit.cluster.config import ConfigError, load_config
from cocoedit.cluster.runtime.placement import Demand, Placement, PlacementError, check_cluster, demands
from cocoedit.cluster.train.loop import train
from cocoedit.rewards.serve import SERVICES

# the tiny config's roles: learner 0.5 CPU, rollout 0.5 CPU, pixel 0.25 CPU, synthetic 0.25 CPU
TINY = ["run.epochs=1", "data.synth_num=8", "data.n_items=2", "data.group_size=4"]


def test_demands_follow_the_config() -> None:
    cfg = load_config(None, ["rollout.num_workers=3", "rewards.pixel.scaling.replicas=2"])
    by_role = {d.role: d for d in demands(cfg)}
    assert by_role["rollout workers"].total("CPU") == pytest.approx(1.5)
    assert by_role["reward service pixel replicas"].count == 2
    assert by_role["reward service synthetic replicas"].total("CPU") == pytest.approx(0.25)
    assert by_role["learner ranks"].total("GPU") == 0
    external = load_config(None, ["rewards.addresses={pixel: ['127.0.0.1:5']}"])
    assert "reward service pixel replicas" not in {d.role for d in demands(external)}


def test_colocated_roles_share_one_bundle_per_pair() -> None:
    cfg = load_config(
        None,
        [
            "run.colocate=true",
            "rollout.num_workers=2",
            "learner.world_size=2",
            "rollout.gpus_per_worker=0.5",
            "learner.gpus_per_rank=0.5",
        ],
    )
    (pair, *_rewards) = demands(cfg)
    assert (pair.count, pair.cpus, pair.gpus) == (2, 1.0, 1.0)
    # pairs that cannot share a bundle are refused when the config is loaded, before Ray starts
    with pytest.raises(ConfigError, match="rollout.num_workers=2 must equal learner.world_size=1"):
        load_config(None, ["run.colocate=true", "rollout.num_workers=2", "learner.world_size=1"])
    with pytest.raises(ConfigError, match="must be <= 1, e.g. 0.5 each"):
        load_config(None, ["run.colocate=true", "rollout.gpus_per_worker=1", "learner.gpus_per_rank=1"])


def test_check_cluster_names_the_role_and_the_shortfall() -> None:
    wanted = [
        Demand("learner ranks", 8, 4, 1, "learner.world_size"),
        Demand("rollout workers", 8, 4, 1, "rollout.num_workers"),
        Demand("reward service mllm replicas", 1, 4, 1, "rewards.mllm.replicas"),
    ]
    nodes = [{"CPU": 64, "GPU": 8}, {"CPU": 64, "GPU": 8}]
    check_cluster(wanted, {"CPU": 136, "GPU": 17}, [*nodes, {"CPU": 8, "GPU": 1}])  # 17 GPUs: fits
    with pytest.raises(PlacementError) as e:
        check_cluster(wanted, {"CPU": 128, "GPU": 16}, nodes)
    msg = str(e.value)
    assert "reward service mllm replicas" in msg and "short by 1 GPU" in msg
    assert "learner ranks ask 8 x 1 GPU = 8" in msg and "rollout workers ask 8 x 1 GPU = 8" in msg
    with pytest.raises(
        PlacementError, match="each asks for 4 GPU but the largest node of the cluster has 2 GPU"
    ):
        check_cluster(
            [Demand("learner ranks", 1, 1, 4, "x")], {"CPU": 8, "GPU": 4}, [{"CPU": 4, "GPU": 2}] * 2
        )


@pytest.mark.parametrize(
    ("overrides", "role", "shortfall"),
    [
        (
            ["rollout.gpus_per_worker=1"],
            "rollout workers",
            "1 GPU but the largest node of the cluster has 0 GPU",
        ),
        (["learner.world_size=5", "learner.cpus_per_rank=0.5"], "learner ranks", "short by 0.5 CPU"),
    ],
)
def test_train_asking_for_more_than_the_cluster_has_fails_fast(
    ray_local, tmp_path: Path, overrides: list[str], role: str, shortfall: str
) -> None:  # noqa: ANN001
    cfg = load_config(None, [*TINY, f"run.run_dir={tmp_path}", *overrides])
    t0 = time.monotonic()
    with pytest.raises(PlacementError) as e:
        train(cfg, progress=False)
    assert time.monotonic() - t0 < 30
    assert role in str(e.value) and shortfall in str(e.value)
    assert not (tmp_path / "config.yaml").exists()  # nothing started


def test_pending_placement_group_fails_within_the_timeout(ray_local) -> None:  # noqa: ANN001
    """Another job holds 1.5 of the 2 CPUs: the totals fit, but the reservation cannot: no hang."""
    hog = placement_group([{"CPU": 1.5}])
    ray.get(hog.ready(), timeout=30)
    try:
        cfg = load_config(None, [*TINY, "run.placement_timeout_s=2"])
        t0 = time.monotonic()
        with pytest.raises(PlacementError) as e:
            Placement(cfg)
        assert time.monotonic() - t0 < 10
        msg = str(e.value)
        assert "rollout workers" in msg and "run.placement_timeout_s=2" in msg and "available" in msg
        # the groups that could not be placed were removed, not left pending; the hog is untouched
        table = ray.util.placement_group_table()
        mine = [v for v in table.values() if v["name"] in ("cocoedit-learner", "cocoedit-rollout")]
        assert mine and all(v["state"] == "REMOVED" for v in mine)
        assert table[hog.id.hex()]["state"] == "CREATED"
    finally:
        remove_placement_group(hog)


def test_colocated_actors_land_in_the_same_bundle(ray_local) -> None:  # noqa: ANN001
    cfg = load_config(None, ["run.colocate=true", "rollout.cpus_per_worker=0.5", "learner.cpus_per_rank=0.5"])
    placement = Placement(cfg)
    try:

        @ray.remote
        class Where:
            def where(self) -> tuple[str, dict]:
                ctx = ray.get_runtime_context()
                return ctx.get_placement_group_id(), ctx.get_assigned_resources()

        a = Where.options(**placement.rollout(0)).remote()
        b = Where.options(**placement.learner(0)).remote()
        (pg_a, res_a), (pg_b, res_b) = ray.get([a.where.remote(), b.where.remote()])
        assert pg_a == pg_b == placement.groups["colocated rollout workers + learner ranks"].id.hex()
        assert res_a == res_b == {"CPU": 0.5}
        ray.kill(a)
        ray.kill(b)
    finally:
        placement.close()


@pytest.mark.parametrize(
    ("name", "nodes"),
    [("flux_kontext_8gpu.yaml", 1), ("qwen_image_edit_16gpu.yaml", 2)],
)
def test_shipped_cluster_configs_fit_the_clusters_they_name(name: str, nodes: int) -> None:
    from cocoedit.cluster.config import CONFIG_DIR

    cfg = load_config(CONFIG_DIR / name)
    node = {"CPU": 96.0, "GPU": 8.0}
    check_cluster(demands(cfg), {"CPU": 96.0 * nodes, "GPU": 8.0 * nodes}, [node] * nodes)
    gpus = sum(d.total("GPU") for d in demands(cfg))
    assert gpus == 8 * nodes  # every GPU has a role, none is asked twice
    with pytest.raises(PlacementError, match="short by"):
        check_cluster(demands(cfg), {"CPU": 96.0 * nodes, "GPU": 8.0 * nodes - 1}, [node] * nodes)


def _threads_and_cores(actor) -> tuple[int, list[int]]:  # noqa: ANN001
    import os

    import torch

    return ray.get(
        actor.__ray_call__.remote(lambda self: (torch.get_num_threads(), sorted(os.sched_getaffinity(0))))
    )


def test_actors_use_the_cpus_they_reserved(ray_local) -> None:  # noqa: ANN001
    """A process environment with OMP_NUM_THREADS=1 (as Ray gives actors with fractional asks, and as
    clusters often set) must not make a role that reserved 2 CPUs single-threaded."""
    from cocoedit.cluster.runtime.services import RewardReplica
    from cocoedit.cluster.train.learners import LearnerRank

    one_thread = {"env_vars": {"OMP_NUM_THREADS": "1"}}
    rank = ray.remote(LearnerRank).options(num_cpus=2, runtime_env=one_thread).remote(0, 1, 2.0)
    try:
        assert _threads_and_cores(rank)[0] == 2
    finally:
        ray.kill(rank)
    cfg = load_config(None, ["rewards.pixel.scaling.cpus_per_replica=1", "rewards.pixel.threads=0"]).rewards
    replica = ray.remote(RewardReplica).options(num_cpus=1).remote(SERVICES["pixel"], cfg.pixel)
    try:
        # the pixel scorer's "one thread per core" (threads=0) means the 1 CPU the replica reserved,
        # not every core of the node
        threads = ray.get(
            replica.__ray_call__.remote(lambda self: self.server.server.servicer.scorer.threads)
        )
        assert threads == 1 and _threads_and_cores(replica)[0] == 1
    finally:
        ray.get(replica.stop.remote())
        ray.kill(replica)


def test_pinned_roles_get_disjoint_cores(ray_local) -> None:  # noqa: ANN001
    import os

    from cocoedit.cluster.runtime.placement import cpu_sets
    from cocoedit.cluster.train.learners import LearnerRank

    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        pytest.skip("pinning two roles apart needs two cores")
    cfg = load_config(None, ["run.pin_cpus=true"])  # tiny: learner 0.5 CPU, rollout 0.5 CPU
    sets = cpu_sets(cfg)
    assert sets == {"learner ranks": [[cores[0]]], "rollout workers": [[cores[1]]]}
    rank = ray.remote(LearnerRank).options(num_cpus=0.5).remote(0, 1, 0.5, sets["learner ranks"][0])
    try:
        assert _threads_and_cores(rank) == (1, [cores[0]])
    finally:
        ray.kill(rank)
    with pytest.raises(PlacementError, match="not with run.colocate"):
        cpu_sets(load_config(None, ["run.pin_cpus=true", "run.colocate=true"]))
    with pytest.raises(PlacementError, match=f"needs {len(cores) + 1} cores"):
        cpu_sets(load_config(None, ["run.pin_cpus=true", f"learner.cpus_per_rank={len(cores)}"]))


def test_reward_replicas_take_their_own_bundles_in_a_trial(ray_local) -> None:  # noqa: ANN001
    """Inside a trial's group (laid out as run_bundles) the reward replicas go to their own bundles even
    when they start before the learner and rollout worker: left to capture (any bundle with room) one
    took half of the rollout worker's bundle in a sweep, and the worker waited for deadline_start_s."""
    from cocoedit.cluster.runtime.placement import run_bundles
    from cocoedit.cluster.runtime.services import RewardServices

    cfg = load_config(None, [*TINY, "run.pin_cpus=false"])
    trial = placement_group(run_bundles(cfg))  # learner 0.5, rollout 0.5, pixel 0.25, synthetic 0.25
    ray.get(trial.ready(), timeout=30)
    services = None
    try:
        placement = Placement(cfg, group=trial)
        assert sorted(placement.replica_bundles(n) for n in ("pixel", "synthetic")) == [[2], [3]]
        services = RewardServices(cfg.rewards, placement)  # before any learner rank or rollout worker
        free = ray.available_resources()
        per_bundle = [free.get(f"CPU_group_{i}_{trial.id.hex()}", 0.0) for i in range(4)]
        assert per_bundle == [0.5, 0.5, 0.0, 0.0]  # the learner's and rollout worker's bundles untouched
        # a replaced replica takes the bundle its predecessor left, not another role's
        old = services.replicas["pixel"][0]
        ray.kill(old, no_restart=True)
        services._forget(old)  # noqa: SLF001 (what refresh does for a replica gone for good)
        services.replicas["pixel"][0] = services._start("pixel")  # noqa: SLF001
        ray.get(services.replicas["pixel"][0].address.remote(), timeout=60)
        free = ray.available_resources()
        assert [free.get(f"CPU_group_{i}_{trial.id.hex()}", 0.0) for i in range(4)] == [0.5, 0.5, 0.0, 0.0]
    finally:
        if services is not None:
            services.close()
        remove_placement_group(trial)
