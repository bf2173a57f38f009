"""Early stopping on a validation metric, with the best weights restored.

Used by `training.loop.train` for every task. Every `eval_every` steps the
loop evaluates the validation split (on every worker, since evaluation
all-reduces its metrics, so all workers take the same decision) and calls
`update`. The best weights are kept in memory on every worker and, on the
chief, in `<model_dir>/best.weights.h5` beside `early_stopping.json`, so a
resumed run keeps its best-so-far and its patience count.
"""

import json
import os

import numpy as np
from absl import logging

STATE_FILE = "early_stopping.json"
WEIGHTS_FILE = "best.weights.h5"


class EarlyStopping:
    """Watches `metric`; stops after `patience` evaluations without improvement.

    Args:
        metric: a key of the validation results, e.g. `val_accuracy`.
        patience: evaluations without improvement before stopping (>= 1).
        read_dir: where a previous run's state is read (the chief's model dir).
        write_dir: where this process writes its state, or None (other workers).
        mode: `max` or `min`; default `min` for losses, else `max`.
        min_delta: the smallest change that counts as an improvement.
    """

    def __init__(self, metric, patience, read_dir, write_dir=None, mode=None, min_delta=0.0):
        if patience < 1:
            raise ValueError(f"`patience` must be >= 1. Received: patience={patience}")
        self.metric = metric
        self.patience = patience
        self.mode = mode or ("min" if "loss" in metric else "max")
        if self.mode not in ("min", "max"):
            raise ValueError(f"`mode` must be `min` or `max`. Received: mode={mode!r}")
        self.min_delta = min_delta
        self.read_dir = read_dir
        self.write_dir = write_dir
        self.best = None
        self.best_step = None
        self.bad_evaluations = 0
        self.stopped = False
        self._best_weights = None
        self._best_weights_file = None

    def restore_state(self):
        """Reads a resumed run's state; returns True if there was one."""
        path = os.path.join(self.read_dir, STATE_FILE)
        if not os.path.exists(path):
            return False
        with open(path) as f:
            state = json.load(f)
        if state.get("metric") != self.metric:
            logging.warning("Ignoring %s: it watched %r, not %r.", path, state.get("metric"), self.metric)
            return False
        self.best, self.best_step = state["best"], state["best_step"]
        self.bad_evaluations, self.stopped = state["bad_evaluations"], state["stopped"]
        weights = os.path.join(self.read_dir, WEIGHTS_FILE)
        self._best_weights_file = weights if os.path.exists(weights) else None
        return True

    def _improved(self, value):
        if self.best is None:
            return True
        if self.mode == "max":
            return value > self.best + self.min_delta
        return value < self.best - self.min_delta

    def update(self, step, metrics, model):
        """Records one evaluation; returns True when training should stop."""
        if self.metric not in metrics:
            raise ValueError(
                f"Early stopping watches {self.metric!r}, which the validation results do "
                f"not have. They have: {', '.join(sorted(metrics))}"
            )
        value = float(metrics[self.metric])
        if self._improved(value):
            self.best, self.best_step, self.bad_evaluations = value, step, 0
            self._best_weights = [np.array(w) for w in model.get_weights()]
            if self.write_dir:
                model.save_weights(os.path.join(self.write_dir, WEIGHTS_FILE))
        else:
            self.bad_evaluations += 1
        self.stopped = self.bad_evaluations >= self.patience
        logging.info(
            "Step %d: %s %.5f (best %.5f at step %d; %d of %d evaluations without improvement)",
            step, self.metric, value, self.best, self.best_step, self.bad_evaluations, self.patience,
        )
        self._write_state()
        return self.stopped

    def _write_state(self):
        if not self.write_dir:
            return
        state = {
            "metric": self.metric, "mode": self.mode, "best": self.best, "best_step": self.best_step,
            "bad_evaluations": self.bad_evaluations, "stopped": self.stopped,
        }
        tmp = os.path.join(self.write_dir, STATE_FILE + ".tmp")
        with open(tmp, "w") as f:
            json.dump(state, f, indent=2)
        os.replace(tmp, os.path.join(self.write_dir, STATE_FILE))

    def restore_best(self, model):
        """Loads the best weights into `model`; returns the best step, or None."""
        if self._best_weights is not None:
            model.set_weights(self._best_weights)
        elif self._best_weights_file:
            model.load_weights(self._best_weights_file)
        else:
            return None
        logging.info("Restored the best weights: %s %.5f at step %d.", self.metric, self.best, self.best_step)
        return self.best_step
