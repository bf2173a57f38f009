"""Greedy and beam search over an `ImageCaptioner`'s decoder, as graph-friendly loops.

`ImageCaptioner.generate_tokens` hands them its decoder step and its logit
constraints. Both work on the fixed-length token buffer of
`generation_constraints`: `prompt` `(rows, max_length)` with the start token
at position 0, filled in place at `index`, padded after the end token.
`decoder_logits(prompt, cache, index)` returns `(logits, hidden, cache)` of
the token at `index`; `constrain(values, prompt, index)` masks what may not
be generated there.
"""

from keras import ops, tree

from mmkeras.models.generation_constraints import generated_lengths
from mmkeras.models.generation_constraints import length_normalized


def finished_rows(prompt, index, end_token_id, pad_token_id):
    """Bool `(rows,)`: rows whose last token (at `index - 1`) ended the caption or pads it."""
    previous = ops.take(prompt, index - 1, axis=1)
    return ops.logical_or(ops.equal(previous, end_token_id), ops.equal(previous, pad_token_id))


def greedy_search(decoder_logits, constrain, prompt, cache, length_penalty, end_token_id, pad_token_id,
                  choose=None):
    """Greedy decoding that scores the caption while it generates it.

    keras-hub's `GreedySampler` returns the token ids only, so their
    scores took a second, teacher-forced decoder pass over the caption.
    Here each step adds the log-probability of the token it picks, from
    the logits it picks it with: the score that
    `ImageCaptioner._sequence_scores` defines, without the pass (about a fifth of a cached greedy call at batch 64;
    `benchmarks/caption_speed.py` times it). The token is the argmax of
    the constrained logits, as the sampler's; `choose(logits, index)`, given,
    picks it instead (e.g. a draw from the softmax: the samples of
    self-critical training). Returns `(token_ids, scores)`.
    """
    rows, max_length = ops.shape(prompt)[0], ops.shape(prompt)[1]

    def finished(prompt, index):
        return finished_rows(prompt, index, end_token_id, pad_token_id)

    def cond(prompt, cache, index, total, count):
        return ops.logical_not(ops.all(finished(prompt, index)))

    def body(prompt, cache, index, total, count):
        logits, _, cache = decoder_logits(prompt, cache, index)
        allowed = constrain(logits, prompt, index)
        picked_ids = ops.argmax(allowed, axis=-1) if choose is None else choose(allowed, index)
        tokens = ops.cast(picked_ids, prompt.dtype)
        # The decoder's own log-probabilities (constraints not renormalised);
        # tokens after the end token do not count.
        log_probs = ops.log_softmax(ops.cast(logits, "float32"), axis=-1)
        picked = ops.take_along_axis(log_probs, ops.cast(tokens, "int32")[:, None], axis=1)[:, 0]
        live = ops.logical_not(finished(prompt, index))
        total = total + ops.where(live, picked, 0.0)
        count = count + ops.cast(live, "float32")
        prompt = ops.slice_update(prompt, [0, index], tokens[:, None])
        return prompt, cache, index + 1, total, count

    zeros = ops.zeros((rows,), "float32")
    prompt, _, _, total, count = ops.while_loop(
        cond,
        body,
        (prompt, cache, ops.convert_to_tensor(1, "int32"), zeros, zeros),
        maximum_iterations=max_length - 1,
    )
    return prompt, length_normalized(total, count, length_penalty)


def beam_search(decoder_logits, constrain, prompt, cache, num_beams, length_penalty, end_token_id, pad_token_id):
    """Beam search over `(batch * num_beams, length)` prompts.

    keras-hub's `BeamSampler` reorders beams with `take_along_axis`, which
    the TensorFlow backend implements by broadcasting indices to the full
    cache shape: 20x slower than greedy here. Reordering whole rows with
    one `take` (a gather) keeps beam search within a few times greedy.

    A beam's score is the sum of the model's log-probabilities of its
    tokens up to and including the end token (constraints mask tokens out
    but do not renormalise, as in Hugging Face), divided by its length **
    `length_penalty`. Finished beams keep their slot (they continue with
    padding at log-probability 0) and compete with the live candidates of
    each step under that same score, live ones at their current length:
    with a length penalty, comparing raw sums instead would let short
    finished captions crowd out longer ones that the final ranking
    prefers. Returns `(token_ids, scores)` of the best beam of each image.
    """
    rows, max_length = ops.shape(prompt)[0], ops.shape(prompt)[1]
    batch = rows // num_beams
    # Only the first beam is live at the start, or all beams would be equal.
    first = ops.convert_to_tensor([0.0] + [-1e9] * (num_beams - 1), "float32")
    log_probs = ops.reshape(ops.tile(first[None, :], (batch, 1)), (-1,))

    def cond(prompt, cache, index, log_probs):
        return ops.logical_not(ops.all(finished_rows(prompt, index, end_token_id, pad_token_id)))

    def body(prompt, cache, index, log_probs):
        logits, _, cache = decoder_logits(prompt, cache, index)
        vocabulary = ops.shape(logits)[-1]
        step = constrain(ops.log_softmax(ops.cast(logits, "float32"), axis=-1), prompt, index)
        candidates = step + log_probs[:, None]
        flat = ops.reshape(candidates, (batch, num_beams * vocabulary))
        if length_penalty == 0:
            top_scores, top_indices = ops.top_k(flat, num_beams)
        else:
            finished = finished_rows(prompt, index, end_token_id, pad_token_id)
            # A live beam's candidates hold `index` generated tokens.
            lengths = ops.where(
                finished,
                generated_lengths(prompt, pad_token_id),
                ops.cast(index, "float32"),
            )
            ranked = length_normalized(candidates, lengths[:, None], length_penalty)
            _, top_indices = ops.top_k(ops.reshape(ranked, ops.shape(flat)), num_beams)
            top_scores = ops.take_along_axis(flat, top_indices, axis=1)
        source_beam = top_indices // vocabulary
        tokens = ops.cast(top_indices % vocabulary, prompt.dtype)
        source = ops.reshape(ops.arange(batch)[:, None] * num_beams + source_beam, (-1,))
        prompt = ops.take(prompt, source, axis=0)
        cache = tree.map_structure(lambda c: ops.take(c, source, axis=0), cache)
        prompt = ops.slice_update(prompt, [0, index], ops.reshape(tokens, (-1, 1)))
        return prompt, cache, index + 1, ops.reshape(top_scores, (-1,))

    prompt, _, _, log_probs = ops.while_loop(
        cond,
        body,
        (prompt, cache, ops.convert_to_tensor(1, "int32"), log_probs),
        maximum_iterations=max_length - 1,
    )
    scores = length_normalized(
        log_probs, generated_lengths(prompt, pad_token_id), length_penalty
    )
    best = ops.argmax(ops.reshape(scores, (batch, num_beams)), axis=1)
    best_rows = ops.arange(batch) * num_beams + ops.cast(best, "int32")
    return ops.take(prompt, best_rows, axis=0), ops.take(scores, best_rows, axis=0)
