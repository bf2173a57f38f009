"""Does contrastive pretraining help the other tasks? Scratch vs. --init_from, full fine-tune vs. LoRA.

    python benchmarks/contrastive_transfer.py [--suites=synthetic,flickr8k] [--minutes=5]
        [--pretrain_minutes=10] [--lora_rank=8] [--synthetic_pretrained=DIR] [--flickr8k_pretrained=DIR]
        [--output_dir=benchmarks/results/contrastive_transfer]

Each suite first trains a dual encoder contrastively (or takes a finished
run's directory), then trains the downstream model three times in fresh
`python -m training.train` processes with the same data, seed and time
budget (`--minutes`):

- `scratch`: the downstream model from random weights;
- `contrastive_full`: its towers initialised from the dual encoder
  (`--init_from`), everything fine-tuned;
- `contrastive_lora`: the same towers with `--lora_rank` adapters, the rest
  of them frozen (decoder / fusion / heads train).

Suites: `synthetic`: `contrastive_synthetic` -> VQA on the synthetic shapes
(`vqa_synthetic`, test accuracy); `flickr8k`: `contrastive_flickr8k` (random
towers) -> the Flickr8k-1k captioner (`caption_flickr8k`, test BLEU-4 and
CIDEr-D, greedy). The downstream runs take the dual encoder's tower sizes
(group-normalised stem, sequence length, text layers) so that the towers
fit, the scratch run included, so that only the initialisation differs.

Writes `<output_dir>/contrastive_transfer.md` and `.csv`, prints the Markdown
table and ends with one JSON line.
"""

import json
import os
import sys

from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from benchmarks.training_runs import output_dirs, train_run, write_table  # noqa: E402

SUITES = {
    # name: (pretraining experiment, data, downstream experiment, shared tower settings, metrics)
    "synthetic": ("contrastive_synthetic", "synthetic", "vqa_synthetic",
                  ["--set=model.image_encoder.stem_norm=group", "--set=data.sequence_length=24",
                   "--set=model.text_encoder.num_layers=2"],
                  ("accuracy", "macro_f1")),
    "flickr8k": ("contrastive_flickr8k", "flickr8k:../shared/data/flickr8k-1k", "caption_flickr8k",
                 ["--set=model.image_encoder.stem_norm=group", "--set=caption.eval_beam=false"],
                 ("bleu_4", "cider", "meteor")),
}

flags.DEFINE_list("suites", list(SUITES), f"Suites to run, from: {', '.join(SUITES)}.")
flags.DEFINE_float("minutes", 5.0, "Fine-tuning budget of every downstream run (train.max_minutes).")
flags.DEFINE_float("pretrain_minutes", 10.0, "Budget of each contrastive pretraining run.")
flags.DEFINE_integer("lora_rank", 8, "Rank of the LoRA variant.")
flags.DEFINE_string("synthetic_pretrained", None, "A finished contrastive_synthetic run to reuse.")
flags.DEFINE_string("flickr8k_pretrained", None, "A finished contrastive_flickr8k run to reuse.")
flags.DEFINE_integer("seed", 0, "train.seed of every run.")
flags.DEFINE_string("output_dir", "benchmarks/results/contrastive_transfer",
                    "Where runs/, logs/, contrastive_transfer.md and .csv go.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    output_dir, runs_dir, logs_dir = output_dirs(FLAGS.output_dir)
    rows, everything = [], {}
    for suite in FLAGS.suites:
        pretrain_experiment, data, downstream, shared, metric_names = SUITES[suite]
        pretrained = getattr(FLAGS, f"{suite}_pretrained")
        if not pretrained:
            pretrained = os.path.join(runs_dir, f"{suite}_contrastive")
            metrics = train_run(f"{suite}/contrastive", [
                f"--experiment={pretrain_experiment}", f"--data={data}", f"--max_minutes={FLAGS.pretrain_minutes}",
                "--export_dir=", f"--set=train.seed={FLAGS.seed}",
            ], pretrained, os.path.join(logs_dir, f"{suite}_contrastive.log"), timeout=FLAGS.pretrain_minutes * 60 + 1800)
            if metrics is None:
                continue
            everything[f"{suite}/contrastive"] = metrics
        variants = {
            "scratch": [],
            "contrastive_full": [f"--init_from={os.path.abspath(pretrained)}"],
            "contrastive_lora": [f"--init_from={os.path.abspath(pretrained)}", f"--lora_rank={FLAGS.lora_rank}"],
        }
        for variant, extra in variants.items():
            name = f"{suite}/{variant}"
            metrics = train_run(name, [
                f"--experiment={downstream}", f"--data={data}", f"--max_minutes={FLAGS.minutes}", "--export_dir=",
                f"--set=train.seed={FLAGS.seed}", *shared, *extra,
            ], os.path.join(runs_dir, f"{suite}_{variant}"), os.path.join(logs_dir, f"{suite}_{variant}.log"),
                timeout=FLAGS.minutes * 60 + 1800)
            if metrics is None:
                continue
            everything[name] = metrics
            row = {"suite": suite, "downstream": downstream, "variant": variant,
                   "train_steps": metrics.get("train_steps"), "train_seconds": metrics.get("train_seconds")}
            row.update({m: metrics.get(m) for m in ("accuracy", "macro_f1", "bleu_4", "cider", "meteor")})
            rows.append(row)
    columns = ["suite", "downstream", "variant", "accuracy", "macro_f1", "bleu_4", "cider", "meteor",
               "train_steps", "train_seconds"]

    def cell(value):
        return "" if value is None else (f"{value:.4f}" if isinstance(value, float) else str(value))

    lines = [f"Downstream test metrics after {FLAGS.minutes:g} CPU minutes of fine-tuning (seed {FLAGS.seed}; "
             f"LoRA rank {FLAGS.lora_rank})", "", "| " + " | ".join(columns) + " |",
             "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    write_table(output_dir, "contrastive_transfer", "\n".join(lines) + "\n", columns, rows)
    print(json.dumps(everything, sort_keys=True))


if __name__ == "__main__":
    app.run(main)
