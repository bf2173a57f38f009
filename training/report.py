"""A self-contained HTML report of a training run, to open from disk or share.

    python -m training.report --model_dir=DIR [--output=DIR/report.html]

One static page, every image inlined (no network, no server, no script):
the run's metrics and config; training curves from `logs/train_log.jsonl`
(loss, accuracy, learning rate); then by task

- captioners: a gallery of test images with greedy and beam captions side by
  side against the references, the best, median and worst by per-image
  CIDEr-D (from `predictions.jsonl`, else the `samples.json` subset), and
  attention maps of a few of them (from the model);
- classifiers and VQA: the confusion matrix, the per-class report, the most
  confident mistakes and, for cross-attention fusion, attention maps of the
  text tokens over the image;
- dual encoders (`retrieval_samples.json`): queries with their top-5 images,
  the correct one marked.

A file the run did not write (no logs, no `model.keras`, ...) is named at the
top of the page and in its section; the rest still renders. `training.train`
writes the report at the end of every run (`--report=false` turns it off).
"""

import base64
import html
import io
import json
import math
import os
import sys
import time

import numpy as np
from absl import app, flags
from absl import logging

from training import explain

FLAGS = flags.FLAGS
REPORT_NAME = "report.html"
# Thumbnails: stored side in pixels (file images are shrunk to it) and shown side.
_THUMBNAIL = 128
_SHOWN = 112

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1200px; color: #222;
       padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .5em 0; font-size: .9em; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.missing { background: #fff4e5; border: 1px solid #f0b660; padding: .6em 1em; }
.note { color: #666; font-size: .9em; }
.cards { display: flex; flex-wrap: wrap; gap: .8em; }
.card { border: 1px solid #ddd; border-radius: 4px; padding: .5em; width: 360px; font-size: .85em; }
.card img.thumb { float: left; margin: 0 .6em .3em 0; }
.card .refs { clear: both; color: #555; }
img.thumb { width: %(shown)dpx; height: %(shown)dpx; object-fit: contain; image-rendering: pixelated;
            background: #000; }
img.plot { max-width: 100%%; }
.retrieval td { text-align: center; font-size: .8em; }
.retrieval td.query { text-align: left; max-width: 240px; }
.correct img { outline: 4px solid #2a2; } .correct { color: #2a2; font-weight: bold; }
.caption-table td { border: none; padding: .1em .3em; }
""" % {"shown": _SHOWN}


class _Missing:
    """The files a report could not use, each with what it would have shown."""

    def __init__(self):
        self.items = []

    def add(self, name, consequence):
        self.items.append((name, consequence))
        return _missing_html(name, consequence)


def _missing_html(name, consequence):
    return f'<p class="missing">Missing: <code>{html.escape(name)}</code> &mdash; {html.escape(consequence)}</p>'


def _read_json(path):
    """The JSON in `path`; None if missing; raises ValueError if it is not JSON."""
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _read_jsonl(path):
    """The JSON lines of `path` (a torn last line is skipped); None if missing."""
    if not os.path.isfile(path):
        return None
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
    return rows


def _data_uri(png_bytes, mime="image/png"):
    return f"data:{mime};base64,{base64.b64encode(png_bytes).decode('ascii')}"


def _img(png_bytes, alt, css="plot"):
    return f'<img class="{css}" alt="{html.escape(alt)}" src="{_data_uri(png_bytes)}">'


def _plot_png(plot, *args, **kwargs):
    buffer = io.BytesIO()
    plot(*args, buffer, **kwargs)
    return buffer.getvalue()


def _format(value):
    if isinstance(value, float):
        if value != value or math.isinf(value):
            return str(value)
        return f"{value:.4g}" if abs(value) < 1e-3 and value != 0 else f"{value:.4f}".rstrip("0").rstrip(".")
    if isinstance(value, (list, tuple)):
        return ", ".join(_format(v) for v in value) if len(value) <= 12 else f"[{len(value)} values]"
    return str(value)


def _flatten(values, prefix=""):
    out = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _table(rows, headers, numeric=()):
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for i, value in enumerate(row):
            css = ' class="num"' if i in numeric else ""
            cells.append(f"<td{css}>{html.escape(_format(value))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


class _Images:
    """Thumbnails of record images: synthetic ids rendered, files read and shrunk."""

    def __init__(self, model_dir, synthetic, image_size):
        self.model_dir = model_dir
        self.synthetic = synthetic
        self.image_size = image_size

    def array(self, source):
        """uint8 `(h, w, 3)` of `source`, or None if it cannot be read."""
        from PIL import Image

        if str(source).startswith(explain.SYNTHETIC_PREFIX):
            if self.synthetic is None:
                return None
            try:
                return self.synthetic.render_image(source)
            except ValueError:
                return None
        for path in (source, os.path.join(self.model_dir, str(source))):
            try:
                with Image.open(path) as image:
                    image = image.convert("RGB")
                    image.thumbnail((_THUMBNAIL, _THUMBNAIL))
                    return np.asarray(image)
            except (OSError, ValueError):
                continue
        return None

    def model_input(self, source):
        """uint8 `(image_size, image_size, 3)` as the model sees it, or None."""
        try:
            return explain.load_image(str(source), self.image_size, self.synthetic)
        except explain.ExplainError:
            return None

    def thumb(self, source, alt=None):
        from PIL import Image

        image = self.array(source)
        if image is None:
            return f'<span class="note">(image not found: {html.escape(str(source))})</span>'
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        return _img(buffer.getvalue(), alt or str(source), css="thumb")


# Sections.
def _header(model_dir, config, metrics):
    task = (config or {}).get("task", "unknown task")
    spec = (config or {}).get("data", {}).get("spec", "?")
    steps = (metrics or {}).get("train_steps")
    trained = f", trained {steps} steps" if steps is not None else ""
    return (f"<h1>Run report: {html.escape(os.path.abspath(model_dir))}</h1>"
            f"<p>Task <b>{html.escape(str(task))}</b> on <code>{html.escape(str(spec))}</code>{trained}.</p>")


def _metrics_section(metrics, missing):
    out = ["<h2>Test metrics</h2>"]
    if metrics is None:
        out.append(missing.add("eval_metrics.json", "no test metrics (the run did not finish evaluating)."))
        return "".join(out)
    beam = {k[len("beam_"):]: v for k, v in metrics.items() if k.startswith("beam_")}
    plain = {k: v for k, v in metrics.items() if not k.startswith("beam_")}
    if beam:
        rows = [(k, plain.pop(k), beam[k]) for k in sorted(beam) if k in plain]
        out.append(_table(rows, ("metric", "greedy", "beam"), numeric=(1, 2)))
    scalars = [(k, v) for k, v in sorted(plain.items()) if not isinstance(v, (dict, list)) or len(v) <= 12]
    out.append(_table(scalars, ("metric", "value"), numeric=(1,)))
    return "".join(out)


def _curves_section(model_dir, missing):
    from mmkeras.metrics.plots import plot_training_curves

    out = ["<h2>Training curves</h2>"]
    records = _read_jsonl(os.path.join(model_dir, "logs", "train_log.jsonl"))
    if records is None:
        out.append(missing.add("logs/train_log.jsonl", "no training curves."))
        return "".join(out)
    try:
        out.append(_img(_plot_png(plot_training_curves, records), "training curves"))
    except ValueError as e:
        out.append(f'<p class="note">logs/train_log.jsonl has nothing to plot: {html.escape(str(e))}</p>')
    return "".join(out)


def _config_section(config, data_report, missing, problem=""):
    out = ["<h2>Configuration</h2>"]
    if config is None:
        out.append(missing.add("config.json", problem or "no configuration (task unknown)."))
    else:
        out.append(_table(sorted(_flatten(config).items()), ("field", "value")))
    if data_report is not None:
        out.append("<h3>Data</h3>")
        out.append(_table(sorted(_flatten(data_report).items()), ("field", "value")))
    return "".join(out)


def _caption_rows(model_dir, missing):
    """`(rows, note)`: per-image captions with greedy and beam CIDEr-D."""
    from mmkeras.metrics.caption_metrics import normalize_caption
    from mmkeras.metrics.cider import cider

    rows = _read_jsonl(os.path.join(model_dir, "predictions.jsonl"))
    note = ""
    if rows is None:
        rows = _read_json(os.path.join(model_dir, "samples.json"))
        if rows is None:
            return None, missing.add("predictions.jsonl", "no caption gallery (nor samples.json).")
        note = missing.add("predictions.jsonl", f"the gallery ranks only the {len(rows)} images of samples.json.")
    rows = [r for r in rows if isinstance(r, dict) and r.get("references")]
    if not rows:
        return None, note
    references = [[normalize_caption(c) for c in r["references"]] for r in rows]
    for key in ("generated", "beam"):
        if all(key in r for r in rows) and len(rows) > 1:
            _, scores = cider([normalize_caption(r[key]) for r in rows], references, return_per_image=True)
            for r, s in zip(rows, scores):
                r[f"{key}_cider"] = float(s)
    return rows, note


def _gallery_groups(rows, per_group):
    """`[(title, rows)]`: best, median and worst by greedy CIDEr-D (all rows if few)."""
    key = "generated_cider"
    if not rows or key not in rows[0]:
        return [("samples", rows[: 3 * per_group])]
    order = sorted(range(len(rows)), key=lambda i: -rows[i][key])
    if len(order) <= 3 * per_group:
        return [("all, best first", [rows[i] for i in order])]
    middle = len(order) // 2 - per_group // 2
    return [
        ("best", [rows[i] for i in order[:per_group]]),
        ("median", [rows[i] for i in order[middle:middle + per_group]]),
        ("worst", [rows[i] for i in order[-per_group:]]),
    ]


def _caption_card(row, images):
    def line(name, key):
        if key not in row:
            return ""
        score = row.get(f"{key}_cider")
        cider = f' <span class="note">CIDEr {score:.2f}</span>' if score is not None else ""
        return f"<tr><th>{name}</th><td>{html.escape(row[key])}{cider}</td></tr>"

    refs = "<br>".join(html.escape(r) for r in row["references"])
    return (f'<div class="card">{images.thumb(row.get("image", ""))}'
            f'<table class="caption-table">{line("greedy", "generated")}{line("beam", "beam")}</table>'
            f'<div class="refs"><b>references</b><br>{refs}</div>'
            f'<div class="note">{html.escape(str(row.get("image", "")))}</div></div>')


def _attention_html(model, items, images, missing, classifier=False):
    """Attention grids of `items` (dicts with "image" and, for classifiers, "text")."""
    from mmkeras.metrics.plots import plot_attention_grid

    if model is None:
        return missing.add("model.keras", "no attention maps.")
    loaded = [(item, images.model_input(item["image"])) for item in items]
    loaded = [(item, array) for item, array in loaded if array is not None]
    if not loaded:
        return '<p class="note">None of the images could be read for attention maps.</p>'
    batch = np.stack([array for _, array in loaded])
    if classifier:
        explained = explain.classifier_attention(model, batch, [item["text"] for item, _ in loaded])
    else:
        # The recorded captions: no generation to compile, the same maps.
        explained = explain.caption_attention(model, batch, captions=[item["generated"] for item, _ in loaded])
    out = []
    for (item, array), result in zip(loaded, explained):
        if classifier:
            title = f"{item['text']} -> {result['label']} ({result['confidence']:.2f})"
        else:
            title = result["caption"]
        png = _plot_png(plot_attention_grid, array, result["words"], result["maps"], title=title)
        out.append(f"<div>{_img(png, 'attention: ' + title)}</div>")
    return "".join(out)


def _caption_section(model_dir, model, images, missing, per_group, num_attention):
    out = ["<h2>Captions: best, median and worst by CIDEr-D</h2>"]
    rows, note = _caption_rows(model_dir, missing)
    out.append(note)
    if rows is None:
        return "".join(out)
    out.append(f'<p class="note">Per-image CIDEr-D of the greedy caption over {len(rows)} test images '
               "(document frequencies from those images' references, as in evaluation).</p>")
    groups = _gallery_groups(rows, per_group)
    for title, group in groups:
        out.append(f"<h3>{html.escape(title)}</h3><div class='cards'>")
        out.extend(_caption_card(r, images) for r in group)
        out.append("</div>")
    out.append("<h2>Attention maps</h2>")
    out.append('<p class="note">For each generated word, the decoder\'s cross-attention over the image '
               "grid (mean over heads and layers); red is where it looked most.</p>")
    picks = [group[0] for _, group in groups if group][:num_attention]
    if len(picks) < num_attention:
        picks = [r for _, group in groups for r in group][:num_attention]
    out.append(_attention_html(model, picks, images, missing))
    return "".join(out)


def _classifier_section(model_dir, model, config, images, missing, num_mistakes, num_attention):
    out = ["<h2>Classification</h2>"]
    report = _read_json(os.path.join(model_dir, "classification_report.json"))
    confusion = os.path.join(model_dir, "confusion_matrix.png")
    if os.path.isfile(confusion):
        with open(confusion, "rb") as f:
            out.append(_img(f.read(), "confusion matrix"))
    elif report is not None and "confusion_matrix" in report:
        from mmkeras.metrics.plots import plot_confusion_matrix

        out.append(_img(_plot_png(plot_confusion_matrix, np.asarray(report["confusion_matrix"]),
                                  list(report["per_class"])), "confusion matrix"))
    if report is None:
        out.append(missing.add("classification_report.json", "no per-class report."))
    else:
        rows = [(label, s["precision"], s["recall"], s["f1"], s["support"])
                for label, s in report.get("per_class", {}).items()]
        out.append("<h3>Per class</h3>")
        out.append(_table(rows, ("class", "precision", "recall", "f1", "support"), numeric=(1, 2, 3, 4)))
    predictions = _read_jsonl(os.path.join(model_dir, "predictions.jsonl"))
    if predictions is None:
        out.append(missing.add("predictions.jsonl", "no mistakes to show."))
        return "".join(out)
    mistakes = sorted((p for p in predictions if not p.get("correct", True)),
                      key=lambda p: -float(p.get("confidence", 0.0)))[:num_mistakes]
    out.append(f"<h3>Most confident mistakes ({sum(not p.get('correct', True) for p in predictions)} "
               f"of {len(predictions)} test examples wrong)</h3><div class='cards'>")
    for p in mistakes:
        out.append(
            f'<div class="card">{images.thumb(p.get("image", ""))}'
            f'<b>{html.escape(str(p.get("text", "")))}</b><br>'
            f'predicted <b>{html.escape(", ".join(p.get("predicted", [])))}</b> '
            f'({float(p.get("confidence", 0.0)):.2f})<br>'
            f'true {html.escape(", ".join(p.get("labels", [])))}'
            f'<div class="note refs">{html.escape(str(p.get("image", "")))}</div></div>')
    out.append("</div>")
    fusion = (config or {}).get("model", {}).get("fusion")
    if (model is None and fusion == "cross_attention") or (model is not None and explain.has_cross_attention(model)):
        out.append("<h2>Attention maps</h2>")
        out.append('<p class="note">For each text token, the fusion\'s cross-attention over the image grid '
                   "(mean over heads and layers).</p>")
        picks = (mistakes[: max(num_attention - 1, 0)]
                 + [p for p in predictions if p.get("correct")][:1])[:num_attention]
        picks = [p for p in picks if "text" in p and "image" in p]
        out.append(_attention_html(model, picks, images, missing, classifier=True))
    return "".join(out)


def _retrieval_section(samples, images, top_k=5):
    out = ["<h2>Retrieval: each query's top images</h2>",
           '<p class="note">The correct image is outlined in green.</p><table class="retrieval">']
    for sample in samples:
        top = list(sample.get("top_images", []))[:top_k]
        scores = list(sample.get("scores", []))
        correct = sample.get("correct_image")
        cells = [f'<td class="query">{html.escape(str(sample.get("query", "")))}</td>']
        for rank, image_id in enumerate(top):
            score = f"{scores[rank]:.3f}" if rank < len(scores) else ""
            mark = image_id == correct
            css = ' class="correct"' if mark else ""
            label = f"#{rank + 1} {score}" + (" correct" if mark else "")
            cells.append(f"<td{css}>{images.thumb(image_id)}<br>{html.escape(label)}</td>")
        if correct is not None and correct not in top:
            cells.append(f'<td class="correct">{images.thumb(correct)}<br>correct (not in top {top_k})</td>')
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "".join(out)


def write_report(model_dir, output=None, model=None, per_group=3, num_attention=3, num_mistakes=6,
                 num_retrieval=8):
    """Writes the run's HTML report; returns `(path, missing)`.

    Args:
        model_dir: the run directory.
        output: where the page goes; default `model_dir/report.html`.
        model: the trained model, if at hand (else `model.keras` is loaded
            for the attention maps, when there is one).
        per_group: images in each of the best / median / worst caption groups.
        num_attention: images with attention maps.
        num_mistakes: classifier mistakes shown.
        num_retrieval: retrieval queries shown.

    Returns:
        The written path, and a list of `(file, what is missing because of
        it)` for the files the run did not have.
    """
    started = time.time()
    missing = _Missing()
    config_problem = ""
    try:
        config = _read_json(os.path.join(model_dir, "config.json"))
    except ValueError as e:
        config, config_problem = None, f"not valid JSON ({e}): no configuration, task unknown."
    if config is not None and not isinstance(config, dict):
        config = None
    metrics = _read_json(os.path.join(model_dir, "eval_metrics.json"))
    data_report = _read_json(os.path.join(model_dir, "data_report.json"))
    task = (config or {}).get("task")
    synthetic = explain.synthetic_from_config(config) if config else None
    image_size = int((config or {}).get("data", {}).get("image_size", 64))
    if model is None and task in ("caption", "classify", "vqa"):
        try:
            model = explain.load_model(model_dir)
        except explain.ExplainError:
            model = None  # Named as missing where the attention maps would be.
    if model is not None:
        image_size = int(getattr(model, "image_size", image_size))
    images = _Images(model_dir, synthetic, image_size)

    body = [_metrics_section(metrics, missing), _curves_section(model_dir, missing)]
    if task == "caption":
        body.append(_caption_section(model_dir, model, images, missing, per_group, num_attention))
    elif task in ("classify", "vqa"):
        body.append(_classifier_section(model_dir, model, config, images, missing, num_mistakes,
                                        num_attention))
    retrieval = _read_json(os.path.join(model_dir, "retrieval_samples.json"))
    if retrieval:
        body.append(_retrieval_section(retrieval[:num_retrieval], images))
    elif task == "contrastive":
        body.append(missing.add("retrieval_samples.json", "no retrieval grid."))
    body.append(_config_section(config, data_report, missing, config_problem))

    summary = ""
    if missing.items:
        summary = ('<div class="missing"><b>This run directory lacks files; the report shows the rest.</b><ul>'
                   + "".join(f"<li><code>{html.escape(n)}</code>: {html.escape(c)}</li>" for n, c in missing.items)
                   + "</ul></div>")
    seconds = time.time() - started
    page = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>mmkeras report: {html.escape(os.path.basename(os.path.abspath(model_dir)))}</title>"
        f"<style>{_STYLE}</style></head><body>"
        + _header(model_dir, config, metrics) + summary + "".join(body)
        + f'<p class="note">Written by python -m training.report in {seconds:.1f} s '
          f'on {time.strftime("%Y-%m-%d %H:%M:%S")}.</p></body></html>'
    )
    path = output or os.path.join(model_dir, REPORT_NAME)
    if os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(page)
    return path, missing.items


def define_flags():
    """The command line flags (defined here, not at import: `training.train` imports this module)."""
    flags.DEFINE_string("model_dir", None, "Run directory of python -m training.train.")
    flags.DEFINE_string("output", None, "Where the HTML page goes (default MODEL_DIR/report.html).")


def main(argv):
    del argv
    if not FLAGS.model_dir:
        raise app.UsageError("--model_dir is required.")
    if not os.path.isdir(FLAGS.model_dir):
        print(f"error: {FLAGS.model_dir} is not a directory.", file=sys.stderr)
        sys.exit(2)
    started = time.time()
    path, missing = write_report(FLAGS.model_dir, FLAGS.output)
    for name, consequence in missing:
        logging.warning("Missing %s: %s", name, consequence)
    print(f"Report: {path} ({os.path.getsize(path) / 1e6:.2f} MB, {time.time() - started:.1f} s)")


if __name__ == "__main__":
    define_flags()
    app.run(main)
