"""Built-in visual question answering over the synthetic shapes.

The images are the scenes of `SyntheticCaptions` (one to three shapes, distinct
colours within an image); the questions are written from each scene's
description, so every answer is what the image shows. An answer needs both
inputs: one image carries several questions with different answers, and one
question has different answers on different images.

Single-label questions (one answer out of colours, shapes, sizes, yes/no):

- `what color is the <shape>?` (only when that shape occurs once)
- `what shape is the <color> object?`
- `is there a(n) <color> <shape>?`, yes and no alternating over a split, so the
  two answers are balanced; the "no" questions name a colour or a shape that is
  in the image, so the question alone does not give the answer away
- `what size is the <color> <shape>?`
- `what shape is left of / right of / above / below the <color> <shape>?` and
  `what color is the shape left of ... ?`, when exactly one object lies that way

Multi-label questions: `which colors are in the image?` and `which shapes are
in the image?`, answered by every colour or shape present.
"""

import numpy as np

from mmkeras.data.classification_records import ClassificationData
from mmkeras.data.classification_records import ClassificationRecord
from mmkeras.data.records import LoadReport
from mmkeras.data.splits import SPLITS
from mmkeras.data.synthetic_captions import COLORS
from mmkeras.data.synthetic_captions import SHAPES
from mmkeras.data.synthetic_captions import SIZES
from mmkeras.data.synthetic_captions import SYNTHETIC_PREFIX
from mmkeras.data.synthetic_captions import SyntheticCaptions

YES_NO = ("yes", "no")
# Words of a relation in each layout, for the object before and after the anchor.
_RELATIONS = {"row": ("left of", "right of"), "column": ("above", "below")}
# Distinguishes the question stream from the scene stream of the same seed.
_QUESTION_STREAM = 7


def _single_label_candidates(objects, layout, rng, answer_yes):
    """`{kind: (question, answer)}` of every question type this scene allows."""
    candidates = {}
    shapes = [o["shape"] for o in objects]
    unique_shapes = [o for o in objects if shapes.count(o["shape"]) == 1]
    if unique_shapes:
        target = unique_shapes[rng.integers(len(unique_shapes))]
        candidates["color_of_shape"] = (
            f"what color is the {target['shape']}?", target["color"]
        )
    target = objects[rng.integers(len(objects))]
    candidates["shape_of_color"] = (
        f"what shape is the {target['color']} object?", target["shape"]
    )
    target = objects[rng.integers(len(objects))]
    candidates["size"] = (
        f"what size is the {target['color']} {target['shape']}?", target["size"]
    )

    present = {(o["color"], o["shape"]) for o in objects}
    if answer_yes:
        target = objects[rng.integers(len(objects))]
        pair = (target["color"], target["shape"])
    else:
        # Keep one word of a present object, so "no" is not told by the words
        # alone: a present colour with another shape, or the other way round.
        target = objects[rng.integers(len(objects))]
        if rng.random() < 0.5:
            options = [(target["color"], s) for s in SHAPES]
        else:
            options = [(c, target["shape"]) for c in COLORS]
        options = [pair for pair in options if pair not in present]
        pair = options[rng.integers(len(options))]
    article = "an" if pair[0][0] in "aeiou" else "a"
    candidates["exists"] = (
        f"is there {article} {pair[0]} {pair[1]}?", "yes" if answer_yes else "no"
    )

    if layout in _RELATIONS:
        # (anchor, the one object on that side, relation words): only where
        # exactly one object lies on that side, so the answer is unambiguous.
        before, after = _RELATIONS[layout]
        pairs = []
        for i, anchor in enumerate(objects):
            if i == 1:
                pairs.append((anchor, objects[0], before))
            if i == len(objects) - 2:
                pairs.append((anchor, objects[-1], after))
        anchor, other, words = pairs[rng.integers(len(pairs))]
        name = f"{anchor['color']} {anchor['shape']}"
        candidates["relation_shape"] = (
            f"what shape is {words} the {name}?", other["shape"]
        )
        anchor, other, words = pairs[rng.integers(len(pairs))]
        name = f"{anchor['color']} {anchor['shape']}"
        candidates["relation_color"] = (
            f"what color is the shape {words} the {name}?", other["color"]
        )
    return candidates


def _multi_label_candidates(objects):
    return {
        "colors": ("which colors are in the image?",
                   tuple(sorted({o["color"] for o in objects}))),
        "shapes": ("which shapes are in the image?",
                   tuple(sorted({o["shape"] for o in objects}))),
    }


def synthetic_vqa_label_names(multi_label=False):
    """The answers of `load_synthetic_vqa`, sorted (the class-id order)."""
    if multi_label:
        return sorted(set(COLORS) | set(SHAPES))
    return sorted(set(COLORS) | set(SHAPES) | set(SIZES) | set(YES_NO))


def load_synthetic_vqa(
    seed=0,
    image_size=64,
    num_train=2000,
    num_validation=200,
    num_test=200,
    multi_label=False,
    questions_per_image=3,
):
    """Builds the synthetic VQA data set.

    Every image gets `questions_per_image` questions of different types (fewer
    when its scene allows fewer, e.g. no spatial question about a single
    shape), chosen from `(seed, split, index)`, so the data set is
    deterministic for a seed.

    Args:
        seed: non-negative int, the seed of the scenes and the questions.
        image_size: side of the rendered images in pixels, 32 to 128.
        num_train: number of training images (not questions).
        num_validation: number of validation images.
        num_test: number of test images.
        multi_label: ask "which colors / shapes are in the image?" with every
            present colour or shape as a label, instead of one-answer questions.
        questions_per_image: int >= 1, the most questions asked of one image.

    Returns:
        A `ClassificationData` whose records have images
        `"synthetic:<split>:<index>"`, rendered by its `synthetic`.

    Example:

    >>> data = load_synthetic_vqa(num_train=4, num_validation=1, num_test=1)
    >>> record = data.splits["train"][0]
    >>> record.labels[0] in data.label_names
    True
    """
    if not isinstance(questions_per_image, int) or questions_per_image < 1:
        raise ValueError(
            "`questions_per_image` must be an int >= 1. "
            f"Received: questions_per_image={questions_per_image!r}"
        )
    synthetic = SyntheticCaptions(
        seed=seed,
        image_size=image_size,
        num_train=num_train,
        num_validation=num_validation,
        num_test=num_test,
    )
    splits = {}
    for split_index, split in enumerate(SPLITS):
        records = []
        num_yes_no = 0
        for index in range(synthetic.num_examples(split)):
            scene = synthetic.scene(split, index)
            rng = np.random.default_rng(
                [synthetic.seed, split_index, index, _QUESTION_STREAM]
            )
            if multi_label:
                candidates = _multi_label_candidates(scene["objects"])
            else:
                candidates = _single_label_candidates(
                    scene["objects"], scene["layout"], rng, num_yes_no % 2 == 0
                )
            kinds = list(candidates)
            chosen = rng.permutation(len(kinds))[:questions_per_image]
            for number, k in enumerate(sorted(chosen)):
                kind = kinds[k]
                question, answer = candidates[kind]
                if kind == "exists":
                    num_yes_no += 1
                labels = answer if isinstance(answer, tuple) else (answer,)
                records.append(
                    ClassificationRecord(
                        image=f"{SYNTHETIC_PREFIX}:{split}:{index}",
                        text=question,
                        labels=labels,
                        origin=f"synthetic VQA {split} image {index} question "
                        f"{number} (seed {synthetic.seed})",
                    )
                )
        splits[split] = records

    report = LoadReport()
    report.count_examples(splits, num_images=sum(synthetic.num_examples(split) for split in SPLITS))
    return ClassificationData(
        splits=splits,
        label_names=synthetic_vqa_label_names(multi_label),
        multi_label=multi_label,
        report=report,
        synthetic=synthetic,
    )
