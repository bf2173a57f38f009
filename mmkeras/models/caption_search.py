"""Caption decoding over a `TextDecoder`, as graph-friendly loops: what `ImageCaptioner` generates with.

`search` runs one decoding method from the image tokens on (the body of
`ImageCaptioner.generate_tokens`); it builds the decoder step and the logit
constraints that `greedy_search` and `beam_search` loop over. All work on the
fixed-length token buffer of `generation_constraints`: `prompt`
`(rows, max_length)` with the start token at position 0, filled in place at
`index`, padded after the end token. `decoder_logits(prompt, cache, index)`
returns `(logits, hidden, cache)` of the token at `index`;
`constrain(values, prompt, index)` masks what may not be generated there.
`special` is the captioner's `{"start", "end", "pad", "unk"}` token ids
(`"unk"` may be None).
"""

from keras import ops, tree

from mmkeras.models.generation_constraints import block_repeated_ngrams
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
    `sequence_scores` defines, without the pass (about a fifth of a cached greedy call at batch 64;
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


def constrain_special_tokens(logits, previous_token, special):
    """Masks (to -1e9) what may never be generated after `previous_token` `(rows,)`.

    Once a sequence has ended, only padding may follow, with probability
    one: greedy output stays clean and finished beams keep their score.
    Before that, padding and the start token are never generated, or beam
    search would "finish" sequences by emitting padding; nor is `[UNK]`,
    what a rare training word was replaced with, not a word.
    """
    finished = ops.logical_or(
        ops.equal(previous_token, special["end"]),
        ops.equal(previous_token, special["pad"]),
    )[:, None]
    vocabulary = ops.arange(ops.shape(logits)[-1])[None, :]
    is_pad = ops.equal(vocabulary, special["pad"])
    never = ops.logical_or(is_pad, ops.equal(vocabulary, special["start"]))
    if special.get("unk") is not None:
        never = ops.logical_or(never, ops.equal(vocabulary, special["unk"]))
    blocked = ops.cast(-1e9, logits.dtype)
    open_logits = ops.where(never, blocked, logits)
    pad_only = ops.where(is_pad, ops.cast(0.0, logits.dtype), blocked)
    return ops.where(finished, pad_only, open_logits)


def sequence_scores(text_decoder, image_tokens, token_ids, special, length_penalty=1.0):
    """`(rows,)`: length-penalised log-probability of `token_ids` in one teacher-forced pass.

    The score every method returns: the decoder's log-probabilities of the
    generated tokens up to and including the first end token.
    """
    logits = text_decoder(token_ids[:, :-1], image_tokens, training=False)
    log_probs = ops.log_softmax(logits, axis=-1)
    targets = token_ids[:, 1:]
    picked = ops.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    is_end = ops.cast(ops.equal(targets, special["end"]), "int32")
    ended_before = ops.cumsum(is_end, axis=1) - is_end
    counted = ops.logical_and(ops.equal(ended_before, 0), ops.not_equal(targets, special["pad"]))
    counted = ops.cast(counted, "float32")
    return length_normalized(
        ops.sum(ops.cast(picked, "float32") * counted, axis=1),
        ops.sum(counted, axis=1),
        length_penalty,
    )


def search(text_decoder, image_tokens, special, method, max_length, num_beams=3, sampler=None, use_cache=True,
           no_repeat_ngram_size=0, length_penalty=1.0, choose=None):
    """Decodes captions of `image_tokens` `(batch, tokens, dim)` with `method`.

    `"beam"` runs `beam_search` with `num_beams`; `"greedy"` without a
    `sampler` runs `greedy_search` (`choose` as there); anything else runs
    the keras-hub `sampler` (e.g. `TopKSampler`) and scores its captions with
    `sequence_scores`. `use_cache=False` recomputes the decoder over the
    whole sequence at every step (the baseline the cache is measured
    against). Returns `{"token_ids": (batch, max_length), "scores": (batch,)}`.
    """
    beams = num_beams if method == "beam" else 1
    # Beam search works on batch * beams rows, beams of an image adjacent.
    expanded = ops.repeat(image_tokens, beams, axis=0) if beams > 1 else image_tokens
    rows = ops.shape(expanded)[0]
    prompt = ops.concatenate(
        [
            ops.full((rows, 1), special["start"], dtype="int32"),
            ops.full((rows, max_length - 1), special["pad"], dtype="int32"),
        ],
        axis=1,
    )

    if use_cache:
        cache = text_decoder.initial_cache(rows, max_length)
        image_cache = text_decoder.image_cache(expanded)

        def decoder_logits(prompt, cache, index):
            previous = ops.slice(prompt, [0, index - 1], [ops.shape(prompt)[0], 1])
            logits, hidden, cache = text_decoder.call_with_cache(previous, cache, index - 1, image_cache)
            return logits[:, 0, :], hidden[:, 0, :], cache

    else:
        cache = ()

        def decoder_logits(prompt, cache, index):
            logits = text_decoder(prompt, expanded, training=False)
            return ops.take(logits, index - 1, axis=1), None, cache

    def constrain(values, prompt, index):
        # The n-gram ban goes first: `constrain_special_tokens` then overrides
        # finished rows with padding only, so it can never empty them.
        values = block_repeated_ngrams(values, prompt, index, no_repeat_ngram_size, special["pad"])
        return constrain_special_tokens(values, ops.take(prompt, index - 1, axis=1), special)

    if method == "beam":
        token_ids, scores = beam_search(
            decoder_logits, constrain, prompt, cache, beams, length_penalty, special["end"], special["pad"],
        )
        return {"token_ids": token_ids, "scores": scores}
    if method == "greedy" and sampler is None:
        token_ids, scores = greedy_search(
            decoder_logits, constrain, prompt, cache, length_penalty, special["end"], special["pad"], choose=choose,
        )
        return {"token_ids": token_ids, "scores": scores}

    def next_token_logits(prompt, cache, index):
        logits, hidden, cache = decoder_logits(prompt, cache, index)
        return constrain(logits, prompt, index), hidden, cache

    prompt_mask = ops.concatenate(
        [ops.ones((rows, 1), "bool"), ops.zeros((rows, max_length - 1), "bool")],
        axis=1,
    )
    token_ids = sampler(
        next_token_logits,
        prompt,
        cache=cache,
        index=1,
        mask=prompt_mask,
        stop_token_ids=[special["end"]],
    )
    return {"token_ids": token_ids, "scores": sequence_scores(text_decoder, image_tokens, token_ids, special,
                                                              length_penalty)}
