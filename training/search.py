"""Searches images with text, or images and texts with an image, using a trained dual encoder.

    python -m training.search --model_dir=runs/contrastive --images=photos/ \\
        --query="a dog on the grass" --top_k=5
    python -m training.search --model_dir=runs/contrastive --images=photos/ --image=query.jpg
    python -m training.search --model_dir=runs/contrastive --image=query.jpg --texts=captions.txt

The first search of a folder embeds it once into an index next to the model
(`<model_dir>/search_index/`); later searches reuse it, unless the model or
the folder changed, which rebuilds it. Files that are not decodable images
are skipped and counted. Prints the best matches with their cosine scores.
"""

import os
import sys

from absl import app, flags

FLAGS = flags.FLAGS

def define_flags():
    # Defined only when run as a program: importers (benchmarks, tests) have
    # flags of the same names.
    flags.DEFINE_string("model_dir", None, "A `--task=contrastive` run directory holding model.keras.")
    flags.DEFINE_string("images", None, "Folder of images to search (indexed once, next to the model).")
    flags.DEFINE_string("query", None, "Text query: finds the images of --images that match it best.")
    flags.DEFINE_string("image", None, "Image query (a file): finds the best images of --images, "
                        "or the best lines of --texts.")
    flags.DEFINE_string("texts", None, "A UTF-8 file of texts, one per line, to search with --image.")
    flags.DEFINE_integer("top_k", 5, "Number of results to print.")
    flags.DEFINE_integer("batch_size", 64, "Images per batch while building the index.")


class Searcher:
    """A loaded `DualEncoder` with compiled embedding functions (for the CLI and benchmarks)."""

    def __init__(self, model_dir):
        import keras
        import tensorflow as tf

        import mmkeras  # noqa: F401  (registers the serializable classes)
        from mmkeras.models.dual_encoder import DualEncoder

        path = os.path.join(model_dir, "model.keras")
        if not os.path.exists(path):
            raise ValueError(f"--model_dir: {path} does not exist; train one with "
                             "python -m training.train --task=contrastive")
        self.model_dir = model_dir
        # Inference only: no optimizer (a run with frozen layers would warn that its saved
        # optimizer variables do not match, since keras-hub backbones do not save per-layer trainable flags).
        self.model = keras.saving.load_model(path, compile=False)
        if not isinstance(self.model, DualEncoder):
            raise ValueError(f"--model_dir: {path} holds a {type(self.model).__name__}, not a DualEncoder "
                             "(train with --task=contrastive).")
        self._images = tf.function(self.model.embed_raw_images, reduce_retracing=True, autograph=False)
        self._texts = tf.function(self.model.embed_raw_texts, reduce_retracing=True, autograph=False)
        self._model_sha256 = None

    def embed_image_files(self, paths):
        import tensorflow as tf

        data = tf.stack([tf.io.read_file(p) for p in paths])
        return self._images(data).numpy()

    def embed_texts(self, texts):
        import tensorflow as tf

        return self._texts(tf.constant(list(texts))).numpy()

    def index(self, folder, batch_size=64):
        """The folder's `ImageIndex` and why it was (re)built (None: reused)."""
        from training import search_index

        if self._model_sha256 is None:
            # Once per process: the model does not change under a loaded Searcher.
            self._model_sha256 = search_index.file_sha256(os.path.join(self.model_dir, "model.keras"))
        return search_index.load_or_build(self.model_dir, folder, self.embed_image_files,
                                          model_sha256=self._model_sha256, batch_size=batch_size)


def read_texts(path):
    with open(path, encoding="utf-8") as f:
        texts = [line.strip() for line in f if line.strip()]
    if not texts:
        raise ValueError(f"--texts: {path} holds no non-empty lines.")
    return texts


def check_flags():
    if not FLAGS.model_dir:
        raise app.UsageError("--model_dir is required (a --task=contrastive run directory).")
    if FLAGS.top_k < 1:
        raise app.UsageError(f"--top_k must be >= 1. Received: --top_k={FLAGS.top_k}")
    if (FLAGS.query is None) == (FLAGS.image is None):
        raise app.UsageError("Give exactly one of --query (text) and --image (a file).")
    if FLAGS.query is not None and not FLAGS.query.strip():
        raise app.UsageError("--query is empty: give the text to search for, e.g. --query=\"a dog on the grass\".")
    if FLAGS.query is not None and not FLAGS.images:
        raise app.UsageError("--query searches the images of --images: give --images=FOLDER.")
    if FLAGS.image is not None:
        if not os.path.isfile(FLAGS.image):
            raise app.UsageError(f"--image: {FLAGS.image!r} is not a file.")
        if bool(FLAGS.images) == bool(FLAGS.texts):
            raise app.UsageError("--image searches either --images=FOLDER or --texts=FILE: give one of them.")


def main(argv):
    del argv
    check_flags()
    try:
        searcher = Searcher(FLAGS.model_dir)
        if FLAGS.image is not None:
            import tensorflow as tf

            try:
                query = searcher.embed_image_files([FLAGS.image])[0]
            except tf.errors.OpError as e:
                raise ValueError(f"--image: {FLAGS.image} is not a decodable image "
                                 f"({str(e).splitlines()[0][:200]})") from None
        else:
            query = searcher.embed_texts([FLAGS.query])[0]
        if FLAGS.texts:
            texts = read_texts(FLAGS.texts)
            scores = searcher.embed_texts(texts) @ query
            order = scores.argsort()[::-1][: FLAGS.top_k]
            results = [(texts[i], float(scores[i])) for i in order]
        else:
            index, reason = searcher.index(FLAGS.images, FLAGS.batch_size)
            if reason:
                rate = len(index.paths) / max(index.build_seconds, 1e-9)
                print(f"Indexed {len(index.paths)} images of {FLAGS.images} ({reason}) in "
                      f"{index.build_seconds:.1f} s ({rate:.1f} images/s)", flush=True)
            if index.skipped:
                print(f"Skipped {len(index.skipped)} files that are not decodable images, e.g. "
                      f"{index.skipped[0]}", flush=True)
            if not index.paths:
                raise ValueError(f"--images: {FLAGS.images} holds no decodable images.")
            results = index.search(query, FLAGS.top_k)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    for rank, (item, score) in enumerate(results, 1):
        print(f"{rank}. {score:.4f}  {item}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
