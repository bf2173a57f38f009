"""Is one captioner better than another, or is the difference noise?

    python -m training.compare --model_dirs=runs/a,runs/b[,runs/c ...] [--decoding=beam]

Reads the `predictions.jsonl` that `python -m training.train` writes for a
captioner (every test image: its references, greedy and beam captions) and,
for every run after the first, scores both runs image by image with CIDEr-D
(document frequencies of the shared references) and prints the difference to
the first run with its 95% paired bootstrap interval (the same images
resampled for both runs), and on how many images each run scored higher.

On a small test split, this is the question a single figure cannot answer:
on Flickr8k-1k's 100 test images one run's CIDEr-D has a standard error of
about 0.05, and the difference between two runs one of about 0.03. An
interval that holds 0 says the split cannot tell the two apart.

Captioning runs only (classifiers' `predictions.jsonl` carry no references).
The runs must have captioned the same test images in the same order, as
runs on the same data do.
"""

import json
import os
import sys

import numpy as np
from absl import app, flags

from mmkeras.metrics.bootstrap import DEFAULT_CONFIDENCE, bootstrap_interval
from mmkeras.metrics.caption_metrics import normalize_caption
from mmkeras.metrics.cider import CIDErScorer

FLAGS = flags.FLAGS
PREDICTIONS = "predictions.jsonl"
# predictions.jsonl field of each decoding.
DECODING_KEYS = {"greedy": "generated", "beam": "beam"}


class CompareError(ValueError):
    """The runs cannot be compared; the message names the file and what was wrong."""


def read_predictions(model_dir):
    """The rows of `model_dir/predictions.jsonl`, each with `"image"` and `"references"`."""
    path = os.path.join(model_dir, PREDICTIONS)
    if not os.path.isfile(path):
        raise CompareError(f"{path} does not exist: compare needs a captioning run's {PREDICTIONS} "
                           "(written by python -m training.train at the end of a caption run).")
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                raise CompareError(f"{path}, line {number}: not JSON ({e}).") from e
            if not isinstance(row, dict) or "image" not in row or not row.get("references"):
                raise CompareError(f"{path}, line {number}: expected an object with \"image\" and "
                                   "\"references\" (a captioning run's predictions).")
            rows.append(row)
    if len(rows) < 2:
        raise CompareError(f"{path}: {len(rows)} test image(s); CIDEr-D needs at least 2.")
    return rows


def _captions(rows, key, model_dir):
    missing = [i for i, r in enumerate(rows) if key not in r]
    if missing:
        hint = " (the run had caption.eval_beam=false)" if key == "beam" else ""
        raise CompareError(f"{os.path.join(model_dir, PREDICTIONS)}, image {rows[missing[0]]['image']!r}: "
                           f"no {key!r} caption{hint}.")
    return [normalize_caption(r[key]) for r in rows]


def _check_same_images(rows, baseline_rows, model_dir, baseline_dir):
    if len(rows) != len(baseline_rows):
        raise CompareError(f"{model_dir} captioned {len(rows)} test images and {baseline_dir} "
                           f"{len(baseline_rows)}: compare runs on the same test split.")
    for i, (row, base) in enumerate(zip(rows, baseline_rows)):
        if row["image"] != base["image"] or list(row["references"]) != list(base["references"]):
            raise CompareError(f"Test image {i} differs: {row['image']!r} in {model_dir}, {base['image']!r} "
                               f"in {baseline_dir} (or their references do): compare runs on the same test split.")


def compare_runs(model_dirs, decoding="beam", confidence=DEFAULT_CONFIDENCE):
    """Per-run CIDEr-D and each later run's paired difference to the first.

    Args:
        model_dirs: list of >= 2 run directories of captioners.
        decoding: `"greedy"` or `"beam"`, which captions to score.
        confidence: float in (0, 1), the intervals' coverage.

    Returns:
        A list of dicts, one per run: `"model_dir"`, `"cider"`,
        `"cider_interval"` `(low, high)`; every run after the first also
        has `"difference"` (its CIDEr-D minus the first's),
        `"difference_interval"` and `"better"` / `"worse"` (images on which
        it scored above / below the first).

    Raises:
        CompareError: a run without predictions, with other test images,
            or without captions of `decoding`.
    """
    if decoding not in DECODING_KEYS:
        raise CompareError(f"decoding must be one of {sorted(DECODING_KEYS)}. Received: {decoding!r}")
    if len(model_dirs) < 2:
        raise CompareError(f"Give at least two run directories to compare. Received: {list(model_dirs)}")
    runs = [read_predictions(d) for d in model_dirs]
    for rows, model_dir in zip(runs[1:], model_dirs[1:]):
        _check_same_images(rows, runs[0], model_dir, model_dirs[0])
    scorer = CIDErScorer([[normalize_caption(c) for c in r["references"]] for r in runs[0]])
    positions = np.arange(len(runs[0]))
    scores = [scorer.score(_captions(rows, DECODING_KEYS[decoding], d), positions)
              for rows, d in zip(runs, model_dirs)]
    results = []
    for model_dir, per_image in zip(model_dirs, scores):
        result = {"model_dir": model_dir, "cider": float(per_image.mean()),
                  "cider_interval": bootstrap_interval(per_image, confidence)}
        if results:
            difference = per_image - scores[0]
            result.update(difference=float(difference.mean()),
                          difference_interval=bootstrap_interval(difference, confidence),
                          better=int((difference > 0).sum()), worse=int((difference < 0).sum()))
        results.append(result)
    return results


def format_results(results, decoding, confidence=DEFAULT_CONFIDENCE):
    """The printed table of `compare_runs`' results (computed at `confidence`)."""
    n = "{:.3f}".format
    lines = [f"{decoding} CIDEr-D, {confidence:.0%} bootstrap intervals over the test images"]
    for i, r in enumerate(results):
        low, high = r["cider_interval"]
        line = f"{r['model_dir']}: {n(r['cider'])} [{n(low)}, {n(high)}]"
        if i == 0:
            line += "  (baseline)"
        else:
            d_low, d_high = r["difference_interval"]
            verdict = "within the noise" if d_low <= 0 <= d_high else ("better" if d_low > 0 else "worse")
            line += (f"  difference {r['difference']:+.3f} [{d_low:+.3f}, {d_high:+.3f}]: {verdict}; "
                     f"higher on {r['better']}, lower on {r['worse']} images")
        lines.append(line)
    return "\n".join(lines)


def define_flags():
    flags.DEFINE_list("model_dirs", None, "Comma-separated run directories of captioners; the first is the baseline.")
    flags.DEFINE_enum("decoding", "beam", sorted(DECODING_KEYS), "Which captions to score.")


def main(argv):
    del argv
    if not FLAGS.model_dirs:
        raise app.UsageError("--model_dirs is required (two or more run directories).")
    try:
        results = compare_runs(FLAGS.model_dirs, FLAGS.decoding)
    except CompareError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(format_results(results, FLAGS.decoding))


if __name__ == "__main__":
    define_flags()
    app.run(main)
