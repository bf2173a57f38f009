"""The trained captioner run shared by tests/test_explain.py and tests/test_report.py.

Trained once per test session (cached here, in a directory of the session's
`tmp_path_factory`), in process with `training.experiment.run`, so it holds
every file `python -m training.train` writes except the export and the report.
"""

import tensorflow as tf

from training import config as config_lib
from training import experiment
from training import named_experiments

# The cheapest captioner found whose colour words attend to their shape's own
# pixels: 64 px images on a 16x16 token grid (two stem stages of 16 and 32
# filters; on an 8x8 grid a token covers so much background around a small
# shape that only ~34% of the attention fell on the shape itself), one
# decoder layer of width 64, 2,000 training images, 300 steps.
ATTENDING_CAPTIONER = (
    "data.synthetic_num_train=2000", "data.synthetic_num_test=300", "data.batch_size=32", "data.image_size=64",
    "model.hidden_dim=64", "model.intermediate_dim=128", "model.image_encoder.stem_filters=(16,32)",
    "train.steps=300", "train.learning_rate=3e-3", "train.warmup_steps=30", "train.steps_per_epoch=100",
    "train.checkpoint_every=0", "train.max_minutes=0",
    "eval.max_images=24", "eval.num_samples=3",
)
_RUNS = {}


def attending_captioner_run(tmp_path_factory):
    """`(model_dir, model)` of the attending captioner's run, trained once per session."""
    if "captioner" not in _RUNS:
        cfg = config_lib.override(named_experiments.get_experiment("caption_tiny"), list(ATTENDING_CAPTIONER))
        model_dir = tmp_path_factory.mktemp("captioner_run")
        results = experiment.run(cfg, str(model_dir), "", tf.distribute.get_strategy(), verbose=0)
        _RUNS["captioner"] = (model_dir, results["model"])
    return _RUNS["captioner"]
