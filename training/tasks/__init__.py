"""The tasks `training.train --task=...` runs, one module each.

- `caption` (`training.tasks.caption`): image captioning;
- `classify` and `vqa` (`training.tasks.classify`): image+text classification
  with a choice of fusion; `vqa` is classification over the answer vocabulary;
- `contrastive` (`training.tasks.contrastive`): CLIP-style dual encoder for
  retrieval and zero-shot classification.

Each is a `training.tasks.base.Task`; `training.experiment.run` drives any of
them the same way.
"""

import importlib

# Task name -> (module, class). Imported on demand: a task's module pulls in
# TensorFlow and its model code.
_TASKS = {
    "caption": ("training.tasks.caption", "CaptionTask"),
    "classify": ("training.tasks.classify", "ClassifyTask"),
    "vqa": ("training.tasks.classify", "VQATask"),
    "contrastive": ("training.tasks.contrastive", "ContrastiveTask"),
}

TASK_NAMES = tuple(_TASKS)


def get_task(name):
    """The `Task` class of `name`; ValueError naming the known tasks otherwise."""
    if name not in _TASKS:
        raise ValueError(f"Unknown task {name!r}. Known tasks: {', '.join(TASK_NAMES)}. Received: task={name!r}")
    module, cls = _TASKS[name]
    return getattr(importlib.import_module(module), cls)
