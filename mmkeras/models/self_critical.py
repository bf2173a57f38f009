"""Self-critical sequence training of an `ImageCaptioner`: CIDEr-D as the reward.

Teacher forcing maximises the likelihood of reference captions one token at
a time; the captions are then judged by CIDEr-D of whole generated
sequences. Self-critical sequence training (Rennie et al., "Self-critical
Sequence Training for Image Captioning", CVPR 2017) closes that gap with
REINFORCE: sample captions from the model, score each against its image's
references, and raise the log-probability of those that beat a baseline.
The baseline here is the mean reward of the other samples of the same image
(Luo, "A Better Variant of Self-Critical Sequence Training", 2020), which
needs no extra greedy decode.

`ImageCaptioner.enable_self_critical` turns it on from a given optimizer
step; its `train_step` is then `self_critical_train_step`, which calls
`self_critical_batch` (in graph), whose output is an ordinary weighted
teacher-forcing batch: the samples as inputs and targets, each token
weighted by its sample's advantage.
"""

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from mmkeras.data.tokenizer import ids_before_end
from mmkeras.metrics.caption_metrics import normalize_caption
from mmkeras.metrics.cider import CIDErScorer
from mmkeras.models.caption_search import search
from mmkeras.models.replica_utils import unscale_for_replicas


class CIDErReward:
    """CIDEr-D of generated token ids against the references of their images.

    Document frequencies come from the references given (the training
    corpus), as in Rennie et al. Token ids become words through the
    captioner's vocabulary (WordPiece continuations `##x` are joined to the
    piece before them), stopping at the end token; words and references are
    normalised with `normalize_caption`, as the evaluation does.

    Args:
        references: list (one entry per image, in the order of the training
            data's `image_index`) of lists of raw reference captions.
        vocabulary: list of str, token id -> token.
        end_token_id: int.
        pad_token_id: int.
        start_token_id: int.

    Call arguments:
        image_index: int array `(n,)`, the image of each caption.
        token_ids: int array `(n, length)`, generated ids (start token first).

    Returns:
        float32 array `(n,)`.

    Example:

    >>> reward = CIDErReward([["a dog runs"], ["a cat sleeps"]],
    ...                      ["[PAD]", "[UNK]", "[START]", "[END]", "a", "dog", "runs", "cat", "sleeps"],
    ...                      end_token_id=3, pad_token_id=0, start_token_id=2)
    >>> [round(float(r), 3) for r in reward(np.array([0, 0]), np.array([[2, 4, 5, 6, 3], [2, 4, 7, 8, 3]]))]
    [7.5, 0.0]
    """

    def __init__(self, references, vocabulary, end_token_id, pad_token_id, start_token_id):
        if len(references) < 2:
            # CIDEr's idf over a one-image corpus is 0 everywhere.
            raise ValueError(
                f"The reward needs the references of at least 2 images. Received: {len(references)}"
            )
        self.scorer = CIDErScorer(
            [[normalize_caption(r) for r in image_references] for image_references in references]
        )
        self.vocabulary = np.asarray(vocabulary, dtype=object)
        self.end_token_id = end_token_id
        self.skip = {pad_token_id, start_token_id}

    def captions(self, token_ids):
        """The normalised caption of each row of `token_ids`."""
        rows = ids_before_end(token_ids, self.end_token_id, self.skip)
        return [normalize_caption(" ".join(self.vocabulary[row]).replace(" ##", "")) for row in rows]

    def __call__(self, image_index, token_ids):
        return self.scorer.score(self.captions(token_ids), np.asarray(image_index)).astype(np.float32)


def self_critical_batch(captioner, inputs, image_index, reward, num_samples, step):
    """Samples captions and turns them into an advantage-weighted training batch.

    The first `batch // num_samples` images of the batch get `num_samples`
    captions each, drawn from the model's softmax (constrained as in
    generation: no padding, start or `[UNK]` tokens), so a step trains on
    about as many sequences as a teacher-forcing step. Draws are a function
    of `step`, so a resumed run repeats them.

    Args:
        captioner: the `ImageCaptioner`.
        inputs: the batch's input dict (`"images"` or `"image_features"`,
            plus teacher-forcing `"token_ids"` and `"padding_mask"`).
        image_index: int `(batch,)`, each image's index for `reward`.
        reward: `(image_index, token_ids) -> rewards`, numpy in and out.
        num_samples: int >= 2, captions per image.
        step: int scalar tensor, the optimizer step.

    Returns:
        `(inputs, targets, weights, counted, mean_reward)`: the sampled
        captions as teacher-forcing `inputs` and `targets` (same length as
        the batch's), per-token `weights` (the sample's advantage on real
        tokens, 0 on padding), `counted` (1.0 on real target tokens) and the
        mean reward of the samples.
    """
    batch = ops.shape(inputs["token_ids"])[0]
    length = inputs["token_ids"].shape[1] or ops.shape(inputs["token_ids"])[1]
    images = ops.maximum(batch // num_samples, 1)
    image_key = "image_features" if "image_features" in inputs else "images"
    chosen = inputs[image_key][:images]
    image_tokens = captioner.image_encoder.encode_inputs({image_key: chosen}, training=False)["tokens"]
    image_tokens = ops.repeat(image_tokens, num_samples, axis=0)

    seed_base = ops.cast(step, "int32")

    def choose(logits, index):
        # Stateless: the same step draws the same captions (resume, replicas).
        seed = ops.stack([seed_base, ops.cast(index, "int32")])
        return tf.random.stateless_categorical(ops.cast(logits, "float32"), 1, seed=seed)[:, 0]

    max_length = min(captioner.text_decoder.sequence_length, length + 1)
    samples = search(
        captioner.text_decoder, image_tokens, captioner.special_token_ids, "greedy", max_length, choose=choose
    )["token_ids"]
    samples = ops.stop_gradient(samples)
    # Teacher-forcing layout: inputs are the sample without its last token,
    # targets the sample shifted left; padded to the batch's length.
    padded = ops.pad(samples, [[0, 0], [0, length + 1 - max_length]], constant_values=captioner.pad_token_id)
    token_ids, targets = padded[:, :-1], padded[:, 1:]
    sample_index = ops.repeat(ops.cast(image_index[:images], "int64"), num_samples, axis=0)
    rewards = tf.numpy_function(reward, [sample_index, samples], tf.float32, stateful=False)
    rewards = ops.reshape(rewards, (-1, num_samples))
    # Baseline: the mean reward of the image's other samples.
    baseline = (ops.sum(rewards, axis=1, keepdims=True) - rewards) / (num_samples - 1)
    advantages = ops.reshape(rewards - baseline, (-1, 1))
    counted = ops.cast(ops.not_equal(targets, captioner.pad_token_id), "float32")
    sampled_inputs = {
        image_key: ops.repeat(chosen, num_samples, axis=0),
        "token_ids": token_ids,
        "padding_mask": ops.cast(ops.not_equal(token_ids, captioner.pad_token_id), "int32"),
    }
    return sampled_inputs, targets, advantages * counted, counted, ops.mean(rewards)


def self_critical_train_step(captioner, data, reward, from_step, num_samples):
    """`ImageCaptioner.train_step` with self-critical training enabled.

    Teacher forcing before optimizer step `from_step`, `self_critical_batch`
    from then on (a `cond` on the step counter, so a resumed run continues
    in the right phase); then the usual weighted token loss, gradient and
    update. Metrics: `reward` over self-critical steps, `token_accuracy`
    over teacher-forcing steps.
    """
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    if "image_index" not in x:
        raise ValueError(
            "Self-critical training needs each batch's `x[\"image_index\"]`, the index "
            f"of every image's references in the reward. Received inputs: {sorted(x)}"
        )
    x = dict(x)
    image_index = x.pop("image_index")
    if sample_weight is None:
        sample_weight = ops.cast(ops.not_equal(y, captioner.pad_token_id), "float32")
    if not captioner.built:
        captioner(x, training=False)  # the sampling branch needs built layers
    step = captioner.optimizer.iterations
    active = ops.greater_equal(step, from_step)

    def teacher_forcing():
        return x, y, sample_weight, sample_weight, ops.zeros((), "float32")

    def self_critical():
        inputs, targets, weights, counted, mean_reward = self_critical_batch(
            captioner, x, image_index, reward, num_samples, step
        )
        # The same dtypes as the batch's, as `cond` requires.
        inputs = {k: ops.cast(v, x[k].dtype) for k, v in inputs.items()}
        return inputs, ops.cast(targets, y.dtype), weights, ops.cast(counted, sample_weight.dtype), mean_reward

    inputs, targets, weights, counted, mean_reward = ops.cond(active, self_critical, teacher_forcing)
    with tf.GradientTape() as tape:
        y_pred = captioner(inputs, training=True)
        loss = captioner._token_loss(targets, y_pred, weights, counted)
        # As Keras' own train_step (its loss tracker is the `loss` metric).
        captioner._loss_tracker.update_state(unscale_for_replicas(loss), sample_weight=ops.shape(targets)[0])
        scaled_loss = captioner.optimizer.scale_loss(loss)
    variables = captioner.trainable_weights
    captioner.optimizer.apply_gradients(zip(tape.gradient(scaled_loss, variables), variables))
    active = ops.cast(active, "float32")
    captioner.reward_tracker.update_state(mean_reward, sample_weight=active)
    # Token accuracy is of teacher forcing on references, not of samples.
    return captioner.compute_metrics(inputs, targets, y_pred, sample_weight=counted * (1.0 - active))
