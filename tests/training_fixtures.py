"""Helpers for tests that run `python -m training.train` in real processes.

Multi-worker runs use `TF_CONFIG` with free ports on 127.0.0.1 only.
"""

import json
import os
import pathlib
import re
import socket
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent

# Short, deterministic runs: evaluation on a few test images, no samples, and
# for captioners greedy decoding only (beam-search evaluation is checked by
# test_train_cli and test_export).
FAST_FLAGS = (
    "--verbose=0", "--set=eval.max_images=4", "--set=eval.num_samples=0", "--set=caption.eval_beam=false",
    "--report=false",
)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tf_config(ports, index):
    return json.dumps(
        {
            "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
            "task": {"type": "worker", "index": index},
        }
    )


def train_env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


def train_command(model_dir, *flags, experiment="caption_tiny"):
    return [
        sys.executable, "-m", "training.train", f"--experiment={experiment}",
        f"--model_dir={model_dir}", *FAST_FLAGS, *flags,
    ]


def start(command, env=None, log_path=None):
    """Starts a training process; its stdout and stderr go to `log_path`."""
    out = open(log_path, "w") if log_path else subprocess.DEVNULL
    return subprocess.Popen(command, cwd=REPO, env=env or train_env(), stdout=out, stderr=subprocess.STDOUT)


def train_log(model_dir):
    """The per-interval records of `logs/train_log.jsonl` (events left out)."""
    path = os.path.join(model_dir, "logs", "train_log.jsonl")
    if not os.path.exists(path):
        return []
    records = []
    with open(path) as f:
        for line in f:
            if line.endswith("\n"):
                record = json.loads(line)
                if "step" in record and "loss" in record:
                    records.append(record)
    return records


def losses(model_dir):
    return {r["step"]: r["loss"] for r in train_log(model_dir)}


def latest_checkpoint_step(model_dir):
    path = os.path.join(model_dir, "checkpoints", "checkpoint")
    with open(path) as f:
        return int(re.search(r'model_checkpoint_path: "ckpt-(\d+)"', f.read()).group(1))


def fingerprints(log_text):
    """`(all weights, trainable weights)` fingerprints a run logs after training."""
    match = re.search(r"weights fingerprint ([0-9a-f]{64}) \(trainable ([0-9a-f]{64})\)", log_text)
    assert match, "no weights fingerprint in the log:\n" + log_text[-3000:]
    return match.group(1), match.group(2)


def assert_same_trajectory(expected, actual, max_rtol, mean_rtol, what):
    """Per-step losses agree: relative differences at most `max_rtol` at any
    step and at most `mean_rtol` on average, over the same steps."""
    assert sorted(expected) == sorted(actual), f"{what}: logged steps differ"
    differences = [abs(actual[s] - expected[s]) / abs(expected[s]) for s in sorted(expected)]
    worst, mean = max(differences), sum(differences) / len(differences)
    assert worst <= max_rtol and mean <= mean_rtol, (
        f"{what}: loss trajectories differ by up to {worst:.2e}, {mean:.2e} on average "
        f"(allowed {max_rtol:.0e}, {mean_rtol:.0e}):\n"
        + "\n".join(f"step {s}: {expected[s]:.6f} vs {actual[s]:.6f}" for s in sorted(expected))
    )


def train_in_process(experiment_name, overrides, model_dir):
    """Trains `experiment_name` with `overrides` in this process; returns `(task, model)`.

    Seeded like `python -m training.train`, so two calls differing in a
    setting that must not change the result train the same weights.
    """
    import keras
    import tensorflow as tf

    from training import config as config_lib
    from training import experiment
    from training import named_experiments
    from training.tasks import get_task

    cfg = config_lib.override(named_experiments.get_experiment(experiment_name), list(overrides))
    os.makedirs(model_dir, exist_ok=True)
    keras.utils.set_random_seed(cfg.train.seed)
    task = get_task(cfg.task)(cfg, str(model_dir))
    task.load_data()
    strategy = tf.distribute.get_strategy()
    model = experiment.build_compiled_model(task, cfg, strategy, quiet=True)
    experiment.train_model(task, model, cfg, str(model_dir), strategy, verbose=0)
    return task, model
