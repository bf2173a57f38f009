"""Test accuracy of every fusion strategy under one training budget, and of their ensemble.

    python benchmarks/fusion_comparison.py [--experiment=vqa_easy_vqa] [--data=easy_vqa]
        [--minutes=5] [--fusions=concat,add,...] [--steps=0] [--seed=0]
        [--output_dir=benchmarks/results/fusion_comparison] [--ensemble=average]

For each fusion of `mmkeras.layers.FUSION_LAYERS` (default: all), one fresh
`python -m training.train` process trains the same experiment, data and seed
into `<output_dir>/runs/<fusion>` (deleted first: no run resumes another's
checkpoints) with the same budget: `train.max_minutes=--minutes` and
`train.steps` = the experiment's (the length of its learning-rate schedule)
or `--steps`, whichever ends training first; the table says which did. A fresh
process a fusion returns its memory and shares no warmed-up state. Its
`eval_metrics.json` gives the test accuracy, macro-F1 and the modality
ablation (`accuracy_image_only` / `_text_only`: one input blanked).

Then, in this process, the members' predictions (validation and test splits,
also ablated) are computed once with `training.ensemble`'s functions and
combined by `--ensemble` (default `average`), and also by the other methods
(`vote`; `stacking`, fitted on the validation predictions, when the data has
a validation split): combining reuses the predictions, so the extra rows cost
next to nothing.

The baseline of the same run is the majority-class accuracy (always answering
the most frequent training answer), from the members' evaluation.

Writes `<output_dir>/fusion_comparison.md` and `.csv` and `logs/<fusion>.log`,
prints the Markdown table and ends with one JSON line of all figures.
"""

import datetime
import json
import os
import platform
import sys
import time

from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from benchmarks.training_runs import output_dirs, train_run, write_table  # noqa: E402

# The same list as mmkeras.layers.FUSION_LAYERS (checked in main); kept here
# so that --help does not import TensorFlow.
FUSIONS = ("concat", "add", "weighted_sum", "gated", "cross_attention", "bilinear", "gcn", "late")
METHODS = ("average", "vote", "stacking")

flags.DEFINE_string("experiment", "vqa_easy_vqa", "Named experiment every fusion trains (training.config).")
flags.DEFINE_string("data", "easy_vqa", "Data spec (--data of training.train); empty: the experiment's.")
flags.DEFINE_float("minutes", 5.0, "Training time budget per fusion (train.max_minutes).")
flags.DEFINE_integer(
    "steps", 0, "train.steps per fusion (the learning-rate schedule's length); 0: the experiment's. Training "
    "ends at the time budget or at this step, whichever comes first."
)
flags.DEFINE_list("fusions", list(FUSIONS), "Fusion strategies to compare (mmkeras.layers.FUSION_LAYERS).")
flags.DEFINE_string("output_dir", "benchmarks/results/fusion_comparison",
                    "Where runs/, logs/, fusion_comparison.md and .csv go.")
flags.DEFINE_enum("ensemble", "average", list(METHODS),
                  "The main ensemble method (listed first); the others are reported too when possible.")
flags.DEFINE_integer("seed", 0, "train.seed of every run (initialisation, data order, data split).")
flags.DEFINE_integer("timeout", 0, "Seconds allowed per training run; 0: 3 x the budget + 15 minutes.")
FLAGS = flags.FLAGS

COLUMNS = ("fusion", "test accuracy", "macro-F1", "accuracy image only", "accuracy text only", "train steps",
           "train seconds", "stopped by", "parameters")


def planned_steps():
    """`train.steps` of each run: --steps, else the experiment's."""
    from training import named_experiments

    return FLAGS.steps or named_experiments.get_experiment(FLAGS.experiment).train.steps


def train(fusion, runs_dir, logs_dir):
    """Trains one fusion in a fresh process; returns its eval_metrics dict, or None if it failed."""
    train_flags = [
        f"--experiment={FLAGS.experiment}", f"--fusion={fusion}", "--export_dir=",
        f"--max_minutes={FLAGS.minutes}", f"--max_steps={planned_steps()}", f"--set=train.seed={FLAGS.seed}",
    ]
    if FLAGS.data:
        train_flags.append(f"--data={FLAGS.data}")
    timeout = FLAGS.timeout or int(3 * 60 * FLAGS.minutes + 900)
    return train_run(fusion, train_flags, os.path.join(runs_dir, fusion),
                     os.path.join(logs_dir, f"{fusion}.log"), timeout)


def fusion_row(fusion, metrics, model, steps):
    return {
        "fusion": fusion,
        "test accuracy": metrics["accuracy"],
        "macro-F1": metrics["macro_f1"],
        "accuracy image only": metrics.get("accuracy_image_only"),
        "accuracy text only": metrics.get("accuracy_text_only"),
        "train steps": metrics.get("train_steps"),
        "train seconds": metrics.get("train_seconds"),
        "stopped by": "steps" if metrics.get("train_steps", 0) >= steps else "time",
        "parameters": model.count_params() if model is not None else None,
    }


def ensemble_rows(run_dirs, members_rows, scratch_dir):
    """One row per ensemble method over the trained runs, reusing one set of predictions."""
    from mmkeras.data.classification_pipeline import label_ids
    from training import ensemble as ensemble_lib

    models = ensemble_lib.load_members(run_dirs)
    task = ensemble_lib.load_member_task(run_dirs[0], scratch_dir)
    records = task.test_records()
    targets = label_ids(records, task.label_names, task.data.multi_label)
    started = time.time()
    test_predictions = ensemble_lib.member_predictions(task, models, records, ablation=True)
    validation = task.splits.get("validation") or []
    validation_probs = validation_targets = None
    if validation:
        validation_probs = ensemble_lib.member_probabilities(task, models, validation)
        validation_targets = label_ids(validation, task.label_names, task.data.multi_label)
    print(f"Member predictions: {time.time() - started:.0f} s", flush=True)

    member_steps = sum(r["train steps"] or 0 for r in members_rows)
    member_seconds = sum(r["train seconds"] or 0 for r in members_rows)
    member_params = sum(r["parameters"] or 0 for r in members_rows)
    rows = []
    for method in [FLAGS.ensemble] + [m for m in METHODS if m != FLAGS.ensemble]:
        if method == "stacking" and not validation:
            print("stacking: skipped (the data has no validation split)", flush=True)
            continue
        started = time.time()
        ensemble, _ = ensemble_lib.build_ensemble(models, method, None, validation_probs, validation_targets,
                                                  seed=FLAGS.seed)
        fit_seconds = time.time() - started
        metrics, _ = ensemble_lib.evaluate_ensemble(ensemble, test_predictions, targets)
        # The members' accuracies from these predictions must be those of their own evaluation.
        for row, accuracy in zip(members_rows, metrics["member_accuracies"]):
            if abs(row["test accuracy"] - accuracy) > 1e-4:
                print(f"warning: {row['fusion']}: accuracy {accuracy} from the ensemble's predictions, "
                      f"{row['test accuracy']} in its eval_metrics.json", file=sys.stderr)
        meta_params = ensemble.meta.count_params() if ensemble.meta is not None else 0
        rows.append({
            "fusion": f"ensemble ({method}, {len(models)} members)",
            "test accuracy": metrics["accuracy"],
            "macro-F1": metrics["macro_f1"],
            "accuracy image only": metrics.get("accuracy_image_only"),
            "accuracy text only": metrics.get("accuracy_text_only"),
            "train steps": member_steps,
            "train seconds": round(member_seconds + (fit_seconds if method == "stacking" else 0.0), 1),
            "stopped by": "members",
            "parameters": member_params + meta_params,
        })
    return rows


def cell(value, column=""):
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.1f}" if column == "train seconds" else f"{value:.4f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def markdown(header_lines, rows):
    lines = [f"# Fusion comparison: {FLAGS.experiment}", ""]
    lines += [f"- {line}" for line in header_lines]
    align = ["---" if c in ("fusion", "stopped by") else "---:" for c in COLUMNS]
    lines += ["", "| " + " | ".join(COLUMNS) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(cell(r[c], c) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    from mmkeras.layers import FUSION_LAYERS

    assert set(FUSIONS) == set(FUSION_LAYERS), "FUSIONS is out of date with mmkeras.layers.FUSION_LAYERS"
    fusions = [f.strip() for f in FLAGS.fusions if f.strip()]
    unknown = [f for f in fusions if f not in FUSION_LAYERS]
    if unknown or not fusions:
        raise app.UsageError(f"--fusions takes names of {', '.join(FUSION_LAYERS)}. Received: {FLAGS.fusions}")
    if FLAGS.minutes <= 0:
        raise app.UsageError(f"--minutes must be > 0 (the shared budget). Received: {FLAGS.minutes}")
    output_dir, runs_dir, logs_dir = output_dirs(FLAGS.output_dir)
    steps = planned_steps()
    started = datetime.datetime.now(datetime.timezone.utc)

    results = {f: train(f, runs_dir, logs_dir) for f in fusions}
    trained = [f for f in fusions if results[f] is not None]

    import keras

    import mmkeras  # noqa: F401  (registers the serializable classes)

    rows = []
    for fusion in fusions:
        if results[fusion] is None:
            rows.append({c: None for c in COLUMNS} | {"fusion": fusion, "stopped by": "failed (see logs/)"})
            continue
        model = keras.saving.load_model(os.path.join(runs_dir, fusion, "model.keras"))
        rows.append(fusion_row(fusion, results[fusion], model, steps))
        del model
    fusion_rows = [r for r in rows if r["test accuracy"] is not None]
    if len(trained) >= 2:
        rows += ensemble_rows([os.path.join(runs_dir, f) for f in trained], fusion_rows,
                              os.path.join(output_dir, "ensemble"))
    else:
        print("Fewer than 2 runs succeeded: no ensemble.", flush=True)

    majority = next((results[f].get("majority_class_accuracy") for f in trained), None)
    header = [
        f"experiment: `{FLAGS.experiment}`; data: `{FLAGS.data or 'the experiment default'}`; seed: {FLAGS.seed}",
        f"budget per strategy: {FLAGS.minutes:g} min of training (train.max_minutes) or {steps:,} steps "
        f"(train.steps, {'--steps' if FLAGS.steps else 'the experiment'}'s learning-rate schedule), whichever "
        "comes first; `stopped by` says which",
        "each fusion trains in a fresh `python -m training.train` process, one after the other",
        f"baseline (same run): majority-class test accuracy {cell(majority)}",
        "ensemble rows: members' predictions combined; train steps / seconds and parameters are the members' "
        "totals (stacking: + its meta-classifier fit on the validation split)",
        f"machine: {platform.system()} {platform.machine()}, os.cpu_count()={os.cpu_count()}, "
        f"Python {platform.python_version()}",
        f"date: {started.strftime('%Y-%m-%d %H:%M UTC')}",
    ]
    text = markdown(header, rows)
    write_table(output_dir, "fusion_comparison", text, COLUMNS, rows)
    figures = {
        "benchmark": "fusion_comparison", "experiment": FLAGS.experiment, "data": FLAGS.data,
        "minutes": FLAGS.minutes, "steps": steps, "seed": FLAGS.seed, "cpu_count": os.cpu_count(),
        "date": started.isoformat(timespec="seconds"), "majority_class_accuracy": majority,
        "rows": [{k.replace(" ", "_").replace("-", "_").lower(): v for k, v in r.items()} for r in rows],
    }
    print(json.dumps(figures, sort_keys=True))


if __name__ == "__main__":
    app.run(main)
