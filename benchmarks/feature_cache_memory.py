"""Memory and time of caching frozen image features (`image_table.view_feature_table`).

    python benchmarks/feature_cache_memory.py [--views=1,4] [--batches=16,64] \\
        [--data=../shared/data/flickr8k-1k] [--image_size=224]

Each (views, batch) setting runs in a fresh process (peak RSS only grows
within one): the Flickr8k-1k training images are decoded into the uint8
table, then the frozen EfficientNet-Lite0 preset encodes them, `views` views
each (views beyond the first augmented), `batch` images per encoder call.
Prints the feature table's size, the peak RSS added by the encoding (after
the table of pixels exists) and its seconds; the added peak over the
table's own size is what the encoding costs beyond its result. Ends with
one JSON line.
"""

import json
import os
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
flags.DEFINE_list("views", ["1", "4"], "Feature views per image to measure (data.feature_views).")
flags.DEFINE_list("batches", ["16", "64"], "Images per encoder call to measure (16: what image_table uses).")
flags.DEFINE_string("data", os.path.join(REPO, "..", "shared", "data", "flickr8k-1k"), "A Flickr8k folder.")
flags.DEFINE_integer("image_size", 224, "Image size the encoder sees (caption_flickr8k_pretrained: 224).")
flags.DEFINE_string("preset", os.path.join(REPO, "presets", "efficientnet_lite0_imagenet"), "Image preset.")
flags.DEFINE_boolean("child", False, "Internal: measure one setting in this process.")
FLAGS = flags.FLAGS


def peak_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_one(views, batch):
    from mmkeras.data import caption_pipeline, image_table
    from mmkeras.data.flickr8k_format import load_flickr8k
    from mmkeras.layers import ImageEncoder

    records = load_flickr8k(FLAGS.data)["train"]
    encoder = ImageEncoder(hidden_dim=32, backbone_preset=FLAGS.preset, backbone_trainable=False)
    load = caption_pipeline.image_loader(records, FLAGS.image_size, None)
    table, _ = image_table.checked_image_table(records, load, FLAGS.image_size)
    image_table._FEATURE_BATCH = batch
    before = peak_mib()
    start = time.monotonic()
    features = image_table.view_feature_table(
        table, lambda images: encoder.features(images, training=False),
        caption_pipeline.build_augmenter(0) if views > 1 else None, views,
    )
    return {
        "views": views, "batch": batch, "images": len(table),
        "features_mib": round(features.nbytes / 2**20, 1),
        "added_peak_mib": round(peak_mib() - before, 1),
        "seconds": round(time.monotonic() - start, 1),
    }


def main(argv):
    del argv
    if FLAGS.child:
        print(json.dumps(measure_one(int(FLAGS.views[0]), int(FLAGS.batches[0]))))
        return
    rows = []
    for views in FLAGS.views:
        for batch in FLAGS.batches:
            out = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--child", f"--views={views}", f"--batches={batch}",
                 f"--data={FLAGS.data}", f"--image_size={FLAGS.image_size}", f"--preset={FLAGS.preset}"],
                check=True, capture_output=True, text=True, cwd=REPO,
            )
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"views {row['views']}, batch {row['batch']:>3}: {row['images']} images, features "
                  f"{row['features_mib']:.0f} MiB, peak RSS +{row['added_peak_mib']:.0f} MiB "
                  f"(+{row['added_peak_mib'] - row['features_mib']:.0f} beyond the features), "
                  f"{row['seconds']:.1f} s", flush=True)
    print(json.dumps({"feature_cache_memory": rows}))


if __name__ == "__main__":
    app.run(main)
