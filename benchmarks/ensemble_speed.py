"""Inference time of an ensemble against one of its members.

    python benchmarks/ensemble_speed.py --members=runs/seed0,runs/seed1,runs/seed2 [--rounds=5]

Loads the members (runs of `python -m training.train`, all captioners or all
classifiers) and their ensemble, as `python -m training.ensemble` builds it
(`mmkeras.models.build_captioner_ensemble`, or `ClassifierEnsemble` with
`--method`), then runs the first member's test split through member 0 and
through the ensemble, one after the other in each of --rounds rounds (after
one untimed round that traces the graphs). Captioners caption the test
images with the caption task's decoding settings
(`CaptionTask.decoding_options`: greedy, and beam search with the run's
`caption.num_beams`, `no_repeat_ngram_size` and `length_penalty`);
classifiers give probabilities of the test examples (and the ensemble is
saved with its shared towers held once and member by member, to print both
sizes). The inputs are read and
preprocessed once beforehand: the times are the models' alone. Members over
one frozen preset share its pass (`mmkeras.models.shared_backbones`): the
first line says how many distinct towers run. Per method it prints the median over rounds
of ensemble time / member time within a round, and the 90% interval of that
median (`caption_speed.median_interval`): a ratio measured side by side, so
a busy machine slows both alike. Ends with one JSON line.
"""

import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags  # noqa: E402

flags.DEFINE_list("members", [], "Run directories of trained captioners or classifiers (config.json, model.keras); at least 2.")
flags.DEFINE_enum("method", "average", ["vote", "average", "stacking"],
                  "Classifier members: how the ensemble combines them (stacking: an unfitted meta-classifier, "
                  "which costs what a fitted one does).")
flags.DEFINE_integer("max_examples", 0, "Classifier members: time the first N test examples only (0: all).")
flags.DEFINE_integer("rounds", 7, "Timed rounds (each decodes the test images with the member and the ensemble).")
FLAGS = flags.FLAGS


def _timed(calls):
    """`{name: [seconds per round]}` of the zero-argument `calls`, side by side in each round."""
    from benchmarks.caption_speed import seconds_of

    for fn in calls.values():
        fn()  # traces the graphs
    times = {name: [] for name in calls}
    for _ in range(FLAGS.rounds):
        for name, fn in calls.items():
            times[name].append(seconds_of(fn))
    return times


def _summary(method, times):
    from benchmarks.caption_speed import median_interval

    ratios = [e / m for m, e in zip(times["member"], times["ensemble"])]
    low, high = median_interval(ratios)
    result = {
        "member_seconds": round(statistics.median(times["member"]), 3),
        "ensemble_seconds": round(statistics.median(times["ensemble"]), 3),
        "ratio": round(statistics.median(ratios), 3), "ratio_interval": [round(low, 3), round(high, 3)],
    }
    print(f"{method}: member {result['member_seconds']:.2f} s, ensemble {result['ensemble_seconds']:.2f} s; "
          f"ensemble / member {result['ratio']:.2f} (90% interval {low:.2f}-{high:.2f}, {FLAGS.rounds} rounds)",
          flush=True)
    return result


def captioner_times(scratch):
    from mmkeras.data.caption_pipeline import eval_image_dataset
    from mmkeras.models import build_captioner_ensemble
    from training import caption_ensemble
    from training.ensemble import load_member_task

    models = caption_ensemble.load_captioners(FLAGS.members)
    task = load_member_task(FLAGS.members[0], scratch, tasks=("caption",))
    ensemble = build_captioner_ensemble(models)
    records = task.test_records()
    batches = list(eval_image_dataset(records, task.cfg.data.image_size, task.cfg.eval.batch_size, task.synthetic))
    shared = len(set(ensemble.image_encoder.feature_sources))
    print(f"{len(models)} members ({shared} distinct image backbone(s)), {len(records)} test images", flush=True)
    results = {}
    for method in ("greedy", "beam"):
        options = task.decoding_options(method)
        results[method] = _summary(method, _timed(
            {name: (lambda m=m: [m.caption(images, **options) for images in batches])
             for name, m in (("member", models[0]), ("ensemble", ensemble))}))
    return {"distinct_backbones": shared, "test_examples": len(records), **results}


def classifier_times(scratch):
    import tensorflow as tf

    from mmkeras.models import ClassifierEnsemble
    from training.ensemble import load_member_task, load_members

    models = load_members(FLAGS.members)
    task = load_member_task(FLAGS.members[0], scratch)
    ensemble = ClassifierEnsemble(models, method=FLAGS.method)
    records = task.test_records()[:FLAGS.max_examples or None]
    batches = [x for x, _ in task.dataset(records, task.cfg.eval.batch_size, training=False)]
    towers = {"image": len(set(ensemble.image_feature_sources)), "text": len(set(ensemble.text_feature_sources))}
    print(f"{len(models)} members ({towers['image']} distinct image and {towers['text']} distinct text "
          f"tower(s)), {len(records)} test examples", flush=True)
    sizes = _saved_sizes(models, scratch)
    functions = {name: tf.function(lambda x, m=m: m(x, training=False), reduce_retracing=True)
                 for name, m in (("member", models[0]), ("ensemble", ensemble))}
    times = _timed({name: (lambda f=f: [f(x) for x in batches]) for name, f in functions.items()})
    return {"distinct_towers": towers, "test_examples": len(records), "sizes": sizes,
            FLAGS.method: _summary(FLAGS.method, times)}


def _saved_sizes(models, scratch):
    """Parameters and `.keras` size of the ensemble with shared towers held once, and member by member."""
    from mmkeras.models import ClassifierEnsemble

    sizes = {}
    for label, sources in (("shared", None), ("member_by_member", list(range(len(models))))):
        ensemble = ClassifierEnsemble(models, method=FLAGS.method, image_feature_sources=sources,
                                      text_feature_sources=sources)
        path = os.path.join(scratch, f"{label}.keras")
        ensemble.save(path)
        sizes[label] = {"parameters": ensemble.count_params(), "keras_mb": round(os.path.getsize(path) / 2**20, 1)}
        print(f"towers held {label.replace('_', ' ')}: {sizes[label]['parameters']:,} parameters, "
              f"model.keras {sizes[label]['keras_mb']} MB", flush=True)
    return sizes


def main(argv):
    del argv
    import tempfile

    from training.ensemble import check_member_dirs, member_kind

    check_member_dirs(FLAGS.members)
    if FLAGS.rounds < 2:
        raise app.UsageError(f"--rounds must be at least 2. Received: {FLAGS.rounds}")
    kind = member_kind(FLAGS.members)
    with tempfile.TemporaryDirectory() as scratch:
        results = (captioner_times if kind == "captioner" else classifier_times)(scratch)
    print(json.dumps({"members": FLAGS.members, "kind": kind, **results}))


if __name__ == "__main__":
    app.run(main)
