"""Search speed of `training.search`: index build rate and one query against 1,000 images.

    python benchmarks/search_speed.py [--model_dir=runs/contrastive] \\
        [--images=../shared/data/flickr8k-1k/images] [--repeats=30]

Without --model_dir, a dual encoder of the `contrastive_flickr8k_pretrained`
architecture (EfficientNet-Lite0 + MiniLM presets, untrained projections) is
built and saved into a temporary run directory: speed does not depend on the
weights. Measures, in one process:

1. the index build (decode + embed every image of the folder), in images/s;
2. a query once the index exists, as `training.search` does it: read the
   index from disk and check it against the model and the folder
   (`load_or_build`), embed the query text, rank all images; the median and
   spread over --repeats queries, and beside it the time of the ranking
   alone (the matrix product and top-k), its floor;
3. the whole CLI (`python -m training.search`, a new process that imports
   TensorFlow and loads the model), once, for reference.

Ends with one JSON line.
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
flags.DEFINE_string("model_dir", None, "A --task=contrastive run; default: an untrained pretrained-architecture model.")
flags.DEFINE_string("images", os.path.join(REPO, "..", "shared", "data", "flickr8k-1k", "images"),
                    "Folder of images to index (Flickr8k-1k: 1,000 photos).")
flags.DEFINE_integer("repeats", 30, "Timed queries.")
flags.DEFINE_integer("batch_size", 64, "Images per batch while indexing.")
FLAGS = flags.FLAGS

QUERIES = ("a dog on the grass", "two children playing in the water", "a man riding a bike",
           "a group of people standing in the snow", "a black and white dog jumps over a fence")


def untrained_model_dir(root):
    from training import named_experiments
    from training.tasks.contrastive import ContrastiveTask

    cfg = named_experiments.get_experiment("contrastive_flickr8k_pretrained")
    task = ContrastiveTask(cfg, root)
    # Only the tokenizer and the towers are needed: no data is read.
    from mmkeras.data.text_preprocessor import text_preprocessor_from_preset
    from training.presets import resolve_preset

    task.text_preprocessor = text_preprocessor_from_preset(
        resolve_preset(cfg.model.text_encoder.backbone_preset), cfg.data.sequence_length)
    task.build_model().save(os.path.join(root, "model.keras"))
    return root


def main(argv):
    del argv
    from training import search_index
    from training.search import Searcher

    images = os.path.abspath(FLAGS.images)
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = FLAGS.model_dir or untrained_model_dir(scratch)
        searcher = Searcher(model_dir)
        index_file = search_index.index_path(model_dir, images)
        if os.path.exists(index_file):
            os.remove(index_file)
        index, reason = searcher.index(images, FLAGS.batch_size)
        build_rate = len(index.paths) / index.build_seconds
        print(f"Index: {len(index.paths)} images ({len(index.skipped)} skipped) built in "
              f"{index.build_seconds:.1f} s: {build_rate:.1f} images/s", flush=True)
        searcher.embed_texts([QUERIES[0]])  # trace once, as the CLI's first query does

        query_times, rank_times = [], []
        for i in range(FLAGS.repeats):
            query = QUERIES[i % len(QUERIES)]
            start = time.perf_counter()
            index, reason = searcher.index(images, FLAGS.batch_size)
            assert reason is None, reason
            embedding = searcher.embed_texts([query])[0]
            ranked = time.perf_counter()
            results = index.search(embedding, 5)
            end = time.perf_counter()
            query_times.append(end - start)
            rank_times.append(end - ranked)
        median = statistics.median(query_times)
        spread = (max(query_times) - min(query_times)) / median
        print(f"Query against {len(index.paths)} images (index check + text embedding + ranking): median "
              f"{median * 1000:.1f} ms over {FLAGS.repeats} (min {min(query_times) * 1000:.1f}, max "
              f"{max(query_times) * 1000:.1f}); ranking alone {statistics.median(rank_times) * 1000:.2f} ms",
              flush=True)
        print(f"Top match of {QUERIES[(FLAGS.repeats - 1) % len(QUERIES)]!r}: {results[0]}", flush=True)

        start = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "training.search", f"--model_dir={model_dir}",
                              f"--images={images}", f"--query={QUERIES[0]}"], cwd=REPO, capture_output=True,
                             text=True)
        cli_seconds = time.perf_counter() - start
        if out.returncode:
            print(out.stderr[-2000:], file=sys.stderr)
        print(f"Whole CLI (new process: TensorFlow import, model load, query): {cli_seconds:.1f} s", flush=True)
        print(json.dumps({
            "num_images": len(index.paths), "skipped": len(index.skipped),
            "index_build_images_per_second": round(build_rate, 1),
            "query_median_seconds": round(median, 4), "query_spread": round(spread, 3),
            "ranking_median_seconds": round(statistics.median(rank_times), 6),
            "cli_seconds": round(cli_seconds, 1), "model_dir": FLAGS.model_dir or "untrained (pretrained architecture)",
        }))


if __name__ == "__main__":
    app.run(main)
