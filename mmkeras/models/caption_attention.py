"""Where an `ImageCaptioner` looked: the cross-attention behind each token of a caption.

`ImageCaptioner.token_attention` and `caption_with_attention` (and through
them `training.explain` and the report's attention grids) read it here.
"""

import numpy as np
from keras import ops

from mmkeras.data.tokenizer import ids_before_end


def token_attention(captioner, images, token_ids):
    """The cross-attention paid to the image for each token of given captions.

    Runs the decoder once (teacher forcing) over `token_ids`. With causal
    self-attention, position `t` of that pass computes exactly what
    generation step `t` computed when these tokens were generated, so for
    generated ids these are the scores generation used.

    Args:
        captioner: the `ImageCaptioner` (with a tokenizer).
        images: float `(batch, image_size, image_size, 3)` in `[0, 255]`.
        token_ids: int `(batch, length)`: the start token, then caption
            tokens, then the end token and padding (as `generate()`
            returns them).

    Returns:
        A dict with `"captions"` (list of str), `"tokens"` (list of lists
        of str: each caption's tokens before the end token),
        `"token_ids"` int numpy `(batch, steps)` (the ids after the start
        token, `steps = length - 1`) and `"attention"` float32 numpy
        `(batch, steps, num_layers, image_tokens)`: for each token, the
        cross-attention of the position that predicted it, averaged over
        heads (rows sum to 1).
    """
    if captioner.tokenizer is None:
        raise ValueError("This ImageCaptioner has no tokenizer; pass `tokenizer=`.")
    token_ids = ops.convert_to_tensor(token_ids, dtype="int32")
    images = ops.convert_to_tensor(images, dtype=captioner.compute_dtype)
    captions = captioner.detokenize(token_ids)
    # Input position t (the start token, then caption tokens) is the
    # query that predicted token t + 1.
    scores = captioner.compute_attention_maps(images, token_ids[:, :-1])
    attention = ops.mean(ops.stack(scores, axis=1), axis=2)  # (batch, layers, steps, image)
    attention = ops.transpose(ops.cast(attention, "float32"), (0, 2, 1, 3))
    following = np.asarray(ops.convert_to_numpy(token_ids))[:, 1:]
    tokens = [[captioner.tokenizer.id_to_token(i) for i in row]
              for row in ids_before_end(following, captioner.end_token_id, {captioner.pad_token_id})]
    return {
        "captions": [c.decode("utf-8") for c in ops.convert_to_numpy(captions).tolist()],
        "tokens": tokens,
        "token_ids": following,
        "attention": np.asarray(ops.convert_to_numpy(attention)),
    }
