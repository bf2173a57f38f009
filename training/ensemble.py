"""Combines trained models into one ensemble: evaluates, saves, exports.

    python -m training.ensemble --members=runs/concat,runs/gated,runs/late \\
        --method=average --model_dir=runs/ensemble --export_dir=saved_models
    python -m training.ensemble --members=runs/a,runs/b --method=average --weights=0.7,0.3
    python -m training.ensemble --members=runs/a,runs/b --method=stacking --export_dir=
    python -m training.ensemble --members=runs/seed0,runs/seed1,runs/seed2 --model_dir=runs/caption_ensemble

Each member is a run directory of `python -m training.train` (`config.json`,
`model.keras`), all of one kind: classifiers (`--task=classify|vqa`) that
predict the same labels, or captioners (`--task=caption`) that share a
vocabulary. The data is rebuilt from the first member's `config.json`.

Classifiers: `stacking` trains its meta-classifier on the members'
predictions for the validation split (which the members did not train on);
every method is evaluated on the test split with the metrics of the classify
task, including the modality ablation (the members' image-only / text-only
probabilities, combined). Writes `classification_report.txt`. Members over
one frozen preset (identical image or text towers) share it: the evaluation
reads the data once per distinct preprocessing and computes each tower once
per batch for every member and ablation, and the saved and exported
ensemble holds it once (`mmkeras.models.shared_backbones`; captioner
ensembles likewise).

Captioners: `average` only: at every decoding step the ensemble's next-word
distribution is the (weighted) mean of the members' (`mmkeras.models.
build_captioner_ensemble`); greedy and beam captions are scored with the
caption task's metrics, beside each member's own. Writes `predictions.jsonl`
and `samples.json` as a captioning run does (so `training.compare` takes the
ensemble's directory beside its members'). The dual encoder has no ensemble
here.

Writes into --model_dir: `eval_metrics.json` (flat metrics plus `members`,
`method`), `model.keras` (the ensemble), and what the task's data loading
writes (`labels.txt` or `vocabulary.txt`, `data_report.json`); exports to
`<export_dir>/<name>/<version>/` with the task's signatures (classifier
`serving_default`; captioner `serving_default` and `beam_search`). A member's
directory, or any training run's (one with `checkpoints/`), is refused as
--model_dir: the ensemble would replace that run's files.

The functions (`load_members`, `load_member_task`, `member_predictions`,
`build_ensemble`, `evaluate_ensemble`) are what `benchmarks/fusion_comparison.py`
reuses.
"""

import copy
import json
import os
import sys

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS


def define_flags():
    # Defined only when run as a program, so that one process can import every CLI module.
    flags.DEFINE_list(
        "members", [], "Comma-separated run directories of trained classifiers (--task=classify|vqa) or of "
        "trained captioners (--task=caption), each with config.json and model.keras from python -m "
        "training.train; at least 2."
    )
    flags.DEFINE_enum(
        "method", "average", ["vote", "average", "stacking"],
        "How member predictions are combined: `vote` (majority of the members' top classes, "
        "ties to the higher mean probability), `average` (weighted mean of probabilities) or "
        "`stacking` (a dense meta-classifier fitted on the members' validation predictions). "
        "Captioners: `average` only (the members' next-word probabilities, at every decoding step).",
    )
    flags.DEFINE_list("weights", None, "Member weights for --method=average, e.g. 0.5,0.5 (default: equal).")
    flags.DEFINE_string("model_dir", "runs/ensemble", "Where the ensemble's metrics, report and model.keras go.")
    flags.DEFINE_string(
        "export_dir", "saved_models", "SavedModels go to <export_dir>/<name>/<version>/. Empty string: do not export."
    )
    flags.DEFINE_string("name", "", "Model name of the export under --export_dir (default: classifier_ensemble "
                        "or captioner_ensemble).")
    flags.DEFINE_integer("version", 0, "Export version; 0: one more than the highest existing.")


class EnsembleError(ValueError):
    """The members or their data cannot form an ensemble; the message says which and why."""


def check_member_dirs(member_dirs):
    """Raises `EnsembleError` unless there are >= 2 dirs, each with config.json and model.keras."""
    if len(member_dirs) < 2:
        raise EnsembleError(f"An ensemble needs at least 2 members. Received: --members={','.join(member_dirs)}")
    for member_dir in member_dirs:
        for name in ("config.json", "model.keras"):
            if not os.path.isfile(os.path.join(member_dir, name)):
                raise EnsembleError(
                    f"{os.path.join(member_dir, name)} does not exist: each member must be a run directory "
                    "of python -m training.train --task=classify|vqa|caption."
                )


def check_model_dir(model_dir, member_dirs):
    """Raises `EnsembleError` if writing the ensemble into `model_dir` would overwrite a trained run.

    The ensemble writes `config.json`, `eval_metrics.json`, `model.keras` and
    more; a member's directory, or any training run's (it has `checkpoints/`),
    would lose its own. An earlier ensemble's directory is rewritten.
    """
    target = os.path.realpath(model_dir)
    if any(os.path.realpath(member_dir) == target for member_dir in member_dirs):
        raise EnsembleError(f"--model_dir={model_dir} is one of the --members: the ensemble's files would replace "
                            "that run's config.json, eval_metrics.json and model.keras. Give a new directory.")
    if os.path.isdir(os.path.join(model_dir, "checkpoints")):
        raise EnsembleError(f"--model_dir={model_dir} holds a training run (it has checkpoints/): the ensemble's "
                            "files would replace its config.json, eval_metrics.json and model.keras. Give a new "
                            "directory.")


CLASSIFIER_TASKS = ("classify", "vqa")


def member_kind(member_dirs):
    """`"classifier"` or `"captioner"`: what the runs' `config.json` files say they trained.

    Reads only the JSON (no TensorFlow); `EnsembleError` if the runs mix
    kinds or trained something that has no ensemble here (the dual encoder).
    """
    kinds = {}
    for member_dir in member_dirs:
        path = os.path.join(member_dir, "config.json")
        try:
            with open(path) as f:
                task = json.load(f).get("task", "caption")
        except (OSError, ValueError, AttributeError) as e:
            raise EnsembleError(f"{path}: not a readable run configuration ({e}).") from e
        if task == "caption":
            kinds[member_dir] = "captioner"
        elif task in CLASSIFIER_TASKS:
            kinds[member_dir] = "classifier"
        else:
            raise EnsembleError(f"{member_dir}: task {task!r} has no ensemble; members must be classifiers "
                                "(classify, vqa) or captioners (caption).")
    if len(set(kinds.values())) > 1:
        raise EnsembleError("Ensemble members must all be classifiers or all captioners. Received: "
                            + ", ".join(f"{d}: {k}" for d, k in kinds.items()))
    return next(iter(kinds.values()))


def load_members(member_dirs):
    """The members' `model.keras` models; `EnsembleError` if they are not compatible classifiers."""
    check_member_dirs(member_dirs)
    import keras

    import mmkeras  # noqa: F401  (registers the serializable classes)

    models = []
    for member_dir in member_dirs:
        model = keras.saving.load_model(os.path.join(member_dir, "model.keras"))
        if not hasattr(model, "probabilities_from_raw") or not hasattr(model, "label_names"):
            raise EnsembleError(f"{member_dir}: model.keras holds a {type(model).__name__}, not a classifier.")
        models.append(model)
    first = models[0]
    for member_dir, model in zip(member_dirs[1:], models[1:]):
        if model.label_names != first.label_names or model.multi_label != first.multi_label:
            raise EnsembleError(
                "Ensemble members must predict the same labels. "
                f"{member_dirs[0]}: {first.label_names} (multi_label={first.multi_label}); "
                f"{member_dir}: {model.label_names} (multi_label={model.multi_label})"
            )
    return models


def load_member_task(member_dir, model_dir, tasks=CLASSIFIER_TASKS):
    """The task of the run in `member_dir` (one of `tasks`), its data loaded; files go to `model_dir`."""
    from training import config as config_lib
    from training.tasks import get_task

    with open(os.path.join(member_dir, "config.json")) as f:
        cfg = config_lib.from_dict(config_lib.ExperimentConfig, json.load(f))
    if cfg.task not in tasks:
        raise EnsembleError(f"{member_dir}: task {cfg.task!r} is not one of {', '.join(tasks)}.")
    os.makedirs(model_dir, exist_ok=True)
    task = get_task(cfg.task)(cfg, model_dir)
    task.load_data()
    return task


def _member_view(task, model):
    """`task`, reading examples with `model`'s own image size and tokenizer.

    Members trained on the same data may still differ in preprocessing (another
    `data.image_size` or vocabulary); each must see the inputs it was trained on.
    """
    from training import config as config_lib

    view = copy.copy(task)
    if getattr(model, "text_preprocessor", None) is not None:
        view.text_preprocessor = model.text_preprocessor
    if getattr(model, "image_size", task.cfg.data.image_size) != task.cfg.data.image_size:
        view.cfg = config_lib.override(task.cfg, [f"data.image_size={model.image_size}"])
    return view


def member_probabilities(task, models, records):
    """Each member's probabilities `(n, num_classes)` of `records`, as a list."""
    return member_predictions(task, models, records, ablation=False)["full"]


def member_predictions(task, models, records, ablation=True):
    """`{"full": [...], "image_only": [...], "text_only": [...]}` member probabilities of `records`.

    The ablation entries (one modality blanked, as the classify task's
    evaluation) are left out when `ablation` is False. Members with the same
    preprocessing read the records in one pass; members over one frozen
    tower share its features (`mmkeras.models.shared_backbones`), computed
    once per batch for every entry.
    """
    import tensorflow as tf

    from mmkeras.models.shared_backbones import preprocessing_key, shared_feature_sources, tower_features
    from training.tasks.classify import ABLATIONS

    settings = {"full": (1.0, 1.0), **(ABLATIONS if ablation else {})}
    groups = {}
    for index, model in enumerate(models):
        groups.setdefault(preprocessing_key(model), []).append(index)
    predictions = {name: [None] * len(models) for name in settings}
    for indices in groups.values():
        group = [models[i] for i in indices]
        image_sources = shared_feature_sources([m.image_encoder for m in group])
        text_sources = shared_feature_sources([m.text_encoder for m in group])

        def probabilities(x, group=group, image_sources=image_sources, text_sources=text_sources):
            features = tower_features(group, [x] * len(group), image_sources, text_sources)
            batch = tf.shape(x["token_ids"])[0]
            outputs = {}
            for name, (image_present, text_present) in settings.items():
                presence = {"image_present": tf.fill([batch], image_present),
                            "text_present": tf.fill([batch], text_present)}
                outputs[name] = [m.probabilities(m({**x, **f, **presence}, training=False)["logits"])
                                 for m, f in zip(group, features)]
            return outputs

        function = tf.function(probabilities, reduce_retracing=True)
        view = _member_view(task, group[0])
        parts = {name: [[] for _ in group] for name in settings}
        for x, _ in view.dataset(records, task.cfg.eval.batch_size, training=False):
            for name, member_outputs in function(x).items():
                for part, output in zip(parts[name], member_outputs):
                    part.append(output.numpy())
        for name in settings:
            for i, part in zip(indices, parts[name]):
                predictions[name][i] = np.concatenate(part, axis=0)
    return predictions


def build_ensemble(models, method, weights=None, validation_probs=None, validation_targets=None, seed=0,
                   name="classifier_ensemble"):
    """A `ClassifierEnsemble` of `models`; `stacking` is fitted on the validation predictions.

    Args:
        models: trained classifiers with the same labels.
        method: `vote`, `average` or `stacking`.
        weights: member weights for `average` (None: equal).
        validation_probs: list of `(n, C)` member probabilities of held-out
            examples (required for `stacking`).
        validation_targets: their class ids `(n,)` or multi-hot `(n, C)`.
        seed: seed of the meta-classifier's initialisation.

    Returns:
        `(ensemble, stacking_loss or None)`.
    """
    from mmkeras.models import ClassifierEnsemble

    if weights is not None and method != "average":
        raise EnsembleError(f"Member weights apply to method `average`. Received: method={method!r}, "
                            f"weights={list(weights)}")
    try:
        ensemble = ClassifierEnsemble(models, method=method, weights=weights, name=name)
    except ValueError as e:
        raise EnsembleError(str(e)) from e
    loss = None
    if method == "stacking":
        if validation_probs is None or validation_targets is None or not len(validation_targets):
            raise EnsembleError("Stacking fits its meta-classifier on held-out predictions, but the data has "
                                "no validation split.")
        loss = ensemble.fit_stacking(validation_probs, validation_targets, seed=seed)
    ensemble.build()
    return ensemble, loss


def combine(ensemble, member_probs):
    """The ensemble's probabilities `(n, C)` (numpy) from the members' `(n, C)` arrays.

    Uses `ClassifierEnsemble.combine`, the one definition of each method's
    arithmetic, on predictions computed once (and reused across methods).
    """
    import keras

    return keras.ops.convert_to_numpy(ensemble.combine([np.asarray(p, "float32") for p in member_probs]))


def _decisions(ensemble, probabilities):
    import keras

    return keras.ops.convert_to_numpy(ensemble.decisions(probabilities))


def _report(ensemble, targets, decisions, label_names):
    from mmkeras.metrics import classification as classification_metrics

    if ensemble.multi_label:
        return classification_metrics.multilabel_report(targets, decisions, label_names)
    return classification_metrics.classification_report(targets, decisions, label_names)


def evaluate_ensemble(ensemble, predictions, targets):
    """Test metrics of `ensemble` as the classify task writes them, and the full report.

    Args:
        ensemble: a `ClassifierEnsemble`.
        predictions: `member_predictions` output for the test records.
        targets: their class ids or multi-hot rows (`label_ids`).

    Returns:
        `(flat metrics dict, report dict)`: `accuracy`, `macro_f1`,
        `weighted_f1` (multi-label: also `micro_f1`, `hamming_accuracy`),
        `precision|recall|f1|support/<label>`, `accuracy_image_only`,
        `accuracy_text_only` (when predicted), `member_accuracies`,
        `num_test_examples`, and `accuracy_ci_low` / `accuracy_ci_high` (the
        accuracy's 95% bootstrap interval over the test examples).
    """
    import keras

    from mmkeras.metrics import classification as classification_metrics
    from mmkeras.metrics.bootstrap import bootstrap_interval

    label_names = list(ensemble.label_names or [str(i) for i in range(ensemble.num_classes)])
    decisions = _decisions(ensemble, combine(ensemble, predictions["full"]))
    report = _report(ensemble, targets, decisions, label_names)
    low, high = bootstrap_interval(classification_metrics.correct_examples(targets, decisions))
    results = {
        "accuracy": report["accuracy"],
        "accuracy_ci_low": low,
        "accuracy_ci_high": high,
        "macro_f1": report["macro_f1"],
        "weighted_f1": report["weighted_f1"],
        "num_test_examples": int(len(targets)),
    }
    results.update(classification_metrics.flat_report_metrics(report))
    for name in sorted(k for k in predictions if k != "full"):
        ablated = _decisions(ensemble, combine(ensemble, predictions[name]))
        results[f"accuracy_{name}"] = _report(ensemble, targets, ablated, label_names)["accuracy"]
    # Each member alone, with its own decision rule (e.g. tuned thresholds).
    results["member_accuracies"] = []
    for member, probs in zip(ensemble.members, predictions["full"]):
        member_decisions = keras.ops.convert_to_numpy(member.decisions(np.asarray(probs, "float32")))
        correct = classification_metrics.correct_examples(targets, member_decisions)
        results["member_accuracies"].append(round(float(np.mean(correct)), 6))
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in results.items()}, report


def run(member_dirs, method, weights, model_dir, export_dir, name=None, version=None):
    """Builds, evaluates, saves and (unless `export_dir` is empty) exports the ensemble.

    Classifiers or captioners, as the members' `config.json` say (`member_kind`);
    `name` defaults to `classifier_ensemble` or `captioner_ensemble`.

    Returns:
        `{"eval_metrics": dict, "export_path": str or None, "ensemble": ClassifierEnsemble or ImageCaptioner}`.
    """
    check_member_dirs(member_dirs)
    check_model_dir(model_dir, member_dirs)
    kind = member_kind(member_dirs)
    name = name or f"{kind}_ensemble"
    if kind == "captioner":
        from training import caption_ensemble

        return caption_ensemble.run(member_dirs, method, weights, model_dir, export_dir, name, version)
    from mmkeras.data.classification_pipeline import label_ids
    from mmkeras.metrics import classification as classification_metrics

    models = load_members(member_dirs)
    task = load_member_task(member_dirs[0], model_dir)
    if task.label_names != list(models[0].label_names or []):
        raise EnsembleError(
            f"The data of {member_dirs[0]}/config.json ({task.cfg.data.spec}) has labels {task.label_names}, "
            f"but the members predict {models[0].label_names}."
        )
    multi_label = task.data.multi_label
    validation_probs = validation_targets = None
    if method == "stacking":
        validation = task.splits.get("validation") or []
        if not validation:
            raise EnsembleError(
                f"Stacking fits its meta-classifier on held-out predictions, but data {task.cfg.data.spec!r} "
                "has no validation split."
            )
        validation_probs = member_probabilities(task, models, validation)
        validation_targets = label_ids(validation, task.label_names, multi_label)
    ensemble, stacking_loss = build_ensemble(
        models, method, weights, validation_probs, validation_targets, seed=task.cfg.train.seed
    )

    records = task.test_records()
    targets = label_ids(records, task.label_names, multi_label)
    predictions = member_predictions(task, models, records, ablation=task.cfg.classify.ablation)
    results, report = evaluate_ensemble(ensemble, predictions, targets)
    results.update(members=[os.path.normpath(d) for d in member_dirs], method=method)
    if weights is not None:
        results["weights"] = [float(w) for w in weights]
    if stacking_loss is not None:
        results["stacking_validation_loss"] = round(stacking_loss, 6)
        results["num_validation_examples"] = int(len(validation_targets))
    task.write_json("eval_metrics.json", results)
    text = classification_metrics.format_report(report)
    print(text, flush=True)
    with open(os.path.join(model_dir, "classification_report.txt"), "w") as f:
        f.write(text + "\n")
    ensemble.save(os.path.join(model_dir, "model.keras"))

    export_path = None
    if export_dir:
        from serving.export import export_classifier

        # Only the labels: each member's tokenizer is in the graph, and the
        # members' vocabularies may differ.
        export_path = export_classifier(ensemble, export_dir, name, version or None, assets=[task.labels_file])
    return {"eval_metrics": results, "export_path": export_path, "ensemble": ensemble}


def main(argv):
    del argv
    members = [m.strip() for m in FLAGS.members if m.strip()]
    weights = None
    if FLAGS.weights:
        try:
            weights = [float(w) for w in FLAGS.weights]
        except ValueError:
            raise app.UsageError(f"--weights takes numbers, e.g. 0.5,0.5. Received: {','.join(FLAGS.weights)}")
    try:
        # Cheap checks first: a wrong path fails before TensorFlow loads.
        check_member_dirs(members)
        check_model_dir(FLAGS.model_dir, members)
        member_kind(members)
    except EnsembleError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    from training.tasks.base import DataError

    try:
        results = run(members, FLAGS.method, weights, FLAGS.model_dir, FLAGS.export_dir, FLAGS.name,
                      FLAGS.version)
    except (EnsembleError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps(results["eval_metrics"], sort_keys=True))
    if results["export_path"]:
        print(f"Exported SavedModel: {results['export_path']}")


if __name__ == "__main__":
    # Run as the importable module, so that the EnsembleError that
    # training.caption_ensemble raises is the class main() catches.
    from training import ensemble

    ensemble.define_flags()
    flags.adopt_module_key_flags(ensemble)  # --help lists them
    app.run(ensemble.main)
