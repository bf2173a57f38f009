"""Training step time and images/s of the captioner under each strategy.

    python benchmarks/scaling.py [--batch_size=32] [--steps=30] [--experiment=caption_synthetic]

One run measures, one after the other on this machine, the real command
`python -m training.train` (the same loop, data pipeline and model) with:

- `default`: one device, the baseline;
- `mirrored`: MirroredStrategy over 2 logical CPU devices (--cpu_replicas=2);
- `multi_worker`: 2 worker processes, MultiWorkerMirroredStrategy with
  TF_CONFIG on free 127.0.0.1 ports (ring all-reduce over gRPC on loopback).

The global batch is the same in all three (strong scaling). Each run trains
`--warmup` steps (tracing, cache filling), then `--steps` timed steps; the
figures come from the timed interval of the chief's `train_log.jsonl`. Ends
with one JSON line of the figures.

Why these CPU numbers say nothing about GPU scaling: see NOTE below (printed
with the results).
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile

from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

flags.DEFINE_string("experiment", "caption_synthetic", "Experiment whose model is measured.")
flags.DEFINE_integer("batch_size", 32, "Global batch size (divisible by 2).")
flags.DEFINE_integer("steps", 30, "Timed steps per configuration.")
flags.DEFINE_integer("warmup", 30, "Untimed steps first: tracing, image cache filling.")
flags.DEFINE_integer("timeout", 900, "Seconds allowed per configuration.")
FLAGS = flags.FLAGS

NOTE = """\
Why CPU numbers on 2 cores say nothing about GPU scaling:
- `mirrored` here splits ONE pair of physical cores into 2 logical devices.
  Both replicas, and TensorFlow's shared intra-op thread pool, compete for the
  same 2 cores, so no extra compute exists to scale onto; what is measured is
  the overhead of splitting the batch, the second replica's kernel launches and
  the gradient reduction (ReductionToOneDevice copies on CPU).
- `multi_worker` here runs 2 processes on the same 2 cores and all-reduces the
  gradients with a gRPC ring over loopback: it measures serialization and
  collective bookkeeping, not a network, and again no extra compute.
- On GPUs each replica owns a device. Per the documented semantics of
  MirroredStrategy / MultiWorkerMirroredStrategy a step is: every replica runs
  forward and backward on global_batch / replicas examples in parallel, then
  the gradients (4 bytes x parameters) are summed by an all-reduce (NCCL:
  NVLink/PCIe within a host, the network between hosts; a ring moves about
  2 x gradient bytes per device whatever the number of devices), then every
  replica applies the same update. Step time ~ compute(batch / replicas) +
  all-reduce(parameters) + input. For this small captioner the all-reduce is
  cheap, but compute at a small per-replica batch is dominated by fixed kernel
  launch costs, so at a FIXED global batch (what these runs do) GPU speedup
  would be well below linear; keeping the per-replica batch fixed and growing
  the global batch with the replicas (weak scaling; retune the learning rate)
  is what approaches replicas x throughput, provided the tf.data pipeline
  feeds every device (decode and augmentation scale with CPU cores per host).
  None of this can be measured here: no machine available can run
  TensorFlow on a GPU."""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env(**extra):
    values = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    values["TF_CPP_MIN_LOG_LEVEL"] = "3"
    values["PYTHONPATH"] = os.pathsep.join([REPO, values.get("PYTHONPATH", "")])
    values.update(extra)
    return values


def command(model_dir, *flags_):
    total = FLAGS.warmup + FLAGS.steps
    if FLAGS.warmup % FLAGS.steps:
        raise app.UsageError("--warmup must be a multiple of --steps (logs are every --steps steps).")
    return [
        sys.executable, "-m", "training.train", f"--experiment={FLAGS.experiment}",
        f"--model_dir={model_dir}", "--export_dir=", "--verbose=0", f"--max_steps={total}",
        f"--set=data.batch_size={FLAGS.batch_size}", f"--set=train.log_every={FLAGS.steps}",
        "--set=train.checkpoint_every=0", "--set=train.max_minutes=0", "--set=train.steps_per_epoch=0",
        # Enough images to keep the cache small but batches varied; tiny eval.
        f"--set=data.synthetic_num_train={max(8 * FLAGS.batch_size, 256)}",
        "--set=data.synthetic_num_validation=0", "--set=data.synthetic_num_test=4",
        "--set=eval.max_images=2", "--set=eval.num_samples=0",
        *flags_,
    ]


def measure(name, root, flags_=(), workers=1):
    model_dir = os.path.join(root, name)
    ports = [free_port() for _ in range(workers)]
    processes = []
    for index in range(workers):
        extra = {}
        if workers > 1:
            extra["TF_CONFIG"] = json.dumps({
                "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                "task": {"type": "worker", "index": index},
            })
        log = open(os.path.join(root, f"{name}-{index}.log"), "w")
        processes.append((subprocess.Popen(command(model_dir, *flags_), cwd=REPO, env=env(**extra),
                                           stdout=log, stderr=subprocess.STDOUT), log))
    for process, log in processes:
        code = process.wait(timeout=FLAGS.timeout)
        log.close()
        if code:
            with open(log.name) as f:
                tail = f.read()[-3000:]
            raise RuntimeError(f"{name} failed (exit status {code}):\n{tail}")
    with open(os.path.join(model_dir, "logs", "train_log.jsonl")) as f:
        records = [json.loads(line) for line in f if '"loss"' in line]
    timed = records[-1]
    assert timed["step"] == FLAGS.warmup + FLAGS.steps
    images_per_s = timed["examples_per_second"]
    with open(os.path.join(root, f"{name}-0.log")) as f:
        params = next((line.split("Model parameters:")[1].strip() for line in f if "Model parameters:" in line), "?")
    return {"images_per_s": images_per_s, "step_ms": 1000.0 * FLAGS.batch_size / images_per_s, "params": params}


def main(argv):
    del argv
    if FLAGS.batch_size % 2:
        raise app.UsageError("--batch_size must be divisible by 2 (2 replicas).")
    root = tempfile.mkdtemp(prefix="mmkeras-scaling-")
    try:
        results = {
            "default": measure("default", root),
            "mirrored_2cpu": measure("mirrored_2cpu", root, ("--strategy=mirrored", "--cpu_replicas=2")),
            "multi_worker_2": measure("multi_worker_2", root, ("--strategy=multi_worker",), workers=2),
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)
    base = results["default"]["images_per_s"]
    params = results["default"]["params"]
    gradient_mb = f", {4 * int(params) / 1e6:.1f} MB of float32 gradients per all-reduce" if params.isdigit() else ""
    print(f"captioner ({FLAGS.experiment}, {params} parameters{gradient_mb}), global batch "
          f"{FLAGS.batch_size}, {FLAGS.steps} timed steps after {FLAGS.warmup}, {os.cpu_count()} CPU cores")
    print(f"{'configuration':<32}{'step time (ms)':>16}{'images/s':>12}{'vs default':>12}")
    labels = {"default": "default (1 device)", "mirrored_2cpu": "mirrored (2 logical CPUs)",
              "multi_worker_2": "multi_worker (2 procs, loopback)"}
    for key, label in labels.items():
        r = results[key]
        print(f"{label:<32}{r['step_ms']:>16.1f}{r['images_per_s']:>12.1f}{r['images_per_s'] / base:>11.2f}x")
    print()
    print(NOTE)
    figures = {"experiment": FLAGS.experiment, "global_batch_size": FLAGS.batch_size, "timed_steps": FLAGS.steps,
               "cpu_cores": os.cpu_count()}
    for key, r in results.items():
        figures[f"{key}_step_ms"] = round(r["step_ms"], 2)
        figures[f"{key}_images_per_s"] = round(r["images_per_s"], 2)
        figures[f"{key}_vs_default"] = round(r["images_per_s"] / base, 3)
    print(json.dumps(figures, sort_keys=True))


if __name__ == "__main__":
    app.run(main)
