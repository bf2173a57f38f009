"""Attention maps: where a trained model looks in the image, word by word.

    python -m training.explain --model_dir=DIR --image=a.jpg [--image=b.jpg ...]
    python -m training.explain --model_dir=DIR --image=synthetic:test:3
    python -m training.explain --model_dir=CLASSIFIER_DIR --image=a.png \\
        --text="what colour is the circle?"

Captioners (`--task=caption` runs): generates each image's caption and draws,
for every generated word, the decoder's `CrossModalAttention` over the image
grid (averaged over heads, and over layers unless `--layer` picks one) as a
heat map over the image. Classifiers with `cross_attention` fusion: the same
for each token of `--text` (one text for all images, or one per image). Writes
one PNG grid per image (the image, then one panel per word, titled with the
word) into `--output_dir` (default `DIR/explain/`) and prints the caption or
the predicted label. An image that cannot be read is reported by name on
stderr and the others are still explained (exit status 1 then).

`--image` takes files (JPEG, PNG, GIF, BMP) or, for runs on the built-in
synthetic data, ids `synthetic:<split>:<index>` rendered with the run's seed
and image size.
"""

import json
import math
import os
import sys

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS

SYNTHETIC_PREFIX = "synthetic:"


class ExplainError(ValueError):
    """A run directory or an input that cannot be explained; the message says which and why."""


def read_run_config(model_dir):
    """The run's `config.json` as a plain dict (`ExplainError` if missing or unreadable)."""
    path = os.path.join(model_dir, "config.json")
    try:
        with open(path) as f:
            config = json.load(f)
    except FileNotFoundError:
        raise ExplainError(f"{path} does not exist: not a run directory of python -m training.train.")
    except (OSError, ValueError) as e:
        raise ExplainError(f"{path} cannot be read: {e}")
    if not isinstance(config, dict):
        raise ExplainError(f"{path} does not hold a config object.")
    return config


def synthetic_from_config(config):
    """The run's `SyntheticCaptions` (seed, image size, split sizes), or None for file data."""
    data = config.get("data", {})
    if str(data.get("spec", "")).partition(":")[0].strip().lower() != "synthetic":
        return None
    from mmkeras.data.synthetic_captions import SyntheticCaptions

    return SyntheticCaptions(
        seed=int(config.get("train", {}).get("seed", 0)),
        image_size=int(data.get("image_size", 64)),
        num_train=int(data.get("synthetic_num_train", 20000)),
        num_validation=int(data.get("synthetic_num_validation", 500)),
        num_test=int(data.get("synthetic_num_test", 500)),
    )


def load_model(model_dir):
    """The run's `model.keras` (`ExplainError` if there is none)."""
    path = os.path.join(model_dir, "model.keras")
    if not os.path.isfile(path):
        raise ExplainError(f"{path} does not exist: the run has not finished training.")
    import keras

    import mmkeras  # noqa: F401  (registers the serializable classes)

    # Inference only: no optimizer.
    return keras.saving.load_model(path, compile=False)


def load_image(source, image_size, synthetic=None):
    """A uint8 `(image_size, image_size, 3)` image of a file or a synthetic id.

    Files go through the same decoding and resizing as training and serving
    (`mmkeras.data.caption_pipeline.decode_image`).

    Raises:
        ExplainError: naming `source`, if it is not a readable image.
    """
    import tensorflow as tf

    if source.startswith(SYNTHETIC_PREFIX):
        if synthetic is None:
            raise ExplainError(f"{source}: synthetic ids need a run on --data=synthetic.")
        try:
            image = synthetic.render_image(source)
        except ValueError as e:
            raise ExplainError(f"{source}: {e}")
        if image.shape[0] != image_size:
            image = tf.image.resize(image, (image_size, image_size), antialias=True).numpy()
        return np.clip(np.round(image), 0, 255).astype(np.uint8)
    from mmkeras.data.caption_pipeline import decode_image

    try:
        with open(source, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ExplainError(f"{source}: cannot be read ({e.strerror or e}).")
    try:
        image = decode_image(tf.constant(data), image_size)
    except (tf.errors.OpError, ValueError):
        raise ExplainError(f"{source}: not an image (JPEG, PNG, GIF or BMP expected).")
    return np.clip(np.round(image.numpy()), 0, 255).astype(np.uint8)


def token_grid(image_encoder, image_size):
    """`(rows, columns, skip)`: how the encoder's image tokens tile the image.

    The default stem and CNN backbones give a feature map, flattened row by
    row; a ViT-style token sequence may start with one class token (`skip`).
    """
    shape = tuple(image_encoder.features_shape((1, image_size, image_size, 3)))
    if len(shape) == 4:
        return int(shape[1]), int(shape[2]), 0
    count = int(shape[1])
    for skip in (0, 1):
        side = math.isqrt(count - skip)
        if side * side == count - skip:
            return side, side, skip
    raise ExplainError(f"The image encoder's {count} tokens do not form a square grid.")


def _select_layer(attention, layer):
    """`(..., layers, tokens)` -> `(..., tokens)`: one layer, or the mean over layers."""
    if layer in (None, "mean"):
        return attention.mean(axis=-2)
    layers = attention.shape[-2]
    index = int(layer)
    if not -layers <= index < layers:
        raise ExplainError(f"--layer={layer}: the model has {layers} attention layers (0 to {layers - 1}).")
    return attention[..., index, :]


def _grid_maps(flat, grid):
    rows, columns, skip = grid
    maps = flat[..., skip:skip + rows * columns]
    return maps.reshape(maps.shape[:-1] + (rows, columns))


def merge_word_pieces(tokens, maps):
    """Joins WordPiece continuations (`##...`) into words, averaging their maps.

    Returns `(words, maps)` with `maps` stacked `(len(words), ...)`.
    """
    words, groups = [], []
    for token, heat in zip(tokens, maps):
        if token.startswith("##") and words:
            words[-1] += token[2:]
            groups[-1].append(heat)
        else:
            words.append(token)
            groups.append([heat])
    if not words:
        return [], np.zeros((0,) + tuple(np.shape(maps)[1:]), np.float32)
    return words, np.stack([np.mean(g, axis=0) for g in groups])


def caption_token_ids(model, captions):
    """int32 `(batch, sequence_length)`: start token, the captions' tokens, end token, padding.

    The layout `generate()` returns, so that recorded captions (e.g. of
    `predictions.jsonl`) can be explained without generating them again.
    """
    length = model.text_decoder.sequence_length
    rows = np.full((len(captions), length), model.pad_token_id, dtype=np.int32)
    tokenized = model.tokenizer(list(captions))
    # Eagerly, keras-hub tokenizers may return a list of id lists or a ragged tensor.
    tokenized = tokenized.to_list() if hasattr(tokenized, "to_list") else tokenized
    for i, ids in enumerate(tokenized):
        ids = [model.start_token_id] + [int(t) for t in np.asarray(ids).reshape(-1)] + [model.end_token_id]
        rows[i, : min(len(ids), length)] = ids[:length]
    return rows


def caption_attention(model, images, layer="mean", method="greedy", captions=None, **generate_kwargs):
    """Captions of `images` with one attention map per word.

    Args:
        model: an `ImageCaptioner`.
        images: uint8 or float array `(batch, image_size, image_size, 3)`.
        layer: `"mean"` (over decoder layers) or a layer index.
        method, generate_kwargs: as for `ImageCaptioner.caption`.
        captions: optional list of str, captions the model generated before
            (e.g. in `predictions.jsonl`): their maps are read in one decoder
            pass, with no generation (exactly generation's maps, since the
            decoder is causal, as long as the text tokenizes back to the
            generated tokens, which whole-word vocabularies guarantee).

    Returns:
        One dict per image: `"caption"` (str), `"words"` (list of str) and
        `"maps"` float32 `(len(words), rows, columns)` over the token grid,
        each summing to (about) 1.
    """
    images = np.asarray(images, dtype=np.float32)
    if captions is None:
        out = model.caption_with_attention(images, method=method, **generate_kwargs)
    else:
        out = model.token_attention(images, caption_token_ids(model, captions))
    grid = token_grid(model.image_encoder, model.image_size)
    maps = _grid_maps(_select_layer(out["attention"], layer), grid)  # (batch, steps, rows, cols)
    results = []
    for caption, tokens, image_maps in zip(out["captions"], out["tokens"], maps):
        words, word_maps = merge_word_pieces(tokens, image_maps[: len(tokens)])
        results.append({"caption": caption, "words": words, "maps": word_maps.astype(np.float32)})
    return results


def has_cross_attention(model):
    """Whether a classifier fuses with `CrossAttentionFusion` (text tokens attend to the image)."""
    from mmkeras.layers.cross_attention_fusion import CrossAttentionFusion

    return isinstance(getattr(model, "fusion", None), CrossAttentionFusion)


def classifier_attention(model, images, texts, layer="mean"):
    """Predictions of a cross-attention classifier with one map per text token.

    Args:
        model: a `FusionClassifier` whose fusion is `CrossAttentionFusion`.
        images: uint8 or float array `(batch, image_size, image_size, 3)`.
        texts: list of str, one per image.
        layer: `"mean"` (over fusion layers) or a layer index.

    Returns:
        One dict per image: `"label"` (str, or labels joined by ", " for
        multi-label models), `"confidence"` (float), `"words"` (the text's
        tokens, special tokens included, pieces joined) and `"maps"` float32
        `(len(words), rows, columns)`.
    """
    from keras import ops

    if not has_cross_attention(model):
        raise ExplainError(
            f"The classifier fuses with {type(getattr(model, 'fusion', None)).__name__}: only "
            "cross_attention fusion has text-to-image attention to show."
        )
    if model.text_preprocessor is None:
        raise ExplainError("The classifier has no text preprocessor to tokenize --text with.")
    images = np.asarray(images, dtype=np.float32)
    text = model.text_preprocessor(list(texts))
    token_ids, padding_mask = text["token_ids"], text["padding_mask"]
    image = model.image_encoder(images, training=False)
    encoded = model.text_encoder(token_ids, padding_mask=padding_mask, training=False)
    _, scores = model.fusion(
        image["tokens"], image["pooled"], encoded["tokens"], encoded["pooled"],
        text_padding_mask=padding_mask, training=False, return_attention_scores=True,
    )
    # (batch, layers, heads, text, image) -> heads averaged -> (batch, text, layers, image)
    attention = np.mean(np.stack([ops.convert_to_numpy(s) for s in scores], axis=1), axis=2)
    attention = np.transpose(attention, (0, 2, 1, 3)).astype(np.float32)
    grid = token_grid(model.image_encoder, model.image_size)
    maps = _grid_maps(_select_layer(attention, layer), grid)
    logits = model({"images": images, "token_ids": token_ids, "padding_mask": padding_mask},
                   training=False)["logits"]
    probabilities = ops.convert_to_numpy(model.probabilities(logits))
    decisions = ops.convert_to_numpy(model.decisions(probabilities))
    names = model.label_names or [str(i) for i in range(model.num_classes)]
    tokenizer = model.text_preprocessor.tokenizer
    ids, mask = ops.convert_to_numpy(token_ids), ops.convert_to_numpy(padding_mask)
    results = []
    for i in range(len(images)):
        if model.multi_label:
            label = ", ".join(names[j] for j in np.flatnonzero(decisions[i])) or "(none)"
            confidence = float(np.max(probabilities[i]))
        else:
            label = names[int(decisions[i])]
            confidence = float(probabilities[i][int(decisions[i])])
        real = np.flatnonzero(mask[i])
        tokens = [tokenizer.id_to_token(int(ids[i][j])) for j in real]
        words, word_maps = merge_word_pieces(tokens, maps[i][real])
        results.append({"label": label, "confidence": confidence, "words": words,
                        "maps": word_maps.astype(np.float32)})
    return results


def upsample(grid_map, height, width):
    """Nearest-neighbour `(rows, columns)` -> `(height, width)`: each token covers its cell."""
    rows, columns = grid_map.shape
    return grid_map[np.ix_(np.arange(height) * rows // height, np.arange(width) * columns // width)]


def object_masks(synthetic, split, index):
    """Boolean pixel masks `(image_size, image_size)` of a synthetic scene's objects, reading order.

    A pixel belongs to an object when it lies in the object's bounding box and
    differs from the background in the noise-free rendering (the background
    colour is the most common one: objects cover well under half the image).
    """
    from mmkeras.data.synthetic_captions import SyntheticCaptions

    clean = SyntheticCaptions(
        seed=synthetic.seed, image_size=synthetic.image_size, num_train=synthetic.num_train,
        num_validation=synthetic.num_validation, num_test=synthetic.num_test, noise_stddev=0.0,
    )
    image, _ = clean.render(split, index)
    colours, counts = np.unique(image.reshape(-1, 3), axis=0, return_counts=True)
    background = colours[np.argmax(counts)].astype(np.int32)
    foreground = np.abs(image.astype(np.int32) - background).max(axis=-1) > 24
    size = synthetic.image_size
    coordinates = (np.arange(size) + 0.5) / size
    masks = []
    for obj in synthetic.scene(split, index)["objects"]:
        (cx, cy), half = obj["center"], obj["extent"] / 2 + 1.0 / size
        inside_x = np.abs(coordinates - cx) <= half
        inside_y = np.abs(coordinates - cy) <= half
        masks.append(foreground & inside_y[:, None] & inside_x[None, :])
    return masks


def colour_word_attention(model, synthetic, split="test", indices=None, layer="mean", batch_size=64):
    """How much of each colour word's attention falls on the object of that colour.

    For every synthetic image, the caption is generated (greedy) and, for each
    object whose colour word the caption contains, the word's map is
    upsampled to pixels (each token covers its cell) and the share of its
    mass on the object's pixels is measured.

    Returns:
        A list of dicts, one per (image, named object): `"image"` id,
        `"layout"`, `"num_objects"`, `"colour"`, `"mass"` (share of the
        attention on the object's pixels), `"area"` (the object's share of
        the image: what uniform attention would put on it), `"token_mass"`
        (share on the tokens whose cell holds any of its pixels) and
        `"token_area"` (those tokens' share of all tokens). A token covers
        a whole cell (4x4 pixels for the default captioner's 64 px images on
        a 16x16 grid, 8x8 on an 8x8 grid), so even attention entirely on a small
        shape's tokens puts some mass on the background around it: `mass` is
        the strict measure.
    """
    indices = list(range(synthetic.num_examples(split))) if indices is None else list(indices)
    results = []
    for start in range(0, len(indices), batch_size):
        chunk = indices[start:start + batch_size]
        images = np.stack([synthetic.render(split, i)[0] for i in chunk])
        for index, explained in zip(chunk, caption_attention(model, images, layer=layer)):
            scene = synthetic.scene(split, index)
            masks = object_masks(synthetic, split, index)
            for obj, mask in zip(scene["objects"], masks):
                if obj["color"] not in explained["words"]:
                    continue
                heat = explained["maps"][explained["words"].index(obj["color"])]
                pixels = upsample(heat, *mask.shape)
                # The tokens whose cell holds any of the object's pixels.
                cells = upsample(np.arange(heat.size).reshape(heat.shape), *mask.shape)
                touched = np.isin(np.arange(heat.size), cells[mask]).reshape(heat.shape)
                total = max(float(heat.sum()), 1e-12)
                results.append({
                    "image": f"synthetic:{split}:{index}",
                    "layout": scene["layout"],
                    "num_objects": len(scene["objects"]),
                    "colour": obj["color"],
                    "mass": float((pixels * mask).sum() / max(pixels.sum(), 1e-12)),
                    "area": float(mask.mean()),
                    "token_mass": float(heat[touched].sum() / total),
                    "token_area": float(touched.mean()),
                })
    return results


def output_name(source, taken):
    """A PNG file name for `source`, unique among `taken` (which it joins)."""
    if source.startswith(SYNTHETIC_PREFIX):
        stem = source.replace(":", "_")
    else:
        stem = os.path.splitext(os.path.basename(source))[0] or "image"
    name, n = f"{stem}_attention.png", 1
    while name in taken:
        n += 1
        name = f"{stem}_{n}_attention.png"
    taken.add(name)
    return name


def explain_images(model, config, sources, output_dir, texts=None, layer="mean", method="greedy"):
    """Writes one attention grid per image; returns `(results, errors)`.

    `results` holds, per explained image, a dict with `"image"` (the source),
    `"png"` (the written path) and the fields of `caption_attention` or
    `classifier_attention`; `errors` the messages of the images that could
    not be read (the others are still explained).
    """
    from mmkeras.metrics.plots import plot_attention_grid

    synthetic = synthetic_from_config(config)
    classifier = config.get("task") in ("classify", "vqa")
    if classifier and not has_cross_attention(model):
        raise ExplainError(
            f"This {config.get('task')} run fuses with {config.get('model', {}).get('fusion')!r}: only "
            "--fusion=cross_attention has text-to-image attention to show."
        )
    if classifier:
        texts = list(texts or [])
        if len(texts) not in (1, len(sources)):
            raise ExplainError(
                f"Classifiers need --text: one for all images or one per image. Received "
                f"{len(texts)} texts for {len(sources)} images."
            )
        texts = texts * len(sources) if len(texts) == 1 else texts
    os.makedirs(output_dir, exist_ok=True)
    results, errors, taken = [], [], set()
    for i, source in enumerate(sources):
        try:
            image = load_image(source, model.image_size, synthetic)
        except ExplainError as e:
            errors.append(str(e))
            continue
        if classifier:
            explained = classifier_attention(model, image[None], [texts[i]], layer)[0]
            explained["text"] = texts[i]
            title = f"{texts[i]} -> {explained['label']} ({explained['confidence']:.2f})"
        else:
            explained = caption_attention(model, image[None], layer=layer, method=method)[0]
            title = explained["caption"]
        path = os.path.join(output_dir, output_name(source, taken))
        plot_attention_grid(image, explained["words"], explained["maps"], path, title=title)
        results.append({"image": source, "png": path, **explained})
    return results, errors


def define_flags():
    """The command line flags (defined here, not at import: `training.report` imports this module)."""
    flags.DEFINE_string("model_dir", None, "Run directory of python -m training.train (config.json, model.keras).")
    flags.DEFINE_multi_string("image", [], "Image file or synthetic:<split>:<index> id; repeatable.")
    flags.DEFINE_multi_string(
        "text", [], "Classifiers: the text (question) paired with the images; one for all, or one per --image."
    )
    flags.DEFINE_string("output_dir", None, "Where the PNG grids go (default MODEL_DIR/explain).")
    flags.DEFINE_string("layer", "mean", "Attention layer to show: `mean` (over layers) or an index (0 = first).")
    flags.DEFINE_enum("method", "greedy", ["greedy", "beam"], "Captioners: how the caption is generated.")


def main(argv):
    del argv
    if not FLAGS.model_dir:
        raise app.UsageError("--model_dir is required.")
    if not FLAGS.image:
        raise app.UsageError("Give at least one --image.")
    if FLAGS.layer != "mean":
        try:
            int(FLAGS.layer)
        except ValueError:
            raise app.UsageError(f"--layer must be `mean` or an integer. Received: --layer={FLAGS.layer}")
    try:
        config = read_run_config(FLAGS.model_dir)
        model = load_model(FLAGS.model_dir)
        output_dir = FLAGS.output_dir or os.path.join(FLAGS.model_dir, "explain")
        results, errors = explain_images(
            model, config, FLAGS.image, output_dir, texts=FLAGS.text, layer=FLAGS.layer, method=FLAGS.method
        )
    except ExplainError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    for result in results:
        if "caption" in result:
            print(f"{result['image']}: {result['caption']}")
        else:
            print(f"{result['image']} [{result['text']}]: {result['label']} ({result['confidence']:.3f})")
        print(f"  attention map: {result['png']}")
    for message in errors:
        print(f"error: {message}", file=sys.stderr)
    if errors:
        sys.exit(1)


if __name__ == "__main__":
    define_flags()
    app.run(main)
