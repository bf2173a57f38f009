"""tf.distribute strategies from flags, the chief, and where each worker writes.

    strategy = make_strategy("mirrored", cpu_replicas=2)   # 2 logical CPUs
    strategy = make_strategy("multi_worker")               # reads TF_CONFIG

`default` is TensorFlow's default strategy (one device). `mirrored` is
`MirroredStrategy` over all local GPUs, or over `cpu_replicas` logical CPU
devices when there is no GPU (how tests and CPU users exercise it).
`multi_worker` is `MultiWorkerMirroredStrategy`: every worker in `TF_CONFIG`
runs the same program, and gradients are all-reduced across workers each step.

Only the chief writes checkpoints, logs and exports. Other workers must still
run every save (saving can involve collective ops that all workers join), so
they write into a private temporary directory that `WorkerDirs` removes.
"""

import json
import os
import shutil
import tempfile

import tensorflow as tf
from absl import logging

STRATEGIES = ("default", "mirrored", "multi_worker")


def _configure_logical_cpus(num_devices):
    """Splits the physical CPU into `num_devices` logical devices."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    wanted = [tf.config.LogicalDeviceConfiguration() for _ in range(num_devices)]
    if current is None or len(current) != num_devices:
        try:
            tf.config.set_logical_device_configuration(cpu, wanted)
        except RuntimeError as e:
            raise RuntimeError(
                "Logical CPU devices must be configured before TensorFlow "
                f"initializes its devices: create the strategy first. ({e})"
            ) from None
    return [d.name for d in tf.config.list_logical_devices("CPU")]


def read_tf_config():
    """Returns the parsed `TF_CONFIG` environment variable, or `{}`."""
    text = os.environ.get("TF_CONFIG", "")
    if not text.strip():
        return {}
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"TF_CONFIG is not valid JSON ({e}). Received: {text!r}") from None
    cluster = config.get("cluster") or {}
    task = config.get("task") or {}
    unsupported = sorted(set(cluster) - {"chief", "worker"})
    if unsupported:
        raise ValueError(
            "TF_CONFIG may only list `chief` and `worker` tasks for "
            "--strategy=multi_worker (parameter-server training is not supported "
            f"by Keras 3). Received task types: {unsupported}"
        )
    if task.get("type") not in ("chief", "worker") or "index" not in task:
        raise ValueError(
            "TF_CONFIG needs a `task` with `type` (`chief` or `worker`) and "
            f"`index`. Received: {task!r}"
        )
    return config


def make_strategy(name, cpu_replicas=0, collective="auto"):
    """Returns the `tf.distribute.Strategy` named by `--strategy`.

    Must run before any other TensorFlow op: logical CPU devices and the
    collective runtime of `MultiWorkerMirroredStrategy` can only be set up
    before TensorFlow initializes its devices.

    Args:
        name: `"default"`, `"mirrored"` or `"multi_worker"`.
        cpu_replicas: with `"mirrored"` and no GPU, the number of logical CPU
            devices (replicas); 0 means one replica on the CPU.
        collective: `"auto"`, `"ring"` or `"nccl"`, the all-reduce
            implementation of `"multi_worker"` (`auto` picks NCCL on GPUs and
            ring all-reduce over gRPC on CPUs).
    """
    if name not in STRATEGIES:
        raise ValueError(f"`strategy` must be one of {STRATEGIES}. Received: strategy={name!r}")
    if cpu_replicas < 0:
        raise ValueError(f"`cpu_replicas` must be >= 0. Received: cpu_replicas={cpu_replicas}")
    if cpu_replicas and name != "mirrored":
        raise ValueError(
            "--cpu_replicas only applies to --strategy=mirrored (each "
            "multi_worker worker uses all its GPUs, or its CPU as one replica). "
            f"Received: strategy={name}, cpu_replicas={cpu_replicas}"
        )
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            if cpu_replicas:
                logging.warning("--cpu_replicas=%d ignored: using the %d local GPUs.", cpu_replicas, len(gpus))
            return tf.distribute.MirroredStrategy()
        if cpu_replicas:
            devices = _configure_logical_cpus(cpu_replicas)
            # MirroredStrategy's default all-reduce (NCCL) needs GPUs.
            return tf.distribute.MirroredStrategy(
                devices, cross_device_ops=tf.distribute.ReductionToOneDevice()
            )
        return tf.distribute.MirroredStrategy()

    if not read_tf_config():
        raise ValueError(
            "--strategy=multi_worker needs the TF_CONFIG environment variable, "
            'e.g. TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", '
            '"host2:12345"]}, "task": {"type": "worker", "index": 0}}\' '
            "(see docs/multi_worker.md)."
        )
    implementation = {
        "auto": tf.distribute.experimental.CommunicationImplementation.AUTO,
        "ring": tf.distribute.experimental.CommunicationImplementation.RING,
        "nccl": tf.distribute.experimental.CommunicationImplementation.NCCL,
    }[collective]
    return tf.distribute.MultiWorkerMirroredStrategy(
        cluster_resolver=tf.distribute.cluster_resolver.TFConfigClusterResolver(),
        communication_options=tf.distribute.experimental.CommunicationOptions(
            implementation=implementation
        ),
    )


def task_info(strategy=None):
    """Returns `(task_type, task_id, num_workers)` of this process.

    Single-process strategies report `(None, 0, 1)`.
    """
    strategy = strategy or tf.distribute.get_strategy()
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return None, 0, 1
    spec = resolver.cluster_spec().as_dict()
    num_workers = sum(len(v) for k, v in spec.items() if k in ("chief", "worker"))
    return resolver.task_type, int(resolver.task_id or 0), num_workers


def is_chief(strategy=None):
    """True on the one process that writes checkpoints, logs and exports.

    That is the `chief` task if TF_CONFIG has one, else worker 0, and the only
    process of a single-process strategy.
    """
    strategy = strategy or tf.distribute.get_strategy()
    task_type, task_id, _ = task_info(strategy)
    if task_type is None or task_type == "chief":
        return True
    resolver = strategy.cluster_resolver
    return task_type == "worker" and task_id == 0 and "chief" not in resolver.cluster_spec().as_dict()


class WorkerDirs:
    """Where this process writes: the real directories on the chief, a
    private temporary directory elsewhere.

    Use as a context manager; on exit the temporary directory is removed.

    Example:
    >>> with WorkerDirs(strategy, "runs/x", "saved_models") as dirs:
    ...     experiment.run(cfg, dirs.model_dir, dirs.export_dir, strategy)
    """

    def __init__(self, strategy, model_dir, export_dir):
        self.chief = is_chief(strategy)
        task_type, task_id, _ = task_info(strategy)
        self.checkpoint_read_dir = os.path.join(model_dir, "checkpoints")
        self._tmp = None
        if self.chief:
            self.model_dir, self.export_dir = model_dir, export_dir
        else:
            self._tmp = tempfile.mkdtemp(prefix=f"mmkeras-{task_type}{task_id}-")
            self.model_dir = os.path.join(self._tmp, "model_dir")
            self.export_dir = os.path.join(self._tmp, "export") if export_dir else ""
            os.makedirs(self.model_dir)

    def cleanup(self):
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.cleanup()


def per_replica_batch_size(global_batch_size, strategy):
    """`global_batch_size / num_replicas_in_sync`; raises if it does not divide."""
    replicas = strategy.num_replicas_in_sync
    if global_batch_size % replicas:
        raise ValueError(
            f"The global batch size ({global_batch_size}) must be divisible by "
            f"the number of replicas ({replicas}) so that every replica gets the "
            "same number of examples. Change data.batch_size."
        )
    return global_batch_size // replicas


def distribute_dataset(strategy, dataset, policy=tf.data.experimental.AutoShardPolicy.DATA):
    """Distributes a dataset of *global* batches over the replicas.

    Each global batch is split into `num_replicas_in_sync` per-replica batches;
    with several workers, `AutoShardPolicy.DATA` makes worker `i` keep its own
    replicas' parts, so one step consumes exactly one global batch whatever
    the number of devices and workers (the same examples in the same order as
    on one device).
    """
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = policy
    return strategy.experimental_distribute_dataset(dataset.with_options(options))
