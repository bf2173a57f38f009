"""Ensembles of trained classifiers: majority vote, weighted average, stacking."""

import keras
import numpy as np
from keras import ops

from mmkeras.models.shared_backbones import (
    check_feature_sources,
    copy_with,
    preprocessing_key,
    reusing_backbone,
    shared_feature_sources,
    tower_features,
)

ENSEMBLE_METHODS = ("vote", "average", "stacking")


@keras.saving.register_keras_serializable(package="mmkeras")
class ClassifierEnsemble(keras.Model):
    """Combines trained `FusionClassifier`s (any fusions) into one classifier.

    - `vote`: majority voting. Single-label: each member votes for its top
      class; the output "probabilities" are the vote shares, ties broken by
      the members' mean probability. Multi-label: a label is on when most
      members turn it on (vote shares against 0.5).
    - `average`: weighted average of the members' probabilities (`weights`,
      normalised; equal by default).
    - `stacking` (Wolpert, 1992): a meta-classifier (a dense softmax or
      sigmoid layer over the members' concatenated probabilities) trained
      with `fit_stacking` on predictions the members did not train on
      (held-out or out-of-fold).

    Members keep their own preprocessing: `probabilities_from_raw` runs each
    member's image decoding and tokenizer, so members with different image
    sizes or vocabularies combine too, and the export takes raw inputs.
    `call` feeds one preprocessed input dict to every member, for members
    that share preprocessing (same data and config, different fusion).

    Members over one frozen preset (e.g. several fusions over a frozen
    EfficientNet and MiniLM) have identical image or text towers: the
    ensemble runs each distinct tower once per input (and each distinct
    preprocessing once) and holds its backbone once, in memory, in the
    `.keras` file and in the export. For that it keeps copies of such
    members around the first one's backbone (same weights, same outputs);
    the members passed in are left as they are.

    Args:
        members: list of trained classifiers with the same `label_names` and
            `multi_label`.
        method: one of `ENSEMBLE_METHODS`.
        weights: optional member weights for `average` (>= 0, not all 0).
        image_feature_sources / text_feature_sources: optional lists, for
            each member the index of the member whose image (text) tower
            computes its features (`shared_feature_sources`); default:
            found by comparing the members' configs and weights, so pass
            trained (built) members.
        **kwargs: base model arguments.

    Call arguments:
        inputs: the members' input dict (`images`, `token_ids`,
            `padding_mask`).

    Returns:
        A dict with `"probabilities"` `(batch, num_classes)`.

    Example:
    >>> # members = [keras.saving.load_model(p) for p in paths]
    >>> # ensemble = ClassifierEnsemble(members, method="average")
    >>> # ensemble.probabilities_from_raw(jpeg_bytes, questions)
    """

    def __init__(self, members, method="average", weights=None, image_feature_sources=None,
                 text_feature_sources=None, **kwargs):
        super().__init__(**kwargs)
        members = [keras.layers.deserialize(m) if isinstance(m, dict) else m for m in members]
        if len(members) < 2:
            raise ValueError(f"An ensemble needs at least 2 members. Received: {len(members)} members")
        if method not in ENSEMBLE_METHODS:
            raise ValueError(f"`method` must be one of {', '.join(ENSEMBLE_METHODS)}. Received: method={method!r}")
        first = members[0]
        for i, member in enumerate(members[1:], start=1):
            if member.label_names != first.label_names or member.multi_label != first.multi_label:
                raise ValueError(
                    "Ensemble members must predict the same labels the same way. "
                    f"Received: member 0 labels {first.label_names} (multi_label={first.multi_label}), "
                    f"member {i} labels {member.label_names} (multi_label={member.multi_label})"
                )
        if weights is not None:
            weights = [float(w) for w in weights]
            if len(weights) != len(members) or min(weights) < 0 or sum(weights) <= 0:
                raise ValueError(
                    f"`weights` must be {len(members)} non-negative numbers, not all 0. Received: weights={weights}"
                )
        if image_feature_sources is None:
            image_feature_sources = shared_feature_sources([m.image_encoder for m in members])
        if text_feature_sources is None:
            text_feature_sources = shared_feature_sources([m.text_encoder for m in members])
        self.image_feature_sources = check_feature_sources(
            image_feature_sources, len(members), "image_feature_sources")
        self.text_feature_sources = check_feature_sources(text_feature_sources, len(members), "text_feature_sources")
        members = [
            _reusing_backbones(member, members[image_source].image_encoder, members[text_source].text_encoder)
            for member, image_source, text_source in zip(
                members, self.image_feature_sources, self.text_feature_sources)
        ]
        self.members = members
        self.method = method
        self.weights_list = weights
        self.label_names = first.label_names
        self.num_classes = first.num_classes
        self.multi_label = first.multi_label
        for member in members:
            member.trainable = False
        self.meta = None
        if method == "stacking":
            self.meta = keras.layers.Dense(self.num_classes, name="meta_classifier")
        # The members are trained and the meta-classifier's input size is
        # known: built now, so that an ensemble exports and saves its
        # meta-classifier before it is ever called.
        self.build()

    def build(self, inputs_shape=None):
        if self.meta is not None and not self.meta.built:
            self.meta.build((None, len(self.members) * self.num_classes))
        self.built = True

    def get_build_config(self):
        # Not empty: Keras skips `build_from_config` for an empty build config,
        # and a loaded ensemble would then build a fresh, random meta-classifier
        # after its saved weights were (silently) not loaded.
        return {"meta_input_dim": len(self.members) * self.num_classes}

    def build_from_config(self, config):
        self.build()

    def get_config(self):
        config = super().get_config()
        members = [keras.layers.serialize(m) for m in self.members]
        # Members may share a sublayer (e.g. one text preprocessor). Saving
        # marks the later copies with Keras' `shared_object_id`, but the first
        # member's config was copied before the mark was made; without it, the
        # loaded members would get separate objects, and the `.keras` file
        # holds the state of only one.
        for member, attribute, first, first_attribute in _shared_sublayers(self.members):
            later = members[member]["config"].get(attribute)
            earlier = members[first]["config"].get(first_attribute)
            if isinstance(later, dict) and isinstance(earlier, dict) and "shared_object_id" in later:
                earlier["shared_object_id"] = later["shared_object_id"]
        config.update({
            "members": members, "method": self.method, "weights": self.weights_list,
            "image_feature_sources": self.image_feature_sources, "text_feature_sources": self.text_feature_sources,
        })
        return config

    def combine(self, member_probabilities):
        """`[ (batch, C) per member ]` -> `(batch, C)` ensemble probabilities."""
        stacked = ops.stack(member_probabilities, axis=1)  # (batch, members, C)
        if self.method == "average":
            w = np.ones(len(self.members)) if self.weights_list is None else np.asarray(self.weights_list)
            w = ops.cast(w / w.sum(), stacked.dtype)
            return ops.einsum("bmc,m->bc", stacked, w)
        if self.method == "vote":
            mean = ops.mean(stacked, axis=1)
            if self.multi_label:
                votes = ops.cast(stacked > 0.5, stacked.dtype)
                return ops.mean(votes, axis=1)
            votes = ops.one_hot(ops.argmax(stacked, axis=-1), self.num_classes, dtype=stacked.dtype)
            shares = ops.mean(votes, axis=1)
            # A tie goes to the class with the higher mean probability; the
            # nudge is far below one vote (1 / members).
            return shares + mean * ops.cast(1e-3 / len(self.members), stacked.dtype)
        features = ops.reshape(stacked, (ops.shape(stacked)[0], len(self.members) * self.num_classes))
        logits = self.meta(features)
        return ops.sigmoid(logits) if self.multi_label else ops.softmax(logits, axis=-1)

    def call(self, inputs, training=None):
        return {"probabilities": self.combine(self._member_probabilities([inputs] * len(self.members)))}

    def probabilities_from_raw(self, images, texts):
        """Probabilities of encoded images and strings, each member with its own preprocessing."""
        preprocessed, member_inputs = {}, []
        for member in self.members:
            # Members with the same image size and text preprocessing share one pass of it.
            key = preprocessing_key(member)
            if key not in preprocessed:
                preprocessed[key] = member.preprocess(images, texts)
            member_inputs.append(preprocessed[key])
        return self.combine(self._member_probabilities(member_inputs))

    def _member_probabilities(self, member_inputs):
        """Each member's probabilities of its input dict, each distinct tower run once per distinct input."""
        features = tower_features(self.members, member_inputs, self.image_feature_sources, self.text_feature_sources)
        return [m.probabilities(m({**inputs, **f}, training=False)["logits"])
                for m, inputs, f in zip(self.members, member_inputs, features)]

    def decisions(self, probabilities):
        """Class ids `(batch,)`, or multi-hot int `(batch, C)` (vote shares > 0.5,
        else the members' mean thresholds)."""
        if self.multi_label:
            if self.method == "vote":
                threshold = ops.cast(0.5, probabilities.dtype)
            else:
                # Cast first: the TF backend's `stack` cannot take Keras variables.
                thresholds = [ops.cast(m.thresholds, probabilities.dtype) for m in self.members]
                threshold = ops.mean(ops.stack(thresholds), axis=0)
            return ops.cast(probabilities > threshold, "int64")
        return ops.argmax(probabilities, axis=-1)

    def fit_stacking(self, member_probabilities, targets, epochs=300, learning_rate=0.05, l2=1e-3, seed=0):
        """Trains the meta-classifier on held-out or out-of-fold member predictions.

        Args:
            member_probabilities: list (one per member) of `(n, C)` arrays,
                predicted on examples the members did not train on.
            targets: class ids `(n,)`, or multi-hot `(n, C)`.

        Returns:
            The meta-classifier's final training loss.
        """
        if self.method != "stacking":
            raise ValueError(f"fit_stacking needs method='stacking'. Received: method={self.method!r}")
        if len(member_probabilities) != len(self.members):
            raise ValueError(
                f"Pass one probability array per member ({len(self.members)}). "
                f"Received: {len(member_probabilities)}"
            )
        keras.utils.set_random_seed(seed)
        features = np.concatenate([np.asarray(p, "float32") for p in member_probabilities], axis=1)
        targets = np.asarray(targets)
        inputs = keras.Input((features.shape[1],))
        # The kernel exists (the ensemble is built): the layer's
        # `kernel_regularizer` attribute alone would no longer reach it.
        self.meta.kernel.regularizer = keras.regularizers.L2(l2)
        trainer = keras.Model(inputs, self.meta(inputs))
        trainer.compile(
            optimizer=keras.optimizers.Adam(learning_rate),
            loss=(keras.losses.BinaryCrossentropy(from_logits=True) if self.multi_label
                  else keras.losses.SparseCategoricalCrossentropy(from_logits=True)),
        )
        # `epochs` full-batch steps in ONE Keras epoch: the same updates as
        # `fit(..., epochs=epochs)`, without Keras' per-epoch overhead
        # (~80 ms an epoch on 2 CPU cores: 300 epochs took ~25 s).
        trainer.fit(_RepeatedBatch(features, targets, epochs), epochs=1, verbose=0)
        return float(trainer.evaluate(features, targets, batch_size=len(features), verbose=0))


def _reusing_backbones(member, image_source, text_source):
    """`member`, or a copy of it whose encoders run the backbones of `image_source` / `text_source`.

    The copy has `member`'s weights and computes what it does (the sources'
    features equal `member`'s own: `shared_feature_sources` checked).
    """
    image_encoder = reusing_backbone(member.image_encoder, image_source)
    text_encoder = reusing_backbone(member.text_encoder, text_source)
    if image_encoder is member.image_encoder and text_encoder is member.text_encoder:
        return member
    return copy_with(member, image_encoder=image_encoder, text_encoder=text_encoder,
                     text_preprocessor=member.text_preprocessor)


def _shared_sublayers(members):
    """`[[member, attribute, earlier member, its attribute], ...]` for every layer
    attribute of a member that is the same object as one of an earlier member.

    Assumes, as `FusionClassifier` does, that a sublayer's config key is its
    attribute name.
    """
    first_seen = {}
    shared = []
    for index, member in enumerate(members):
        for attribute, value in sorted(vars(member).items()):
            if attribute.startswith("_") or not isinstance(value, keras.layers.Layer):
                continue
            if id(value) in first_seen and first_seen[id(value)][0] != index:
                shared.append([index, attribute, *first_seen[id(value)]])
            else:
                first_seen.setdefault(id(value), (index, attribute))
    return shared


class _RepeatedBatch(keras.utils.PyDataset):
    """The whole `(features, targets)` as one batch, `steps` times."""

    def __init__(self, features, targets, steps):
        super().__init__()
        self.features, self.targets, self.steps = features, targets, steps

    def __len__(self):
        return self.steps

    def __getitem__(self, index):
        return self.features, self.targets
