"""Training on several devices or machines: the ``strategy`` setting of ``train.py``.

``one``: the default single device. ``mirrored``: ``tf.distribute.MirroredStrategy`` over
every local GPU, or over every logical CPU device when there is no GPU (how the tests
and the benchmark split a CPU in two). ``multiworker``:
``tf.distribute.MultiWorkerMirroredStrategy`` over the machines named in ``TF_CONFIG``.
``auto``: mirrored when there are several local GPUs, else one.

``-b`` is the batch per replica; the global batch is ``-b`` × replicas (setup.json records
both). Losses are per image, averaged over the global batch, so one step on two replicas
equals one step on one device with the global batch.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from utils import SettingError, UserError

STRATEGIES = ("auto", "one", "mirrored", "multiworker")
_CREATED = {}  # one strategy object per name and process (multi-worker ones cannot be made twice)


def _tf():
    import tensorflow as tf

    return tf


def tf_config() -> dict | None:
    """``TF_CONFIG`` parsed and checked: ``(cluster dict, task type, task index)``; one-line errors."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise SettingError(
            "`strategy=multiworker` needs TF_CONFIG, e.g. "
            '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}'
        )
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise UserError(f"TF_CONFIG is not valid JSON ({exc.msg} at character {exc.pos})") from None
    if (
        not isinstance(config, dict)
        or not isinstance(config.get("cluster"), dict)
        or not isinstance(config.get("task"), dict)
    ):
        raise UserError(
            "TF_CONFIG must be a JSON object with 'cluster' (job name -> list of host:port) and 'task' "
            "({'type': ..., 'index': ...})"
        )
    cluster, task = config["cluster"], config["task"]
    for job, hosts in cluster.items():
        if not isinstance(hosts, list) or not all(isinstance(h, str) and ":" in h for h in hosts) or not hosts:
            raise UserError(f"TF_CONFIG cluster {job!r} must be a non-empty list of 'host:port' strings, got {hosts!r}")
    kind, index = task.get("type"), task.get("index")
    if kind not in cluster or not isinstance(index, int) or not 0 <= index < len(cluster[kind]):
        raise UserError(f"TF_CONFIG task {task!r} does not name one of its cluster's tasks ({json.dumps(cluster)})")
    return cluster, kind, index


def is_chief() -> bool:
    """True unless this process is a non-chief multi-worker task (those write nothing that is kept)."""
    if "multiworker" not in _CREATED:
        return True
    cluster, kind, index = tf_config()
    if "chief" in cluster:
        return kind == "chief"
    return kind == "worker" and index == 0


def scratch_dir() -> Path:
    """A throw-away run folder for a non-chief worker (Keras needs somewhere to save)."""
    return Path(tempfile.mkdtemp(prefix="cae-worker-"))


def get_strategy(name: str = "one"):
    """The ``tf.distribute`` strategy for ``name`` (created once per process)."""
    name = name or "one"
    if name not in STRATEGIES:
        raise UserError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    if name in _CREATED:
        return _CREATED[name]
    tf = _tf()
    # Listing devices starts TensorFlow's context, after which collectives cannot be set up:
    # the multi-worker strategy must come first.
    gpus = [] if name == "multiworker" else tf.config.list_logical_devices("GPU")
    if name == "auto":
        strategy = get_strategy("mirrored" if len(gpus) > 1 else "one")
    elif name == "one":
        strategy = tf.distribute.get_strategy()
    elif name == "mirrored":
        if gpus:
            strategy = tf.distribute.MirroredStrategy([d.name for d in gpus])
        else:  # CPU devices: NCCL is GPU-only, so reduce on one device
            cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
            strategy = tf.distribute.MirroredStrategy(cpus, cross_device_ops=tf.distribute.ReductionToOneDevice())
    else:
        tf_config()  # one-line errors before TensorFlow reads it
        try:
            strategy = tf.distribute.MultiWorkerMirroredStrategy()
        except (ValueError, RuntimeError) as exc:
            raise UserError(
                f"cannot start the multi-worker strategy from TF_CONFIG: {str(exc).splitlines()[0][:200]}"
            ) from None
    _CREATED[name] = strategy
    return strategy


def describe(name: str, per_replica_batch: int) -> dict:
    """What setup.json records about the strategy: name asked, what ran, replicas, batches."""
    strategy = get_strategy(name)
    replicas = int(strategy.num_replicas_in_sync)
    record = {
        "strategy": name,
        "strategy_class": type(strategy).__name__,
        "replicas": replicas,
        "per_replica_batch": int(per_replica_batch),
        "global_batch": int(per_replica_batch) * replicas,
    }
    if name == "multiworker":
        cluster, _, _ = tf_config()
        record["workers"] = sum(len(hosts) for hosts in cluster.values())
    return record


def global_batch(setup: dict) -> int:
    """The batch one training step sees: per-replica batch × replicas. ``setup``, here and below:
    the run's ``setup.json`` object in the current format (runs.RunSetup.to_record), or a part
    of it with the fields used."""
    return int(setup["global_batch"])


def scope(setup: dict):
    """The strategy scope a run's model and optimizer must be created in."""
    return get_strategy(setup["strategy"]).scope()


def validation_batch(setup: dict, n_images: int) -> int:
    """Batch for the validation images: the global batch, or the largest multiple of the
    replicas that fits the images, so the first batch splits evenly over replicas (Keras
    builds the model from the replicas' mean of the first batch, which fails for unequal
    shares). The loss is averaged per image whatever the batch.
    """
    batch, replicas = global_batch(setup), int(setup["replicas"])
    if replicas == 1 or n_images >= batch:
        return batch
    if n_images < replicas:
        raise SettingError(
            f"{n_images} validation image(s) cannot be shared by {replicas} replicas: "
            "use a larger `val_split` or fewer devices"
        )
    return n_images // replicas * replicas


def drop_short_batches(dataset, setup: dict, n_images: int, batch: int, what: str):
    """Drop a last batch with fewer images than replicas (a replica without images fails
    in TensorFlow's convolutions), with a warning saying how many images that leaves out."""
    replicas = int(setup["replicas"])
    rest = n_images % batch
    if replicas == 1 or not 0 < rest < replicas:
        return dataset
    from utils import warn

    warn(f"{rest} {what} image(s) per epoch left out: the last batch of {rest} cannot be shared by {replicas} replicas")
    return dataset.filter(lambda x, y: _tf().shape(x)[0] >= replicas)


def check_train_count(setup: dict, n_images: int) -> None:
    """One-line refusal when the training images do not fill one global batch (see :func:`validation_batch`)."""
    if int(setup["replicas"]) > 1 and n_images < global_batch(setup):
        raise SettingError(
            f"{n_images} training images do not fill one global batch of {global_batch(setup)} "
            f"({setup['replicas']} replicas x `batch={setup['batch']}`): use a smaller `batch` or fewer devices"
        )


def adapt(model, setup: dict) -> None:
    """Let Keras 3's ``fit`` run under the multi-worker strategy (keras-team/keras#20585).

    Before training, Keras builds the model symbolically from the first batch *reduced
    over replicas*, a reduction the multi-worker strategy cannot do eagerly; any one
    replica's share has the right structure, so this instance builds from the local share.
    Other strategies are left as they are.
    """
    if setup["strategy"] != "multiworker":
        return model
    from keras import tree

    tf = _tf()

    def build_from_local_share(iterator=None, data_batch=None):
        if iterator is not None:
            for _, _, it in iterator:
                data_batch = tree.map_structure(
                    lambda v: (
                        model.distribute_strategy.experimental_local_results(v)[0]
                        if isinstance(v, tf.distribute.DistributedValues)
                        else v
                    ),
                    next(it),
                )
                break
        with model.distribute_strategy.scope():
            model._symbolic_build(data_batch=data_batch)

    model._maybe_symbolic_build = build_from_local_share
    _patch_scalar_mean()
    return model


def _patch_scalar_mean():
    """Keras 3 reduces each step's logs over workers with ``axis=0``, which fails for the
    scalar logs (keras-team/keras#20585); reduce scalars without an axis. Only ever applied
    under the multi-worker strategy."""
    from keras.src.backend.tensorflow import trainer

    if getattr(trainer.reduce_per_replica, "scalar_safe", False):
        return
    original = trainer.reduce_per_replica
    tf = _tf()

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):

            def mean(v):
                if isinstance(v, tf.distribute.DistributedValues) or tf.is_tensor(v):
                    return strategy.reduce("MEAN", v, axis=None if v.shape.rank == 0 else 0)
                return v

            return tf.nest.map_structure(mean, values)
        return original(values, strategy, reduction)

    reduce_per_replica.scalar_safe = True
    trainer.reduce_per_replica = reduce_per_replica
