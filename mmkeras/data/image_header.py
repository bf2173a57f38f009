"""Declared image sizes read from encoded headers, in graph, without decoding.

`tf.io.decode_image` allocates what the file's header declares: a 745 KB PNG
that declares 16000 x 16000 pixels decodes to 768 MB. These graph functions
read the declared size first, so a model can refuse such an image before
anything large is allocated:

- JPEG: `tf.io.extract_jpeg_shape` (libjpeg reads the frame header, exactly
  as the decoder will).
- PNG: the IHDR chunk, which must come first: big-endian uint32 width and
  height at bytes 16..24.
- GIF: TensorFlow decodes every frame of a GIF (giflib's `DGifSlurp`) into a
  canvas of the largest frame, whatever the logical screen at bytes 6..10
  says, so the blocks are walked and every image descriptor counts: the
  declared height and width are the largest frame's, the pixels to decode
  the sum over frames (at least the canvas). A GIF without frames falls back
  to its logical screen (little-endian uint16 at bytes 6..10). The walk
  takes one `tf.while_loop` step per block (data sub-blocks hold at most 255
  bytes), so it costs far more than the fixed-offset reads of the other
  formats; the exports take JPEG and PNG only.
- BMP: little-endian int32 width and height at bytes 18..26, as
  TensorFlow's BMP decoder reads them (a negative height is a top-down BMP).

Anything else, including WebP (which `tf.io.decode_image` also takes, but
whose header is not read here), and files too short to hold their header,
fail with an `InvalidArgumentError` that names the input and batch position.

Only core TensorFlow ops (no `py_function`), so exports that use them load in
the official `tensorflow_model_server`.

Example:

    sizes = read_image_headers(tf.constant([png_bytes, jpeg_bytes]))
    sizes["height"], sizes["width"], sizes["pixels"]   # int64, shape (2,) each
    images = check_image_sizes(images, max_pixels=40_000_000)
"""

import tensorflow as tf

# Format codes of `image_formats`: 0 is "none of these".
FORMAT_NAMES = ("unknown", "JPEG", "PNG", "GIF", "BMP")
UNKNOWN, JPEG, PNG, GIF, BMP = range(len(FORMAT_NAMES))

# The signatures TensorFlow's decoders recognise, or stricter: a file one of
# these calls PNG is one `tf.io.decode_image` decodes as PNG.
_MAGIC = {
    JPEG: b"\xff\xd8\xff",
    PNG: b"\x89PNG\r\n\x1a\n",
    GIF: b"GIF8",
    BMP: b"BM",
}
# Bytes needed to read each format's declared size (index: format code).
_MIN_BYTES = (0, 3, 24, 13, 26)
# Zero bytes appended to a window read near the end of a file, so that it
# always has its full length.
_PADDING = b"\x00" * 16
_GIF_IMAGE, _GIF_EXTENSION = 0x2C, 0x21


def _bytes(image, offset, count):
    """int64 `[count]`: bytes `offset .. offset + count` of a scalar string, zeros past its end.

    `offset` must be at most the length. Only the window is copied, never
    the whole (possibly large) image.
    """
    window = tf.strings.join([tf.strings.substr(image, offset, count), _PADDING])
    return tf.cast(tf.io.decode_raw(tf.strings.substr(window, 0, count), tf.uint8), tf.int64)


def _unsigned(values, big_endian):
    """int64 scalar from int64 byte values."""
    if big_endian:
        values = tf.reverse(values, [0])
    weights = tf.bitwise.left_shift(tf.constant(1, tf.int64), 8 * tf.range(tf.size(values, tf.int64)))
    return tf.reduce_sum(values * weights)


def image_formats(images):
    """int32 format codes (`JPEG`, `PNG`, `GIF`, `BMP`; 0 otherwise) of encoded images.

    Works elementwise on a string tensor of any shape; reads only the magic bytes.
    """
    images = tf.convert_to_tensor(images, tf.string)
    codes = tf.zeros(tf.shape(images), tf.int32)
    for code, magic in _MAGIC.items():
        match = tf.equal(tf.strings.substr(images, 0, len(magic)), magic)
        codes = tf.where(match, code, codes)
    return codes


def _jpeg_size(image):
    shape = tf.cast(tf.io.extract_jpeg_shape(image), tf.int64)
    return tf.stack([shape[0], shape[1], shape[0] * shape[1]])


def _png_size(image):
    width = _unsigned(_bytes(image, 16, 4), big_endian=True)
    height = _unsigned(_bytes(image, 20, 4), big_endian=True)
    return tf.stack([height, width, height * width])


def _bmp_size(image):
    def signed(offset):
        value = _unsigned(_bytes(image, offset, 4), big_endian=False)
        # int32: a negative height marks a top-down BMP; the decoder takes abs().
        return tf.abs(tf.where(value >= 2**31, value - 2**32, value))

    width, height = signed(18), signed(22)
    return tf.stack([height, width, height * width])


def _gif_size(image):
    """Walks the GIF's blocks: largest frame (height, width) and total frame pixels."""
    length = tf.cast(tf.strings.length(image), tf.int64)
    header = _bytes(image, 0, 13)
    screen_width = _unsigned(header[6:8], big_endian=False)
    screen_height = _unsigned(header[8:10], big_endian=False)

    def color_table_bytes(packed):
        # Flag 0x80: a color table of 3 * 2^(size + 1) bytes follows.
        size = tf.bitwise.left_shift(tf.constant(3, tf.int64), tf.bitwise.bitwise_and(packed, 7) + 1)
        return tf.where(tf.bitwise.bitwise_and(packed, 0x80) > 0, size, tf.constant(0, tf.int64))

    zero = tf.constant(0, tf.int64)
    start = 13 + color_table_bytes(header[10])

    def step(position, in_blocks, max_width, max_height, total, done):
        window = _bytes(image, position, 10)
        first = window[0]
        # Inside a run of data sub-blocks: a size byte, then that many bytes;
        # size 0 ends the run.
        block_position = position + 1 + first
        # Between records: an image descriptor (0x2C, 9 more bytes, an
        # optional local color table, the LZW code size byte) or an extension
        # (0x21, a label byte); both are followed by data sub-blocks. Anything
        # else (the 0x3B trailer, or garbage giflib rejects) ends the walk.
        is_image = tf.logical_and(tf.logical_not(in_blocks), tf.equal(first, _GIF_IMAGE))
        is_extension = tf.logical_and(tf.logical_not(in_blocks), tf.equal(first, _GIF_EXTENSION))
        width = _unsigned(window[5:7], big_endian=False)
        height = _unsigned(window[7:9], big_endian=False)
        record_position = tf.where(is_image, position + 11 + color_table_bytes(window[9]), position + 2)
        return (
            tf.where(in_blocks, block_position, record_position),
            tf.where(in_blocks, first > 0, tf.logical_or(is_image, is_extension)),
            tf.where(is_image, tf.maximum(max_width, width), max_width),
            tf.where(is_image, tf.maximum(max_height, height), max_height),
            total + tf.where(is_image, width * height, zero),
            tf.logical_not(tf.logical_or(in_blocks, tf.logical_or(is_image, is_extension))),
        )

    def keep_going(position, in_blocks, max_width, max_height, total, done):
        return tf.logical_and(tf.logical_not(done), position < length)

    _, _, max_width, max_height, total, _ = tf.while_loop(
        keep_going, step,
        (start, tf.constant(False), zero, zero, zero, tf.constant(False)),
    )
    no_frames = tf.equal(max_width * max_height, 0)
    height = tf.where(no_frames, screen_height, max_height)
    width = tf.where(no_frames, screen_width, max_width)
    return tf.stack([height, width, tf.maximum(height * width, total)])


def _header(image, image_format):
    """int64 `[3]` (height, width, pixels) of one image whose format was checked."""
    def unknown():
        return tf.zeros([3], tf.int64)

    return tf.switch_case(
        image_format,
        [unknown, lambda: _jpeg_size(image), lambda: _png_size(image), lambda: _gif_size(image),
         lambda: _bmp_size(image)],
    )


def _labels(images, input_name):
    """`Input <name>[i]` for each batch position of a `(batch,)` tensor."""
    positions = tf.strings.as_string(tf.range(tf.size(images)))
    return tf.strings.join([f"Input {input_name}[", positions, "]"])


def _assert_none(problems):
    """An Assert that fails with the first few non-empty `problems` (strings)."""
    bad = tf.where(tf.not_equal(problems, ""))[:, 0]
    message = tf.strings.reduce_join(tf.gather(problems, bad[:3]), separator="; ")
    # The message is the whole Assert output: TF escapes quotes in it, so it has none.
    return tf.debugging.Assert(tf.equal(tf.size(bad), 0), [message])


def _format_problems(images, formats, labels):
    length = tf.strings.length(images)
    too_short = length < tf.gather(_MIN_BYTES, formats)
    # libpng requires IHDR as the first chunk (type at bytes 12..16).
    chunk_type = tf.strings.substr(images, tf.minimum(length, 12), tf.fill(tf.shape(length), 4))
    problems = tf.fill(tf.shape(images), "")
    problems = tf.where(
        tf.logical_and(tf.equal(formats, PNG), tf.not_equal(chunk_type, "IHDR")),
        tf.strings.join([labels, " is a PNG without an IHDR chunk at byte 12"]),
        problems,
    )
    problems = tf.where(
        too_short,
        tf.strings.join([labels, " has only ", tf.strings.as_string(length), " bytes, too few for the header of a ",
                         tf.gather(FORMAT_NAMES, formats), " image"]),
        problems,
    )
    return tf.where(
        tf.equal(formats, UNKNOWN),
        tf.strings.join([labels, " is not a JPEG, PNG, GIF or BMP image"]),
        problems,
    )


def _read(images, labels):
    """(checked images, formats, int64 [batch, 3] headers) of a `(batch,)` tensor."""
    formats = image_formats(images)
    with tf.control_dependencies([_assert_none(_format_problems(images, formats, labels))]):
        images = tf.identity(images)
    headers = tf.map_fn(
        lambda args: _header(args[0], args[1]), (images, formats),
        fn_output_signature=tf.TensorSpec([3], tf.int64),
    )
    return images, formats, headers


def read_image_headers(images, input_name="images"):
    """Declared sizes of a `(batch,)` tensor of encoded images, read without decoding.

    Args:
        images: `(batch,)` tf.string of encoded JPEG, PNG, GIF or BMP images.
        input_name: name used in error messages (`Input images[3] ...`).

    Returns:
        dict of `(batch,)` tensors: `format` (int32 code, see `FORMAT_NAMES`),
        `height`, `width` (int64, what the decoder will produce) and
        `pixels` (int64, pixels the decoder allocates: height * width, and
        for a GIF the sum over its frames if larger).

    Raises (when run):
        InvalidArgumentError naming the batch position of an image that is
        none of these formats or too short for its header, and libjpeg's
        error for a JPEG whose header is malformed.
    """
    images = tf.convert_to_tensor(images, tf.string)
    _, formats, headers = _read(images, _labels(images, input_name))
    return {"format": formats, "height": headers[:, 0], "width": headers[:, 1], "pixels": headers[:, 2]}


def read_image_header(image_bytes, input_name="images"):
    """`read_image_headers` of one scalar encoded image: a dict of scalars."""
    image_bytes = tf.convert_to_tensor(image_bytes, tf.string)
    _, formats, headers = _read(tf.reshape(image_bytes, [1]), tf.constant([f"Input {input_name}"]))
    return {"format": formats[0], "height": headers[0, 0], "width": headers[0, 1], "pixels": headers[0, 2]}


def _check_max_pixels(max_pixels):
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise ValueError(f"max_pixels must be a positive integer. Received: max_pixels={max_pixels!r}")


def _checked(images, labels, max_pixels):
    _check_max_pixels(max_pixels)
    images, _, headers = _read(images, labels)
    pixels = headers[:, 2]
    megapixels = tf.strings.as_string(tf.cast(pixels, tf.float64) / 1e6, precision=1)
    declared = tf.strings.join([
        labels, " declares ", tf.strings.as_string(headers[:, 1]), "x", tf.strings.as_string(headers[:, 0]),
        " pixels (", megapixels, " MP to decode), above the limit of this model: ",
        f"{max_pixels / 1e6:.1f} MP (max_pixels={max_pixels})",
    ])
    problems = tf.where(pixels > max_pixels, declared, tf.fill(tf.shape(images), ""))
    with tf.control_dependencies([_assert_none(problems)]):
        return tf.identity(images)


def check_image_sizes(images, max_pixels, input_name="images"):
    """Returns `images`, failing first if one declares more than `max_pixels` pixels.

    Ops that take the returned tensor (a decoder) run only after the check,
    which reads headers only, so an image bomb is refused before anything
    large is allocated. The error is an `InvalidArgumentError` such as
    `Input images[3] declares 16000x16000 pixels (256.0 MP to decode), above
    the limit of this model: 40.0 MP (max_pixels=40000000)`; images that are
    not JPEG, PNG, GIF or BMP fail too (see `read_image_headers`).

    Args:
        images: `(batch,)` tf.string of encoded images.
        max_pixels: positive int, the most pixels (width * height, computed in
            int64) an image may declare.
        input_name: name used in error messages.
    """
    images = tf.convert_to_tensor(images, tf.string)
    return _checked(images, _labels(images, input_name), max_pixels)


def check_image_size(image_bytes, max_pixels, input_name="images"):
    """`check_image_sizes` of one scalar encoded image (`Input images declares ...`)."""
    image_bytes = tf.convert_to_tensor(image_bytes, tf.string)
    checked = _checked(tf.reshape(image_bytes, [1]), tf.constant([f"Input {input_name}"]), max_pixels)
    return tf.reshape(checked, tf.shape(image_bytes))
