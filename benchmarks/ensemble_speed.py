"""Decoding time of a captioner ensemble against one of its members.

    python benchmarks/ensemble_speed.py --members=runs/seed0,runs/seed1,runs/seed2 [--rounds=5]

Loads the members (captioning runs of `python -m training.train`) and their
ensemble (`mmkeras.models.build_captioner_ensemble`, as `python -m
training.ensemble` builds it), then captions the test images of the first
member's data with the caption task's decoding settings
(`CaptionTask.decoding_options`: greedy, and beam search with the run's
`caption.num_beams`, `no_repeat_ngram_size` and `length_penalty`) with member
0 and with the ensemble, one after the other in each of --rounds rounds
(after one untimed round that traces the graphs). The images are read and
resized once beforehand: the times are the models' alone. Per method it prints the median over rounds
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

flags.DEFINE_list("members", [], "Run directories of trained captioners (config.json, model.keras); at least 2.")
flags.DEFINE_integer("rounds", 7, "Timed rounds (each decodes the test images with the member and the ensemble).")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    import tempfile

    from benchmarks.caption_speed import median_interval, seconds_of
    from mmkeras.data.caption_pipeline import eval_image_dataset
    from mmkeras.models import build_captioner_ensemble
    from training import caption_ensemble
    from training.ensemble import check_member_dirs, load_member_task

    check_member_dirs(FLAGS.members)
    if FLAGS.rounds < 2:
        raise app.UsageError(f"--rounds must be at least 2. Received: {FLAGS.rounds}")
    models = caption_ensemble.load_captioners(FLAGS.members)
    with tempfile.TemporaryDirectory() as scratch:
        task = load_member_task(FLAGS.members[0], scratch, tasks=("caption",))
    ensemble = build_captioner_ensemble(models)
    records = task.test_records()
    batches = list(eval_image_dataset(records, task.cfg.data.image_size, task.cfg.eval.batch_size, task.synthetic))
    shared = len(set(ensemble.image_encoder.feature_sources))
    print(f"{len(models)} members ({shared} distinct image backbone(s)), {len(records)} test images", flush=True)
    results = {}
    for method in ("greedy", "beam"):
        options = task.decoding_options(method)
        calls = {name: (lambda m=m: [m.caption(images, **options) for images in batches])
                 for name, m in (("member", models[0]), ("ensemble", ensemble))}
        for fn in calls.values():
            fn()  # traces the graphs
        times = {name: [] for name in calls}
        for _ in range(FLAGS.rounds):
            for name, fn in calls.items():
                times[name].append(seconds_of(fn))
        ratios = [e / m for m, e in zip(times["member"], times["ensemble"])]
        low, high = median_interval(ratios)
        results[method] = {
            "member_seconds": round(statistics.median(times["member"]), 3),
            "ensemble_seconds": round(statistics.median(times["ensemble"]), 3),
            "ratio": round(statistics.median(ratios), 3), "ratio_interval": [round(low, 3), round(high, 3)],
        }
        r = results[method]
        print(f"{method}: member {r['member_seconds']:.2f} s, ensemble {r['ensemble_seconds']:.2f} s; "
              f"ensemble / member {r['ratio']:.2f} (90% interval {low:.2f}-{high:.2f}, {FLAGS.rounds} rounds)",
              flush=True)
    print(json.dumps({"members": FLAGS.members, "distinct_backbones": shared, "test_images": len(records),
                      **results}))


if __name__ == "__main__":
    app.run(main)
