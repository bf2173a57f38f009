"""Strings to fixed-length token ids and padding masks, in graph.

The work is done by keras-hub's tokenizers and `StartEndPacker`, which run on
core TensorFlow and TensorFlow Text ops, so the same layer preprocesses inside
`tf.data`, inside a model and inside an exported SavedModel that TensorFlow
Serving can load.
"""

import keras
import keras_hub
import tensorflow as tf

from mmkeras.data.tokenizer import build_tokenizer, special_token_ids
from mmkeras.layers.backbone_utils import PresetError, check_preset


class _FunctionCache:
    """Eager-call `tf.function`s by input rank, kept out of Keras/TF tracking."""

    def __init__(self):
        self.functions = {}


@keras.saving.register_keras_serializable(package="mmkeras")
class TextPreprocessor(keras.layers.Layer):
    """Tokenizes strings into `sequence_length` token ids and a padding mask.

    Texts are tokenized, truncated, wrapped in the start and end tokens when
    given (BERT: `[CLS] ... [SEP]`) and padded on the right with
    `pad_token_id`. The padding mask is True for every real token, start and
    end tokens included. Eager calls run the same TensorFlow graph as traced
    ones (keras-hub tokenizers would take their pure Python path eagerly), so
    ids never depend on where the layer runs.

    Args:
        tokenizer: a keras-hub tokenizer returning ragged int ids (its
            `sequence_length` unset), e.g. `WordPieceTokenizer` or
            `BertTokenizer`. Saved with the layer: its vocabulary travels as
            an asset of the `.keras` file.
        sequence_length: int, length of the outputs, special tokens included.
        start_token_id: optional int, prepended to every sequence.
        end_token_id: optional int, appended to every sequence (kept when a
            long text is truncated).
        pad_token_id: int, id of the padding that fills each sequence.
        **kwargs: base layer arguments.

    Call arguments:
        inputs: `tf.string` tensor (or Python strings) of shape `(batch,)`, or
            a scalar string.

    Returns:
        A dict with `"token_ids"` int32 and `"padding_mask"` bool, each
        `(batch, sequence_length)`, or `(sequence_length,)` for a scalar.

    Example:
    >>> from mmkeras.data.tokenizer import build_tokenizer
    >>> vocabulary = ["[PAD]", "[UNK]", "[START]", "[END]", "a", "red", "circle"]
    >>> preprocessor = TextPreprocessor(build_tokenizer(vocabulary), 6,
    ...                                 start_token_id=2, end_token_id=3)
    >>> preprocessor(["a red circle"])["token_ids"].numpy().tolist()
    [[2, 4, 5, 6, 3, 0]]
    """

    def __init__(
        self,
        tokenizer,
        sequence_length,
        start_token_id=None,
        end_token_id=None,
        pad_token_id=0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        specials = sum(i is not None for i in (start_token_id, end_token_id))
        if (
            not isinstance(sequence_length, int)
            or isinstance(sequence_length, bool)
            or sequence_length <= specials
        ):
            raise ValueError(
                "`sequence_length` must be an int larger than the number of start "
                f"and end tokens ({specials}). Received: sequence_length={sequence_length}"
            )
        for arg, value in (
            ("start_token_id", start_token_id),
            ("end_token_id", end_token_id),
            ("pad_token_id", pad_token_id),
        ):
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ValueError(f"`{arg}` must be a non-negative int. Received: {arg}={value}")
        if pad_token_id is None:
            raise ValueError(f"`pad_token_id` is required. Received: pad_token_id={pad_token_id}")
        if getattr(tokenizer, "sequence_length", None):
            # Dense tokenizer output is already padded with 0: the packer
            # would count that padding as tokens.
            raise ValueError(
                "The tokenizer must return ragged ids; TextPreprocessor pads. "
                f"Received: tokenizer.sequence_length={tokenizer.sequence_length}"
            )
        if "int" not in str(getattr(tokenizer, "compute_dtype", "int32")):
            raise ValueError(
                "The tokenizer must return integer ids. "
                f"Received: tokenizer.compute_dtype={tokenizer.compute_dtype}"
            )
        self.tokenizer = tokenizer
        self.sequence_length = sequence_length
        self.start_token_id = start_token_id
        self.end_token_id = end_token_id
        self.pad_token_id = pad_token_id
        self.packer = keras_hub.layers.StartEndPacker(
            sequence_length,
            start_value=start_token_id,
            end_value=end_token_id,
            pad_value=pad_token_id,
            return_padding_mask=True,
            name="packer",
        )
        # Strings stay TensorFlow tensors (as in keras-hub preprocessing
        # layers): Keras would otherwise cast inputs to the float dtype policy
        # and reject Python strings.
        self._convert_input_args = False
        self._allow_non_tensor_positional_args = True
        self._eager = _FunctionCache()
        self.built = True

    def _preprocess(self, inputs):
        inputs = tf.convert_to_tensor(inputs, dtype=tf.string)
        rank = inputs.shape.rank
        if rank not in (0, 1):
            raise ValueError(
                "`TextPreprocessor` takes a scalar string or a batch `(batch,)` "
                f"of strings. Received: inputs.shape={inputs.shape}"
            )
        batch = inputs[tf.newaxis] if rank == 0 else inputs
        token_ids, padding_mask = self.packer(self.tokenizer(batch))
        token_ids = tf.cast(token_ids, tf.int32)
        padding_mask = tf.cast(padding_mask, tf.bool)
        if rank == 0:
            token_ids, padding_mask = token_ids[0], padding_mask[0]
        return {"token_ids": token_ids, "padding_mask": padding_mask}

    def call(self, inputs):
        if not tf.executing_eagerly():
            return self._preprocess(inputs)
        inputs = tf.convert_to_tensor(inputs, dtype=tf.string)
        rank = inputs.shape.rank
        if rank not in self._eager.functions:
            # One trace per rank, whatever the batch size.
            spec = tf.TensorSpec([None] * rank, tf.string)
            self._eager.functions[rank] = tf.function(
                self._preprocess, input_signature=[spec], autograph=False
            )
        return self._eager.functions[rank](inputs)

    def compute_output_spec(self, inputs):
        shape = tuple(inputs.shape) + (self.sequence_length,)
        return {
            "token_ids": keras.KerasTensor(shape, dtype="int32"),
            "padding_mask": keras.KerasTensor(shape, dtype="bool"),
        }

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "tokenizer": keras.layers.serialize(self.tokenizer),
                "sequence_length": self.sequence_length,
                "start_token_id": self.start_token_id,
                "end_token_id": self.end_token_id,
                "pad_token_id": self.pad_token_id,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("tokenizer"), dict):
            # The vocabulary is not in the config: `.keras` loading restores
            # it from the archive's assets after construction.
            config["tokenizer"] = keras.layers.deserialize(config["tokenizer"])
        return cls(**config)


def text_preprocessor_from_vocabulary(vocabulary, sequence_length, **kwargs):
    """A `TextPreprocessor` over the mmkeras WordPiece tokenizer of `vocabulary`.

    Ids are those the captioner's tokenizer gives, with no start or end token
    and padding id 0 (`[PAD]`, first in every mmkeras vocabulary).

    Args:
        vocabulary: list of tokens or a vocabulary file, as for
            `mmkeras.data.tokenizer.build_tokenizer`.
        sequence_length: int, output length.
        **kwargs: base layer arguments.
    """
    tokenizer = build_tokenizer(vocabulary)
    pad = special_token_ids(tokenizer)["pad"]
    return TextPreprocessor(tokenizer, sequence_length, pad_token_id=pad, **kwargs)


def _special_id(tokenizer, *names):
    for name in names:
        value = getattr(tokenizer, f"{name}_id", None)
        if value is not None:
            return int(value)
    return None


def text_preprocessor_from_preset(preset_dir, sequence_length, **kwargs):
    """A `TextPreprocessor` with the tokenizer of a keras-hub preset folder.

    Sequences are packed as the preset's model was trained: its `cls`/`sep`
    tokens (or `start`/`end` tokens) around the text, padded with its pad
    token (id 0 if the tokenizer has none).

    Args:
        preset_dir: path of a local keras-hub (or Hugging Face) preset folder.
        sequence_length: int, output length including the special tokens.
        **kwargs: base layer arguments.

    Raises:
        PresetError (a `FileNotFoundError` and a `ValueError`): the folder, or
            a file the tokenizer needs in it, is missing, or it holds no
            tokenizer keras-hub can load. Nothing is ever downloaded in its place.
    """
    check_preset(preset_dir)
    try:
        tokenizer = keras_hub.models.Tokenizer.from_preset(preset_dir)
    except FileNotFoundError as error:
        raise PresetError(
            f"The preset folder {preset_dir} is incomplete: {error} "
            f"Received: preset_dir={preset_dir}"
        ) from error
    except (OSError, ValueError, KeyError, TypeError) as error:
        # E.g. an image model's preset given to a text encoder: keras-hub has
        # no tokenizer for its backbone.
        raise PresetError(
            f"The preset {preset_dir} has no tokenizer keras-hub can load ({error}). A text encoder's "
            f"preset must be a text model's (e.g. minilm_l6). Received: preset_dir={preset_dir}"
        ) from error
    pad = _special_id(tokenizer, "pad_token")
    return TextPreprocessor(
        tokenizer,
        sequence_length,
        start_token_id=_special_id(tokenizer, "cls_token", "start_token"),
        end_token_id=_special_id(tokenizer, "sep_token", "end_token"),
        pad_token_id=0 if pad is None else pad,
        **kwargs,
    )
