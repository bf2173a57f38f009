"""Fresh `python -m training.train` processes for the comparison benchmarks.

A comparison trains each of its variants in a process of its own, one after
the other: each returns its memory and shares no warmed-up state, and no run
resumes another's checkpoints (its model directory is deleted first).
"""

import csv
import json
import os
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child_env():
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env["PYTHONPATH"] = os.pathsep.join([REPO, env.get("PYTHONPATH", "")])
    return env


def train_run(name, train_flags, run_dir, log_path, timeout):
    """Trains one variant; returns its `eval_metrics.json` dict, or None if it failed.

    Args:
        name: the variant, for messages.
        train_flags: flags of `training.train` (without `--model_dir`).
        run_dir: its `--model_dir`, deleted first.
        log_path: where its stdout and stderr go.
        timeout: seconds allowed.
    """
    shutil.rmtree(run_dir, ignore_errors=True)
    command = [sys.executable, "-m", "training.train", f"--model_dir={run_dir}", "--verbose=0"]
    command += list(train_flags)
    started = time.time()
    with open(log_path, "w") as log:
        try:
            code = subprocess.run(command, cwd=REPO, env=child_env(), stdout=log, stderr=subprocess.STDOUT,
                                  timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    print(f"{name}: exit {code} after {time.time() - started:.0f} s (log {log_path})", flush=True)
    metrics_path = os.path.join(run_dir, "eval_metrics.json")
    if code != 0 or not os.path.exists(metrics_path):
        with open(log_path) as f:
            print(f.read()[-2000:], file=sys.stderr)
        return None
    with open(metrics_path) as f:
        return json.load(f)


def output_dirs(output_dir):
    """Creates `<output_dir>/runs` and `/logs`; returns `(output_dir, runs_dir, logs_dir)`, absolute."""
    output_dir = os.path.abspath(output_dir)
    runs_dir, logs_dir = os.path.join(output_dir, "runs"), os.path.join(output_dir, "logs")
    os.makedirs(runs_dir, exist_ok=True)
    os.makedirs(logs_dir, exist_ok=True)
    return output_dir, runs_dir, logs_dir


def write_table(output_dir, name, markdown_text, columns, rows):
    """Writes `<name>.md` and `<name>.csv` (one row a dict of `columns`) and prints the Markdown."""
    with open(os.path.join(output_dir, f"{name}.md"), "w") as f:
        f.write(markdown_text)
    with open(os.path.join(output_dir, f"{name}.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    print(markdown_text)
