"""Captioner speed: training images/s, greedy / beam-3 generation, cache speedup.

    python benchmarks/caption_speed.py [--model_dir=runs/caption] [--batch_size=64]

One model, one run: generation with one set of weights (greedy with the
key/value cache, beam search with 3 beams and the cache, and greedy without the
cache: the decoder re-run over the whole sequence at every step), then training
throughput through the real tf.data pipeline on synthetic data. Ends with one
JSON line. With --model_dir the trained weights stop at their end tokens, which
shows the speedup at natural caption lengths (the mean is printed).
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags  # noqa: E402

flags.DEFINE_string("model_dir", None, "Load model.keras from here; default: a fresh default-config model.")
flags.DEFINE_integer("batch_size", 64, "Batch size for training and generation.")
flags.DEFINE_integer("sequence_length", 25, "Generated sequence length (start token included).")
flags.DEFINE_integer("train_steps", 30, "Timed training steps (after warmup).")
flags.DEFINE_integer("repeats", 3, "Timed generation calls per method (after warmup).")
FLAGS = flags.FLAGS


def timed(fn, repeats):
    fn()  # trace and warm up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main(argv):
    del argv
    import keras
    import numpy as np

    from mmkeras.data import caption_pipeline
    from mmkeras.data.synthetic_captions import SyntheticCaptions
    from mmkeras.data.tokenizer import build_tokenizer, learn_vocabulary
    from training import config as config_lib
    from training import experiment
    from training import named_experiments
    from training.tasks import caption as caption_task

    cfg = named_experiments.get_experiment("caption_synthetic")
    batch = FLAGS.batch_size
    synthetic = SyntheticCaptions(seed=0, image_size=cfg.data.image_size, num_train=4 * batch,
                                  num_validation=0, num_test=batch)
    train_records = synthetic.records("train")
    if FLAGS.model_dir:
        model = keras.saving.load_model(os.path.join(FLAGS.model_dir, "model.keras"))
        tokenizer = model.tokenizer
    else:
        tokenizer = build_tokenizer(learn_vocabulary([c for r in train_records for c in r.captions] * 20,
                                                     cfg.data.vocabulary_size))
        cfg = config_lib.override(cfg, [f"data.sequence_length={FLAGS.sequence_length}"])
        model = caption_task.build_model(cfg, tokenizer)
    model.compile(optimizer=experiment.build_optimizer(cfg.train))
    seq_len = model.text_decoder.sequence_length
    length = min(FLAGS.sequence_length, seq_len)
    images = next(iter(caption_pipeline.eval_image_dataset(
        synthetic.records("test"), model.image_size, batch, synthetic)))

    def run(method, use_cache):
        out = model.generate(images, method=method, max_length=length, use_cache=use_cache, num_beams=3)
        return out["token_ids"].numpy()

    # Generation first, on the weights as given: fresh weights rarely emit the
    # end token, so every method runs the full sequence length and the cache
    # comparison is not blurred by early stopping.
    figures = {}
    for key, method, use_cache in (
        ("greedy_images_per_s", "greedy", True),
        ("beam3_images_per_s", "beam", True),
        ("uncached_greedy_images_per_s", "greedy", False),
    ):
        seconds = timed(lambda: run(method, use_cache), FLAGS.repeats)
        figures[key] = batch / seconds
    cached, uncached = run("greedy", True), run("greedy", False)
    end_id = model.end_token_id
    steps = [int(np.argmax(row == end_id)) if (row == end_id).any() else length - 1 for row in cached]
    figures["cache_speedup"] = figures["greedy_images_per_s"] / figures["uncached_greedy_images_per_s"]

    train_ds = caption_pipeline.caption_dataset(
        train_records, tokenizer, model.image_size, seq_len, batch, training=True, synthetic=synthetic)
    model.fit(train_ds, steps_per_epoch=3, epochs=1, verbose=0)
    start = time.perf_counter()
    model.fit(train_ds, steps_per_epoch=FLAGS.train_steps, epochs=1, verbose=0)
    figures["train_images_per_s"] = FLAGS.train_steps * batch / (time.perf_counter() - start)
    train_images_per_s = figures["train_images_per_s"]

    print(f"model: {model.count_params()} parameters, image {model.image_size}px, batch {batch}, "
          f"sequence length {length}, weights {'from ' + FLAGS.model_dir if FLAGS.model_dir else 'fresh'}, "
          f"mean generated tokens per caption {np.mean(steps):.1f}")
    print(f"training:               {train_images_per_s:8.1f} images/s")
    print(f"greedy (cached):        {figures['greedy_images_per_s']:8.1f} images/s")
    print(f"beam-3 (cached):        {figures['beam3_images_per_s']:8.1f} images/s")
    print(f"greedy (no cache):      {figures['uncached_greedy_images_per_s']:8.1f} images/s")
    print(f"cache speedup:          {figures['cache_speedup']:8.2f}x (bar: >= 3x); "
          f"cached and uncached tokens equal: {bool(np.array_equal(cached, uncached))}")
    print(json.dumps({k: round(v, 2) for k, v in sorted(figures.items())}))


if __name__ == "__main__":
    app.run(main)
