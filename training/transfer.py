"""Transfer between tasks: load trained towers (`--init_from`) and LoRA fine-tuning (`--lora_rank`).

`load_encoders` copies the image and text encoders of a trained run's
`model.keras` (typically a contrastive `DualEncoder`) into a new model of any
task: the captioner takes the image tower, the fusion classifier and the dual
encoder both towers. The architectures must match (same sizes, same
backbone); a mismatch is an error naming the first weight that differs.
A text tower trained from scratch only makes sense with the vocabulary it was
trained with, so tasks read the source run's `vocabulary.txt`
(`source_vocabulary`).

`enable_lora` (Hu et al., 2021) turns on Keras 3's low-rank adapters on every
`Dense`, `EinsumDense` and `Embedding` layer of the loaded towers and freezes
everything else of them; the task's own layers (decoder, fusion, heads)
still train.
"""

import os

import keras
from absl import logging

LORA_LAYER_TYPES = (keras.layers.Dense, keras.layers.EinsumDense, keras.layers.Embedding)


def _relative(path, encoder_name):
    """`"dual_encoder/image_encoder/stem_0_conv_0/kernel"` -> `"stem_0_conv_0/kernel"`."""
    marker = f"{encoder_name}/"
    return path.split(marker, 1)[1] if marker in path else path


def load_source_model(model_dir):
    """The `keras.Model` of a finished run directory (its `model.keras`)."""
    import mmkeras  # noqa: F401  (registers the serializable classes)

    path = os.path.join(model_dir, "model.keras")
    if not os.path.exists(path):
        raise ValueError(f"--init_from: {path} does not exist (give a finished training run's --model_dir).")
    # Only the towers' weights are read: no optimizer.
    return keras.saving.load_model(path, compile=False)


def copy_encoder(source, target, name):
    """Copies `source`'s weights into `target` (two encoders of one architecture)."""
    source_weights = {_relative(w.path, source.name): w for w in source.weights}
    target_weights = [(_relative(w.path, target.name), w) for w in target.weights]
    missing = [path for path, _ in target_weights if path not in source_weights]
    if missing or len(source_weights) != len(target_weights):
        extra = sorted(set(source_weights) - {p for p, _ in target_weights})
        raise ValueError(
            f"--init_from: the {name} towers differ: the source has {len(source_weights)} weights, the "
            f"target {len(target_weights)}; first missing in the source: {missing[:1] or None}, first "
            f"only in the source: {extra[:1] or None}. Use the source run's model sizes and backbone."
        )
    for path, weight in target_weights:
        src = source_weights[path]
        if tuple(src.shape) != tuple(weight.shape):
            raise ValueError(
                f"--init_from: layer {name}/{path} has shape {tuple(weight.shape)} in this model but "
                f"{tuple(src.shape)} in the source; set this run's sizes (model.hidden_dim, "
                "data.sequence_length, data.image_size, ...) to the source run's."
            )
    for path, weight in target_weights:
        weight.assign(source_weights[path])


def load_encoders(model, encoders, model_dir):
    """Copies the towers named in `encoders` (`{name: layer}`) from `model_dir`; returns their names."""
    source = load_source_model(model_dir)
    loaded = []
    for name, encoder in encoders.items():
        source_encoder = getattr(source, name, None)
        if source_encoder is None:
            logging.info("--init_from: %s has no %s; it keeps its initialisation.", model_dir, name)
            continue
        if type(source_encoder) is not type(encoder):
            raise ValueError(f"--init_from: {name} is a {type(source_encoder).__name__} in the source but a "
                             f"{type(encoder).__name__} here.")
        copy_encoder(source_encoder, encoder, name)
        loaded.append(name)
    if not loaded:
        raise ValueError(f"--init_from: {model_dir} has none of this model's towers ({', '.join(encoders)}).")
    print(f"Initialised {', '.join(loaded)} from {model_dir}", flush=True)
    return loaded


def source_vocabulary(model_dir):
    """The source run's `vocabulary.txt` lines, or None (preset tokenizers need none)."""
    path = os.path.join(model_dir, "vocabulary.txt")
    if not model_dir or not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f if line.rstrip("\n")]


def _leaf_layers(layer):
    children = list(layer._flatten_layers(include_self=False, recursive=True))
    return [child for child in children if not list(child._flatten_layers(include_self=False, recursive=False))]


def enable_lora(encoders, rank):
    """Low-rank adapters on the towers' Dense/EinsumDense/Embedding layers; the rest of them frozen.

    Returns the number of layers given adapters. Layers without adapters are
    frozen whole (`trainable=False`, so normalization layers run in inference
    mode and a frozen image stem's features can still be cached); adapted
    layers keep only their `lora_*` variables trainable.
    """
    if rank < 1:
        raise ValueError(f"--lora_rank must be >= 1. Received: lora_rank={rank}")
    adapted = 0
    for encoder in encoders:
        for layer in _leaf_layers(encoder):
            if isinstance(layer, LORA_LAYER_TYPES) and layer.built and not getattr(layer, "lora_enabled", False):
                layer.enable_lora(rank)
                for weight in layer.weights:
                    weight.trainable = "lora_" in weight.path.rsplit("/", 1)[-1]
                adapted += 1
            elif layer.weights:
                layer.trainable = False
    if not adapted:
        raise ValueError("--lora_rank: the loaded towers have no Dense, EinsumDense or Embedding layer.")
    return adapted
