"""Zero-shot classification with a trained dual encoder: label names + prompt templates.

Each label is embedded in every template of its set, the embeddings are
averaged and renormalised (CLIP's prompt ensembling), and an image takes the
label whose embedding is closest. Two label families on two data sets:

- the synthetic shapes' single-shape test images: shape (5 labels) and
  colour (8); the templates are the data's own phrasing with the other
  attributes enumerated ("a small red {}" for every size and colour);
- easy-vqa's test images (one shape each): shape (circle, rectangle,
  triangle) and colour (8), labels read off the "what shape / what color"
  answers; photo-style templates. A model trained on other data meets these
  images and words zero-shot.
"""

import collections
import dataclasses

import numpy as np

from mmkeras.data.records import CaptionRecord
from mmkeras.data.synthetic_captions import COLORS
from mmkeras.data.synthetic_captions import SHAPES
from mmkeras.data.synthetic_captions import SIZES
from mmkeras.metrics import retrieval

EASY_VQA_SHAPES = ("circle", "rectangle", "triangle")
EASY_VQA_COLORS = ("red", "green", "blue", "black", "gray", "teal", "brown", "yellow")
EASY_VQA_SHAPE_TEMPLATES = ("a photo of a {}", "a {}", "a {} shape", "a drawing of a {}", "there is a {}")
EASY_VQA_COLOR_TEMPLATES = ("a {} shape", "a photo of a {} shape", "something {}", "a {} circle",
                            "a {} rectangle", "a {} triangle")


@dataclasses.dataclass
class ZeroShotSet:
    """Images with one label each, the label names and the templates (`{}` = the label)."""

    name: str
    records: list
    labels: list
    label_names: tuple
    templates: tuple
    synthetic: object = None  # The `SyntheticCaptions` that renders synthetic image ids.


def synthetic_sets(data):
    """Shape and colour sets over the single-shape test images of `data`, a `SyntheticCaptions`."""
    singles = [i for i in range(data.num_test) if data.scene("test", i)["layout"] == "single"]
    objects = [data.scene("test", i)["objects"][0] for i in singles]
    records = [data.records("test")[i] for i in singles]
    shape_templates = tuple(f"a {size} {color} {{}}" for size in SIZES for color in COLORS)
    color_templates = tuple(f"a {size} {{}} {shape}" for size in SIZES for shape in SHAPES)
    return [
        ZeroShotSet("synthetic_shape", records, [SHAPES.index(o["shape"]) for o in objects], SHAPES,
                    shape_templates, data),
        ZeroShotSet("synthetic_color", records, [list(COLORS).index(o["color"]) for o in objects],
                    tuple(COLORS), color_templates, data),
    ]


def easy_vqa_sets(limit):
    """Shape and colour sets over the first `limit` easy-vqa test images (from its wheel)."""
    import easy_vqa

    texts, answers, image_ids = easy_vqa.get_test_questions()
    paths = easy_vqa.get_test_image_paths()
    shape, color = {}, {}
    for answer, image_id in zip(answers, image_ids):
        if answer in EASY_VQA_SHAPES:
            shape[image_id] = EASY_VQA_SHAPES.index(answer)
        elif answer in EASY_VQA_COLORS:
            color[image_id] = EASY_VQA_COLORS.index(answer)
    sets = []
    for name, found, names, templates in (
        ("easy_vqa_shape", shape, EASY_VQA_SHAPES, EASY_VQA_SHAPE_TEMPLATES),
        ("easy_vqa_color", color, EASY_VQA_COLORS, EASY_VQA_COLOR_TEMPLATES),
    ):
        ids = sorted(found)[:limit]
        records = [CaptionRecord(image=paths[i], captions=("",), origin=f"easy-vqa test image {i}") for i in ids]
        sets.append(ZeroShotSet(name, records, [found[i] for i in ids], names, templates))
    return sets


def classify(model, zero_shot_set, image_size, text_preprocessor, batch_size):
    """`{"accuracy", "chance", "num_images", "per_label_accuracy"}` of one set."""
    from training.tasks.contrastive import embed_images
    from training.tasks.contrastive import embed_texts

    s = zero_shot_set
    prompts = [template.format(label) for label in s.label_names for template in s.templates]
    prompt_embeddings = embed_texts(model, prompts, text_preprocessor, batch_size)
    classifier = retrieval.zero_shot_classifier(
        prompt_embeddings.reshape(len(s.label_names), len(s.templates), -1))
    images = embed_images(model, s.records, image_size, batch_size, s.synthetic)
    accuracy, predictions = retrieval.zero_shot_accuracy(images, classifier, s.labels)
    counts = collections.Counter(s.labels)
    per_label = {
        name: round(float(np.mean(predictions[np.asarray(s.labels) == k] == k)), 4)
        for k, name in enumerate(s.label_names) if counts.get(k)
    }
    return {
        "accuracy": round(accuracy, 6),
        # Always answering the most frequent label.
        "majority_rate": round(max(counts.values()) / len(s.labels), 6),
        "num_images": len(s.labels),
        "num_templates": len(s.templates),
        "per_label_accuracy": per_label,
    }


def evaluate(model, task, cfg):
    """Every zero-shot set that fits the run: `{set name: classify(...)}`.

    Synthetic runs get the synthetic sets; every run gets the easy-vqa sets
    (`contrastive.zero_shot_images` images each).
    """
    sets = []
    if task.synthetic is not None:
        sets += synthetic_sets(task.synthetic)
    if cfg.contrastive.zero_shot_images > 0:
        sets += easy_vqa_sets(cfg.contrastive.zero_shot_images)
    return {
        s.name: classify(model, s, cfg.data.image_size, task.text_preprocessor, cfg.eval.batch_size)
        for s in sets if s.records
    }
