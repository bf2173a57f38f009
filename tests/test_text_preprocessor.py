import os
import shutil
import subprocess
import sys

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf

from mmkeras.data.text_preprocessor import (
    TextPreprocessor,
    text_preprocessor_from_preset,
    text_preprocessor_from_vocabulary,
)
from mmkeras.data.tokenizer import build_tokenizer
from mmkeras.layers import PresetError
from mmkeras.layers.text_encoder import TextEncoder
from tests.backbone_fixtures import save_tiny_resnet_preset
from tests.layer_harness import run_config_round_trip, run_save_load

VOCABULARY = ["[PAD]", "[UNK]", "[START]", "[END]", "a", "red", "blue", "circle", "square", "##s"]
BERT_VOCABULARY = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "blue", "circle",
                   "square", "##s", "left", "of"]
TEXTS = ["a red circle", "blue squares left of a red circle and a blue square"]


def _numpy(outputs):
    return {k: np.asarray(v) for k, v in outputs.items()}


def _expected(ids_list, length, start=None, end=None, pad=0):
    """Reference packing in plain Python over the tokenizer's own ids."""
    rows, masks = [], []
    for ids in ids_list:
        body = list(ids)[: length - (start is not None) - (end is not None)]
        row = ([start] if start is not None else []) + body + ([end] if end is not None else [])
        masks.append([True] * len(row) + [False] * (length - len(row)))
        rows.append(row + [pad] * (length - len(row)))
    return np.array(rows, "int32"), np.array(masks)


def _tokenize(tokenizer, texts):
    # Eagerly keras-hub tokenizers take their pure Python path: an
    # independent reference for the graph path the preprocessor runs.
    return [list(np.asarray(ids)) for ids in tokenizer(texts)]


def _bert_preset(directory):
    backbone = keras_hub.models.BertBackbone(vocabulary_size=len(BERT_VOCABULARY), num_layers=1,
                                             num_heads=2, hidden_dim=16, intermediate_dim=32,
                                             max_sequence_length=16)
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=BERT_VOCABULARY, lowercase=True)
    backbone.save_to_preset(directory)
    tokenizer.save_to_preset(directory)
    return tokenizer


def test_from_vocabulary_gives_the_captioner_tokenizer_ids_truncated_and_padded():
    preprocessor = text_preprocessor_from_vocabulary(VOCABULARY, 6)
    out = _numpy(preprocessor(tf.constant(TEXTS)))
    ids, mask = _expected(_tokenize(build_tokenizer(VOCABULARY), TEXTS), 6)
    np.testing.assert_array_equal(out["token_ids"], ids)
    np.testing.assert_array_equal(out["padding_mask"], mask)
    assert out["token_ids"].dtype == np.int32 and out["padding_mask"].dtype == bool
    assert out["padding_mask"][1].all()  # the long text was cut to 6 tokens
    # Python strings and a scalar (unbatched: rank-1 outputs) give the same rows.
    np.testing.assert_array_equal(_numpy(preprocessor(TEXTS))["token_ids"], ids)
    single = _numpy(preprocessor("a red circle"))
    assert single["token_ids"].shape == (6,)
    np.testing.assert_array_equal(single["token_ids"], ids[0])
    np.testing.assert_array_equal(single["padding_mask"], mask[0])


def test_start_end_packing_keeps_the_end_token_when_truncating():
    tokenizer = build_tokenizer(VOCABULARY)
    preprocessor = TextPreprocessor(tokenizer, 5, start_token_id=2, end_token_id=3)
    out = _numpy(preprocessor(TEXTS))
    ids, mask = _expected(_tokenize(tokenizer, TEXTS), 5, start=2, end=3)
    np.testing.assert_array_equal(out["token_ids"], ids)
    np.testing.assert_array_equal(out["padding_mask"], mask)
    assert out["token_ids"][1, -1] == 3 and out["token_ids"][0].tolist() == [2, 4, 5, 7, 3]


def test_tf_data_map_batched_and_unbatched_match_eager():
    preprocessor = TextPreprocessor(build_tokenizer(VOCABULARY), 8, start_token_id=2,
                                    end_token_id=3, pad_token_id=0)
    eager = _numpy(preprocessor(TEXTS))
    data = tf.data.Dataset.from_tensor_slices(TEXTS)
    batched = next(iter(data.batch(2).map(preprocessor, num_parallel_calls=tf.data.AUTOTUNE)))
    rows = list(data.map(preprocessor, num_parallel_calls=tf.data.AUTOTUNE))
    for key in ("token_ids", "padding_mask"):
        np.testing.assert_array_equal(batched[key].numpy(), eager[key])
        np.testing.assert_array_equal(np.stack([r[key].numpy() for r in rows]), eager[key])
    assert batched["token_ids"].shape.as_list() == [2, 8]


def test_config_round_trip_and_keras_save_load(tmp_path):
    preprocessor = TextPreprocessor(build_tokenizer(VOCABULARY), 7, start_token_id=2,
                                    end_token_id=3, pad_token_id=1, name="question_preprocessor")
    clone = run_config_round_trip(preprocessor)
    assert (clone.sequence_length, clone.start_token_id, clone.end_token_id, clone.pad_token_id) == (7, 2, 3, 1)
    assert clone.name == "question_preprocessor"
    texts = keras.Input(shape=(), dtype="string", name="texts")
    model = keras.Model(texts, preprocessor(texts))
    # The vocabulary is not in the config: it must come back from the archive.
    restored = run_save_load(model, tf.constant(TEXTS), str(tmp_path))
    tokenizer = restored.layers[-1].tokenizer
    assert tokenizer.get_vocabulary() == VOCABULARY
    np.testing.assert_array_equal(
        _numpy(restored(tf.constant(TEXTS)))["padding_mask"], _numpy(model(tf.constant(TEXTS)))["padding_mask"]
    )


def _graph_ops(saved_model_dir):
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(saved_model_dir, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    ops_used = set()
    for graph in proto.meta_graphs:
        ops_used.update(node.op for node in graph.graph_def.node)
        for function in graph.graph_def.library.function:
            ops_used.update(node.op for node in function.node_def)
    return ops_used


# Lists the ops that plain TensorFlow does not register, then those that
# TensorFlow Text does not register either.
OP_CHECK = (
    "import sys, tensorflow as tf\n"
    "from tensorflow.python.framework import op_def_registry as r\n"
    "ops = sys.argv[1:]\n"
    "core_unknown = [o for o in ops if r.get(o) is None]\n"
    "import tensorflow_text\n"
    "print(','.join(core_unknown)); print(','.join(o for o in core_unknown if r.get(o) is None))\n"
)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A SavedModel whose serving function runs the preprocessor, and its outputs."""
    preprocessor = TextPreprocessor(build_tokenizer(VOCABULARY), 6, start_token_id=2, end_token_id=3)
    expected = _numpy(preprocessor(tf.constant(TEXTS)))
    archive = keras.export.ExportArchive()
    archive.track(preprocessor)

    def serve(texts):
        return preprocessor(texts)

    archive.add_endpoint("serve", tf.function(serve, autograph=False),
                         input_signature=[tf.TensorSpec([None], tf.string, name="texts")])
    path = str(tmp_path_factory.mktemp("export") / "saved")
    archive.write_out(path, verbose=False)
    return path, expected


def test_saved_model_export_reloads_with_equal_outputs(exported):
    path, expected = exported
    import tensorflow_text  # noqa: F401 - a SavedModel with TF Text ops needs them registered.

    actual = _numpy(tf.saved_model.load(path).serve(tf.constant(TEXTS)))
    for key in ("token_ids", "padding_mask"):
        np.testing.assert_array_equal(actual[key], expected[key])
    # TF Serving has neither Python ops nor XLA clusters.
    assert not _graph_ops(path) & {"PyFunc", "EagerPyFunc", "PyFuncStateless", "XlaLaunch", "_XlaCompile"}


@pytest.mark.slow
def test_saved_model_export_uses_core_tf_and_tf_text_ops_only(exported):
    path, _ = exported
    ops_used = _graph_ops(path)
    # A fresh interpreter: this one has loaded keras-hub and TF Text already.
    out = subprocess.run([sys.executable, "-c", OP_CHECK, *sorted(ops_used)], capture_output=True,
                         text=True, check=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    text_ops, unknown = (out.stdout.strip().splitlines() + ["", ""])[:2]
    assert unknown == "", f"ops from neither TF nor TF Text: {unknown}"
    assert "FastWordpieceTokenizeWithOffsets" in text_ops.split(",")


def test_from_preset_packs_cls_and_sep_like_the_tokenizer(tmp_path):
    preset_dir = str(tmp_path / "bert_preset")
    tokenizer = _bert_preset(preset_dir)
    preprocessor = text_preprocessor_from_preset(preset_dir, 8)
    assert isinstance(preprocessor.tokenizer, keras_hub.models.BertTokenizer)
    ids, mask = _expected(_tokenize(tokenizer, TEXTS), 8, start=tokenizer.cls_token_id,
                          end=tokenizer.sep_token_id, pad=tokenizer.pad_token_id)
    out = _numpy(preprocessor(TEXTS))
    np.testing.assert_array_equal(out["token_ids"], ids)
    np.testing.assert_array_equal(out["padding_mask"], mask)
    assert out["token_ids"][0].tolist() == [2, 5, 6, 8, 3, 0, 0, 0]  # [CLS] a red circle [SEP]


def test_strings_model_with_preset_encoder_reloads_without_preset_folder(tmp_path):
    preset_dir = str(tmp_path / "bert_preset")
    _bert_preset(preset_dir)
    texts = keras.Input(shape=(), dtype="string", name="texts")
    inputs = text_preprocessor_from_preset(preset_dir, 8)(texts)
    encoder = TextEncoder(backbone_preset=preset_dir, hidden_dim=8, pooling="first")
    outputs = encoder(inputs["token_ids"], inputs["padding_mask"])
    model = keras.Model(texts, outputs)
    expected = _numpy(model(tf.constant(TEXTS)))
    path = str(tmp_path / "model.keras")
    model.save(path)
    shutil.rmtree(preset_dir)
    actual = _numpy(keras.saving.load_model(path)(tf.constant(TEXTS)))
    for key in ("tokens", "pooled"):
        np.testing.assert_allclose(actual[key], expected[key], atol=1e-5)


def test_missing_or_incomplete_preset_names_folder_and_file(tmp_path):
    missing = str(tmp_path / "no_such_preset")
    with pytest.raises(FileNotFoundError, match="no_such_preset"):
        text_preprocessor_from_preset(missing, 8)
    preset_dir = str(tmp_path / "bert_preset")
    _bert_preset(preset_dir)
    os.remove(os.path.join(preset_dir, "assets", "tokenizer", "vocabulary.txt"))
    with pytest.raises(FileNotFoundError, match="bert_preset.*vocabulary.txt|vocabulary.txt.*bert_preset"):
        text_preprocessor_from_preset(preset_dir, 8)
    os.remove(os.path.join(preset_dir, "tokenizer.json"))
    with pytest.raises(FileNotFoundError, match="tokenizer.json") as error:
        text_preprocessor_from_preset(preset_dir, 8)
    assert preset_dir in str(error.value)
    # An image model's preset has no tokenizer: named, never a traceback from keras-hub.
    image_dir = save_tiny_resnet_preset(tmp_path / "resnet_preset", 16)
    with pytest.raises(PresetError, match="resnet_preset has no tokenizer keras-hub can load"):
        text_preprocessor_from_preset(image_dir, 8)


def test_rejects_bad_args():
    tokenizer = build_tokenizer(VOCABULARY)
    with pytest.raises(ValueError, match="sequence_length=2"):
        TextPreprocessor(tokenizer, 2, start_token_id=2, end_token_id=3)
    with pytest.raises(ValueError, match="pad_token_id=-1"):
        TextPreprocessor(tokenizer, 4, pad_token_id=-1)
    dense = keras_hub.tokenizers.WordPieceTokenizer(vocabulary=VOCABULARY, sequence_length=4)
    with pytest.raises(ValueError, match="sequence_length=4"):
        TextPreprocessor(dense, 6)
    with pytest.raises(ValueError, match="inputs.shape"):
        TextPreprocessor(tokenizer, 4)(tf.constant([["a red"]]))
