"""The `run` section: what one training run is called, how long it runs, where it writes, how it is logged
and which Ray cluster it runs on (cluster/config.py composes it with the other sections)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal, Optional

from cocoedit.ranges import Range


@dataclass(frozen=True)
class RunConfig:
    """The driver: epochs, logging, checkpoints, the Ray cluster."""

    name: str = "cocoedit"  # the run's name: run_dir's ${name}, trackers' run name
    # Epochs to train; one epoch = sample, score, one learner update
    epochs: Annotated[int, Range(ge=1)] = 100
    run_dir: str = "runs/${name}"  # ${name} is replaced by run.name
    image_every: Annotated[int, Range(ge=0)] = 10  # 0 = never
    # Epochs between checkpoints; 0 = never (no checkpoint, no lora/: a run that cannot resume)
    checkpoint_every: Annotated[int, Range(ge=0)] = 10
    # Newest complete checkpoints kept in run_dir/checkpoints (older ones deleted)
    keep_checkpoints: Annotated[int, Range(ge=1)] = 3
    # Before the first epoch, after every eval_every-th epoch and the last, the current sampling policy edits a
    # FIXED set (eval_items items held out of training, actors.data.split_held_out, x eval_seeds noise
    # seeds) and the reward services score it: a held-out learning curve free of the noise of which items
    # an epoch drew, each mean with its standard error (cluster/train/evaluation.py). 0 = never.
    eval_every: Annotated[int, Range(ge=0)] = 0
    eval_items: Annotated[int, Range(ge=1)] = 8  # held-out items of the fixed evaluation set
    # Noise seeds per held-out item (edits = eval_items x eval_seeds)
    eval_seeds: Annotated[int, Range(ge=1)] = 2
    # Also evaluate as many items the run trains on (eval_train/*): the gap to the held-out set shows
    # overfitting. Doubles the evaluation's cost.
    eval_train: bool = True
    ray_address: Optional[str] = None  # None = the job's cluster under `ray job submit`, else a local one
    # Port of the local cluster's Prometheus metrics export (cocoedit/telemetry.py), on 127.0.0.1.
    # None = Ray picks one (logged at start); ignored when joining a cluster (`ray start --metrics-export-port`).
    metrics_export_port: Optional[Annotated[int, Range(ge=1, le=65535)]] = None
    # CPUs of the local Ray cluster a run starts; None = every core of the machine
    ray_num_cpus: Optional[Annotated[int, Range(ge=1)]] = None
    # Placement (cluster/runtime/placement.py): every role's actors are reserved as placement groups before
    # anything starts; a reservation the cluster cannot satisfy fails after this many seconds.
    placement_timeout_s: Annotated[float, Range(gt=0)] = 30.0
    # Compare what the roles ask for with the cluster's resources first (fails at once, naming the role);
    # false on autoscaling clusters where nodes join on demand.
    check_resources: bool = True
    # Rollout worker i and learner rank i share one bundle (one GPU: gpus_per_worker + gpus_per_rank <= 1).
    colocate: bool = False
    # Seed of the run's own randomness (tiny editor and judge built in code)
    seed: Annotated[int, Range(ge=0)] = 0
    tiny: bool = False  # build the tiny editor / tiny judge in code when no model_path is given
    # Experiment trackers (cluster/train/runlog.py): each gets the same scalars, image grids, the resolved
    # config as parameters and the LoRA at the end. W&B stays offline (files under run_dir/wandb, no
    # network) unless wandb_mode=online; MLflow writes a file store under run_dir/mlruns unless a
    # tracking URI is given.
    trackers: tuple[Literal["tensorboard", "wandb", "mlflow"], ...] = ("tensorboard",)
    wandb_project: str = "cocoedit"  # Weights & Biases project of the run
    # Offline: files under run_dir/wandb (sync later); online: upload as it runs
    wandb_mode: Literal["offline", "online"] = "offline"
    # MLflow server or database; None = a file store under run_dir/mlruns
    mlflow_tracking_uri: Optional[str] = None
    mlflow_experiment: str = "cocoedit"  # MLflow experiment the run is logged under
    # Joining a cluster (run.ray_address / RAY_ADDRESS) gives up after this long with a message
    # instead of waiting on the address of a stopped cluster.
    ray_connect_timeout_s: Annotated[float, Range(gt=0)] = 30.0
    # Pin learner ranks and rollout workers to disjoint cores of this machine (one-node clusters, not
    # with colocate), so that sampling the next batch overlaps the update instead of competing for the
    # same cores (bench/train_loop.py measures both).
    pin_cpus: bool = False
    # Hang detection (cluster/runtime/deadlines.py): a rollout shard, learner update, checkpoint or weight
    # transfer that has not answered after deadline_factor x the slowest time of its stage so far (at least
    # deadline_min_s; deadline_first_s before the stage was measured: the first epoch loads and compiles)
    # is hung: a rollout worker is replaced and its shard sampled again, a learner rank stops the run.
    deadline_factor: Annotated[float, Range(ge=2, le=100)] = 5.0
    # The shortest deadline of a remote call of the loop, whatever was measured
    deadline_min_s: Annotated[float, Range(ge=1)] = 120.0
    # The deadline of a stage not measured yet (the first epoch: models load, kernels compile)
    deadline_first_s: Annotated[float, Range(ge=1)] = 3600.0
    # Starting (each rollout worker's and learner rank's constructor: the editor loaded; the learner's
    # DeepSpeed set-up and rendezvous) and --resume's checkpoint load must be done this many seconds after
    # the actors were created; a rank or worker stopped, deadlocked or never placed stops the run with one
    # line naming it. Reward replicas have rewards.client.ready_timeout_s.
    deadline_start_s: Annotated[float, Range(ge=1, le=86400)] = 1800.0

    def check(self) -> None:
        """Rules between fields (the config loader calls this)."""
        if self.deadline_first_s < self.deadline_min_s:
            raise ValueError(
                f"deadline_first_s={self.deadline_first_s:g} is below deadline_min_s={self.deadline_min_s:g}: the "
                "first epoch (loading, compiling) needs the longer deadline; raise run.deadline_first_s"
            )
        if not self.run_dir.strip():
            raise ValueError(
                "run_dir is empty: the run would write into the current directory; give a directory, e.g. "
                "run.run_dir=runs/${name} (the default)"
            )
