"""Captioner ensembles for `python -m training.ensemble` (its docstring says what is written).

The ensemble is `mmkeras.models.build_captioner_ensemble` of the members'
`model.keras`; it is evaluated by the caption task of the first member's
`config.json` (the same data, splits and decoding settings), so its
`eval_metrics.json` has every key a captioning run's has, plus
`member_cider` (and `member_beam_cider`): each member alone, decoded the same
way on the same images. It also writes that `config.json`, so that
`python -m training.report --model_dir=...` draws the ensemble's caption
gallery and attention maps (no training curves: it did not train).
"""

import dataclasses
import os

from training import config as config_lib
from training.ensemble import EnsembleError, load_member_task


def load_captioners(member_dirs):
    """The members' `model.keras` captioners; `EnsembleError` naming a run that holds something else."""
    import keras

    import mmkeras  # noqa: F401  (registers the serializable classes)
    from mmkeras.models import ImageCaptioner

    models = []
    for member_dir in member_dirs:
        model = keras.saving.load_model(os.path.join(member_dir, "model.keras"))
        if not isinstance(model, ImageCaptioner):
            raise EnsembleError(f"{member_dir}: model.keras holds a {type(model).__name__}, not an ImageCaptioner.")
        models.append(model)
    return models


def check_vocabularies(member_dirs, models, vocabulary):
    """`EnsembleError` unless every member's tokenizer has `vocabulary` (the data's)."""
    for member_dir, model in zip(member_dirs, models):
        member_vocabulary = model.tokenizer.get_vocabulary() if model.tokenizer is not None else []
        if member_vocabulary != vocabulary:
            raise EnsembleError(
                f"{member_dir}: its captioner's vocabulary ({len(member_vocabulary)} tokens) is not the one the "
                f"data of {member_dirs[0]}/config.json gives ({len(vocabulary)} tokens). Captioner ensembles need "
                "members trained on the same data with the same vocabulary settings (data.vocabulary_size, "
                "caption.vocabulary, caption.min_word_count; the synthetic data also changes with train.seed)."
            )


def member_cider(task, models, records, method):
    """Each member's CIDEr-D on `records`, decoded with `method` as the task decodes."""
    from mmkeras.metrics import caption_metrics

    references = [list(r.captions) for r in records]
    return [round(caption_metrics(task.decode(m, records, method=method), references)["cider"], 6)
            for m in models]


def run(member_dirs, method, weights, model_dir, export_dir, name, version=None):
    """Builds, evaluates, saves and (unless `export_dir` is empty) exports a captioner ensemble.

    Returns:
        `{"eval_metrics": dict, "export_path": str or None, "ensemble": ImageCaptioner}`.
    """
    import tensorflow as tf

    from mmkeras.models import build_captioner_ensemble

    if method != "average":
        raise EnsembleError(
            f"Captioner ensembles average the members' next-word probabilities (--method=average); "
            f"{method!r} combines classifiers' final predictions. Received: --method={method}"
        )
    models = load_captioners(member_dirs)
    task = load_member_task(member_dirs[0], model_dir, tasks=("caption",))
    check_vocabularies(member_dirs, models, task.tokenizer.get_vocabulary())
    try:
        ensemble = build_captioner_ensemble(models, weights=weights, name=name)
    except ValueError as e:
        raise EnsembleError(str(e)) from e
    # Token accuracy runs the model's test step, which needs a compiled model.
    ensemble.compile()
    results = task.evaluate(ensemble, tf.distribute.get_strategy())
    records = task.test_records()
    results["member_cider"] = member_cider(task, models, records, "greedy")
    if task.cfg.caption.eval_beam:
        results["member_beam_cider"] = member_cider(task, models, records, "beam")
    results.update(members=[os.path.normpath(d) for d in member_dirs], method=method)
    if weights is not None:
        results["weights"] = [float(w) for w in weights]
    task.write_json("eval_metrics.json", results)
    ensemble.save(os.path.join(model_dir, "model.keras"))
    # The data and decoding settings it was evaluated with: `training.report`
    # reads them to draw the caption gallery and the attention maps.
    with open(os.path.join(model_dir, "config.json"), "w") as f:
        f.write(config_lib.to_json(task.cfg))

    export_path = None
    if export_dir:
        task.cfg = dataclasses.replace(
            task.cfg, export=dataclasses.replace(task.cfg.export, model_name=name, version=version or 0)
        )
        export_path = task.export(ensemble, export_dir)
    return {"eval_metrics": results, "export_path": export_path, "ensemble": ensemble}
