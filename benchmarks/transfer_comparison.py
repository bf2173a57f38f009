"""Captioning on Flickr8k-1k: from scratch vs. the pretrained EfficientNet-Lite0, frozen or fine-tuned.

    python benchmarks/transfer_comparison.py [--data=flickr8k:../shared/data/flickr8k-1k]
        [--minutes=10] [--variants=scratch,frozen,top,full] [--top_blocks=20] [--seed=0]
        [--output_dir=benchmarks/results/transfer_comparison]

Every variant trains in a fresh `python -m training.train` process with the
same data, seed and time budget (`--minutes`; the learning-rate schedule is
each experiment's, the table says whether time or steps ended training):

- `scratch`: `caption_flickr8k`, the captioner whose conv stem trains from
  random weights (128 px: what a CPU budget affords without pretraining);
- `frozen`: `caption_flickr8k_pretrained`, the ImageNet EfficientNet-Lite0
  frozen, its features computed once per image and cached;
- `top`: the same with the top `--top_blocks` weighted backbone layers
  trainable (`model.image_encoder.trainable=top:N`; no cache);
- `full`: the same with every backbone weight trainable.

The figures are each run's own test evaluation (`eval_metrics.json`): BLEU-4,
CIDEr-D and METEOR of greedy and of beam-3 captions, and training images per
second (optimizer steps x batch size / training seconds; the frozen run's
one-off feature extraction is inside its training time).

Writes `<output_dir>/transfer_comparison.md` and `.csv` and `logs/<variant>.log`,
prints the Markdown table and ends with one JSON line of all figures.
"""

import datetime
import json
import os
import platform
import sys

from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from benchmarks.training_runs import output_dirs, train_run, write_table  # noqa: E402

VARIANTS = ("scratch", "frozen", "top", "full")

flags.DEFINE_string("data", "flickr8k:../shared/data/flickr8k-1k", "Caption data (--data of training.train).")
flags.DEFINE_float("minutes", 10.0, "Training time budget per variant (train.max_minutes).")
flags.DEFINE_list("variants", list(VARIANTS), f"Variants to run, from: {', '.join(VARIANTS)}.")
flags.DEFINE_integer("top_blocks", 20, "`top`: weighted backbone layers left trainable (trainable=top:N).")
flags.DEFINE_integer("seed", 0, "train.seed of every run.")
flags.DEFINE_string("output_dir", "benchmarks/results/transfer_comparison",
                    "Where runs/, logs/, transfer_comparison.md and .csv go.")
flags.DEFINE_integer("timeout", 0, "Seconds allowed per run; 0: 3 x the budget + 20 minutes.")
FLAGS = flags.FLAGS

COLUMNS = ("variant", "BLEU-4", "CIDEr", "METEOR", "beam-3 BLEU-4", "beam-3 CIDEr", "beam-3 METEOR",
           "train images/s", "train steps", "train seconds", "stopped by")


# Every variant decodes alike, so the columns compare training only (the
# pretrained experiment's own default is beam 5 without repeated trigrams).
DECODING = ["--set=caption.num_beams=3", "--set=caption.no_repeat_ngram_size=0"]


def variant_flags(variant):
    """(experiment, extra --set overrides) of a variant."""
    if variant == "scratch":
        return "caption_flickr8k", list(DECODING)
    trainable = {"frozen": "none", "top": f"top:{FLAGS.top_blocks}", "full": "all"}[variant]
    return "caption_flickr8k_pretrained", [f"--set=model.image_encoder.trainable={trainable}"] + DECODING


def row(variant, metrics, cfg):
    steps, seconds = metrics.get("train_steps", 0), metrics.get("train_seconds") or 0.0
    return {
        "variant": variant,
        "BLEU-4": metrics.get("bleu_4"),
        "CIDEr": metrics.get("cider"),
        "METEOR": metrics.get("meteor"),
        "beam-3 BLEU-4": metrics.get("beam_bleu_4"),
        "beam-3 CIDEr": metrics.get("beam_cider"),
        "beam-3 METEOR": metrics.get("beam_meteor"),
        "train images/s": round(steps * cfg.data.batch_size / seconds, 1) if seconds else None,
        "train steps": steps,
        "train seconds": seconds,
        "stopped by": "steps" if steps >= cfg.train.steps else "time",
    }


def cell(value):
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}" if value < 10 else f"{value:.1f}"
    return str(value)


def main(argv):
    del argv
    from training import config as config_lib
    from training import named_experiments

    variants = [v.strip() for v in FLAGS.variants if v.strip()]
    if not variants or any(v not in VARIANTS for v in variants):
        raise app.UsageError(f"--variants takes names of {', '.join(VARIANTS)}. Received: {FLAGS.variants}")
    if FLAGS.minutes <= 0:
        raise app.UsageError(f"--minutes must be > 0. Received: {FLAGS.minutes}")
    output_dir, runs_dir, logs_dir = output_dirs(FLAGS.output_dir)
    started = datetime.datetime.now(datetime.timezone.utc)
    timeout = FLAGS.timeout or int(3 * 60 * FLAGS.minutes + 1200)

    rows = []
    for variant in variants:
        experiment, overrides = variant_flags(variant)
        cfg = config_lib.override(named_experiments.get_experiment(experiment), [o.split("=", 1)[1] for o in overrides])
        train_flags = [f"--experiment={experiment}", f"--data={FLAGS.data}", "--export_dir=",
                       f"--max_minutes={FLAGS.minutes}", f"--set=train.seed={FLAGS.seed}"] + overrides
        metrics = train_run(variant, train_flags, os.path.join(runs_dir, variant),
                            os.path.join(logs_dir, f"{variant}.log"), timeout)
        if metrics is None:
            rows.append({c: None for c in COLUMNS} | {"variant": variant, "stopped by": "failed (see logs/)"})
        else:
            rows.append(row(variant, metrics, cfg))

    header = [
        f"data: `{FLAGS.data}` (test split: its 100 images, 5 references each); seed {FLAGS.seed}",
        f"budget per variant: {FLAGS.minutes:g} min of training (train.max_minutes) or the experiment's "
        "train.steps, whichever comes first",
        "scratch: `caption_flickr8k` (conv stem from random weights, 128 px); frozen / top / full: "
        "`caption_flickr8k_pretrained` (ImageNet EfficientNet-Lite0, 224 px) with "
        f"model.image_encoder.trainable=none / top:{FLAGS.top_blocks} / all",
        "METEOR: mmkeras' pure-Python METEOR (exact + stem matches; see mmkeras/metrics/meteor.py)",
        f"machine: {platform.system()} {platform.machine()}, os.cpu_count()={os.cpu_count()}",
        f"date: {started.strftime('%Y-%m-%d %H:%M UTC')}",
    ]
    lines = ["# Transfer comparison: captioning Flickr8k-1k", ""] + [f"- {h}" for h in header]
    lines += ["", "| " + " | ".join(COLUMNS) + " |",
              "|" + "|".join("---" if c in ("variant", "stopped by") else "---:" for c in COLUMNS) + "|"]
    lines += ["| " + " | ".join(cell(r[c]) for c in COLUMNS) + " |" for r in rows]
    text = "\n".join(lines) + "\n"
    write_table(output_dir, "transfer_comparison", text, COLUMNS, rows)
    print(json.dumps({"benchmark": "transfer_comparison", "minutes": FLAGS.minutes, "seed": FLAGS.seed,
                      "date": started.isoformat(timespec="seconds"), "rows": rows}, sort_keys=True))


if __name__ == "__main__":
    app.run(main)
