"""Ensembles of trained captioners: one `ImageCaptioner` whose decoding averages word probabilities.

At every decoding step each member predicts the next word from its own
image tokens and its own decoder state; the ensemble's distribution is the
weighted mean of the members' probabilities (Sutskever et al., 2014; the
captioners of Vinyals et al., 2015, and most later ones report ensembles
this way). The ensemble is an ordinary `ImageCaptioner` built from two
layers, `EnsembleImageEncoder` and `EnsembleTextDecoder`, so greedy and beam
search, `no_repeat_ngram_size`, the length penalty, attention read-outs,
`.keras` saving and the SavedModel export all work unchanged.
"""

import keras
import numpy as np
from keras import ops

from mmkeras.models.image_captioner import ImageCaptioner
from mmkeras.models.shared_backbones import check_feature_sources, reusing_backbone, shared_feature_sources


@keras.saving.register_keras_serializable(package="mmkeras")
class EnsembleImageEncoder(keras.layers.Layer):
    """The image encoders of an ensemble's members, their tokens side by side.

    Returns `{"tokens", "pooled"}` like `ImageEncoder`, the members' tokens
    concatenated on the feature axis (`hidden_dim` is the sum of theirs);
    `EnsembleTextDecoder` splits them back. Members must give the same
    number of tokens.

    Args:
        encoders: list of `ImageEncoder`s, one per member.
        feature_sources: optional list, for each member the index of the
            member whose `features(images)` it reuses (see
            `shared_feature_sources`); default: every member its own. A
            member that reuses another's keras-hub backbone is held as a
            copy around that backbone layer, so the ensemble's `.keras` file
            and SavedModel store the backbone once.
        **kwargs: base layer arguments.
    """

    def __init__(self, encoders, feature_sources=None, **kwargs):
        super().__init__(**kwargs)
        encoders = list(encoders)
        if len(encoders) < 2:
            raise ValueError(f"An ensemble needs at least 2 image encoders. Received: {len(encoders)}")
        self.feature_sources = check_feature_sources(feature_sources, len(encoders))
        self.encoders = [reusing_backbone(e, encoders[s]) for e, s in zip(encoders, self.feature_sources)]
        self.hidden_dims = [int(e.hidden_dim) for e in self.encoders]
        self.hidden_dim = sum(self.hidden_dims)

    def build(self, images_shape):
        for encoder in self.encoders:
            if not encoder.built:
                encoder.build(images_shape)
        counts = {e.compute_output_shape(images_shape)["tokens"][1] for e in self.encoders}
        if len(counts) > 1:
            raise ValueError(f"Ensemble members must give the same number of image tokens. Received: {sorted(counts)}")
        self.built = True

    def encode_inputs(self, inputs, training=None):
        if "image_features" in inputs:
            raise ValueError("An ensemble encodes images (`\"images\"`), not cached features: train its members, "
                             "then combine them.")
        return self(inputs["images"], training=training)

    def call(self, images, training=None):
        features, outputs = {}, []
        for encoder, source in zip(self.encoders, self.feature_sources):
            if source not in features:
                features[source] = self.encoders[source].features(images, training=training)
            outputs.append(encoder.encode_features(features[source], training=training))
        return {key: ops.concatenate([o[key] for o in outputs], axis=-1) for key in ("tokens", "pooled")}

    def features_shape(self, images_shape):
        """Member 0's feature grid (every member gives as many tokens): where attention maps are drawn."""
        return self.encoders[0].features_shape(images_shape)

    def compute_output_shape(self, images_shape):
        tokens = self.encoders[0].compute_output_shape(images_shape)["tokens"]
        return {"tokens": tokens[:2] + (self.hidden_dim,), "pooled": (images_shape[0], self.hidden_dim)}

    def get_config(self):
        config = super().get_config()
        config.update({
            "encoders": [keras.layers.serialize(e) for e in self.encoders],
            "feature_sources": self.feature_sources,
        })
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["encoders"] = [keras.layers.deserialize(e) for e in config["encoders"]]
        return cls(**config)


@keras.saving.register_keras_serializable(package="mmkeras")
class EnsembleTextDecoder(keras.layers.Layer):
    """The text decoders of an ensemble's members; returns the log of their mixed probabilities.

    Has `TextDecoder`'s interface (`call`, `initial_cache`, `image_cache`,
    `call_with_cache`), so the captioner's search loops run it as they run
    one decoder. The "logits" it returns are `log(sum_m w_m softmax(l_m))`:
    normalised log-probabilities, which softmax, greedy and beam search
    treat as logits. The cache is the tuple of the members' caches; hidden
    states are concatenated; attention scores are the members' blocks in
    turn (member 0's first).

    Args:
        decoders: list of `TextDecoder`s with the same vocabulary size and
            sequence length.
        weights: optional member weights (>= 0, not all 0; normalised);
            default: equal.
        **kwargs: base layer arguments.
    """

    def __init__(self, decoders, weights=None, **kwargs):
        super().__init__(**kwargs)
        self.decoders = list(decoders)
        if len(self.decoders) < 2:
            raise ValueError(f"An ensemble needs at least 2 text decoders. Received: {len(self.decoders)}")
        for attribute in ("vocabulary_size", "sequence_length"):
            values = [getattr(d, attribute) for d in self.decoders]
            if len(set(values)) > 1:
                raise ValueError(f"Ensemble members must have the same {attribute}. Received: {values}")
        self.vocabulary_size = self.decoders[0].vocabulary_size
        self.sequence_length = self.decoders[0].sequence_length
        self.hidden_dims = [int(d.hidden_dim) for d in self.decoders]
        self.hidden_dim = sum(self.hidden_dims)
        self.member_weights = normalized_weights(weights, len(self.decoders))

    def build(self, token_ids_shape, image_tokens_shape=None):
        for decoder, dim in zip(self.decoders, self.hidden_dims):
            if not decoder.built:
                member_shape = None if image_tokens_shape is None else tuple(image_tokens_shape[:-1]) + (dim,)
                decoder.build(token_ids_shape, member_shape)
        self.built = True

    def split_image_tokens(self, image_tokens):
        """The members' own image tokens from `EnsembleImageEncoder`'s concatenation."""
        return ops.split(image_tokens, np.cumsum(self.hidden_dims)[:-1].tolist(), axis=-1)

    def mix(self, member_logits):
        """`log(sum_m w_m softmax(logits_m))` over the last axis, in float32."""
        log_probs = ops.stack([ops.log_softmax(ops.cast(l, "float32"), axis=-1) for l in member_logits])
        log_weights = ops.reshape(ops.log(ops.convert_to_tensor(self.member_weights, "float32")),
                                  (-1,) + (1,) * (len(log_probs.shape) - 1))
        return ops.logsumexp(log_probs + log_weights, axis=0)

    def call(self, token_ids, image_tokens, padding_mask=None, return_attention_scores=False, training=None):
        logits, scores = [], []
        for decoder, tokens in zip(self.decoders, self.split_image_tokens(image_tokens)):
            outputs = decoder(token_ids, tokens, padding_mask=padding_mask,
                              return_attention_scores=return_attention_scores, training=training)
            if return_attention_scores:
                outputs, member_scores = outputs
                scores.extend(member_scores)
            logits.append(outputs)
        if return_attention_scores:
            return self.mix(logits), scores
        return self.mix(logits)

    def initial_cache(self, batch_size, max_length):
        return tuple(d.initial_cache(batch_size, max_length) for d in self.decoders)

    def image_cache(self, image_tokens):
        return tuple(d.image_cache(t) for d, t in zip(self.decoders, self.split_image_tokens(image_tokens)))

    def call_with_cache(self, token_ids, cache, cache_update_index, image_cache, return_attention_scores=False):
        logits, hidden, caches, scores = [], [], [], []
        for decoder, member_cache, member_image_cache in zip(self.decoders, cache, image_cache):
            outputs = decoder.call_with_cache(token_ids, member_cache, cache_update_index, member_image_cache,
                                              return_attention_scores=return_attention_scores)
            logits.append(outputs[0])
            hidden.append(outputs[1])
            caches.append(outputs[2])
            if return_attention_scores:
                scores.extend(outputs[3])
        outputs = (self.mix(logits), ops.concatenate(hidden, axis=-1), tuple(caches))
        return outputs + (scores,) if return_attention_scores else outputs

    def compute_output_shape(self, token_ids_shape, image_tokens_shape=None):
        return tuple(token_ids_shape) + (self.vocabulary_size,)

    def get_config(self):
        config = super().get_config()
        config.update({
            "decoders": [keras.layers.serialize(d) for d in self.decoders],
            "weights": self.member_weights,
        })
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["decoders"] = [keras.layers.deserialize(d) for d in config["decoders"]]
        return cls(**config)


def normalized_weights(weights, count):
    """`weights` (or equal ones) as floats summing to 1; `ValueError` naming what is wrong."""
    if weights is None:
        return [1.0 / count] * count
    weights = [float(w) for w in weights]
    if len(weights) != count:
        raise ValueError(f"Give one weight per member: {count} members, {len(weights)} weights ({weights}).")
    if any(not np.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"Member weights must be finite, >= 0 and not all 0. Received: {weights}")
    return [w / sum(weights) for w in weights]


def build_captioner_ensemble(captioners, weights=None, name="captioner_ensemble"):
    """One `ImageCaptioner` that decodes with the mean of `captioners`' word probabilities.

    Members must share what decoding and the export read from the captioner:
    the vocabulary (the same `vocabulary.txt`: members trained on the same
    data with the same vocabulary settings), the special token ids, the
    image size, the sequence length and the number of image tokens. They may
    differ in anything else (seed, widths, depth, backbone, fine-tuning).
    Members whose image backbones are identical (the same frozen preset)
    share one backbone pass.

    Args:
        captioners: list of >= 2 trained `ImageCaptioner`s.
        weights: optional member weights (>= 0, not all 0); default: equal.
        name: the ensemble's name.

    Returns:
        A built `ImageCaptioner` holding the members' layers (not copies),
        except the image encoders of members that share another's backbone:
        copies around that one backbone layer, with their own weights.
    """
    captioners = list(captioners)
    if len(captioners) < 2:
        raise ValueError(f"An ensemble needs at least 2 captioners. Received: {len(captioners)}")
    for i, captioner in enumerate(captioners):
        if not isinstance(captioner, ImageCaptioner):
            raise ValueError(f"Member {i} is a {type(captioner).__name__}, not an ImageCaptioner.")
        if isinstance(captioner.text_decoder, EnsembleTextDecoder):
            raise ValueError(f"Member {i} is an ensemble already: combine the captioners it was built from "
                             "instead.")
    first = captioners[0]
    vocabulary = first.tokenizer.get_vocabulary() if first.tokenizer is not None else None
    for i, captioner in enumerate(captioners[1:], start=1):
        for attribute in ("image_size", "start_token_id", "end_token_id", "pad_token_id"):
            if getattr(captioner, attribute) != getattr(first, attribute):
                raise ValueError(
                    f"Ensemble members must have the same {attribute}: member 0 has {getattr(first, attribute)}, "
                    f"member {i} has {getattr(captioner, attribute)}."
                )
        other = captioner.tokenizer.get_vocabulary() if captioner.tokenizer is not None else None
        if other != vocabulary:
            raise ValueError(
                f"Ensemble members must share one vocabulary (train them on the same data with the same "
                f"vocabulary settings): member {i}'s differs from member 0's "
                f"({len(other or [])} against {len(vocabulary or [])} tokens)."
            )
    encoders = [c.image_encoder for c in captioners]
    image_encoder = EnsembleImageEncoder(encoders, feature_sources=shared_feature_sources(encoders),
                                         name="image_encoder")
    text_decoder = EnsembleTextDecoder([c.text_decoder for c in captioners], weights=weights, name="text_decoder")
    ensemble = ImageCaptioner(
        image_encoder, text_decoder, tokenizer=first.tokenizer, image_size=first.image_size,
        start_token_id=first.start_token_id, end_token_id=first.end_token_id, pad_token_id=first.pad_token_id,
        name=name,
    )
    ensemble.build({"images": (None, first.image_size, first.image_size, 3),
                    "token_ids": (None, text_decoder.sequence_length)})
    return ensemble
