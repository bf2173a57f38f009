"""Reader of the easy-vqa data set (the `easy-vqa` PyPI package).

easy-vqa (https://github.com/vzhou842/easy-VQA) has 64x64 PNG images of one
coloured shape and questions about it with 13 possible answers: 38,575
training questions on 4,000 images and 9,673 test questions on 1,000 images.
It has no validation split, so one is cut from the training images: by image,
so that no image is seen in training and validation.
"""

import os

import easy_vqa
import numpy as np

from mmkeras.data.classification_records import ClassificationData
from mmkeras.data.classification_records import ClassificationRecord
from mmkeras.data.manifest_io import clean_text
from mmkeras.data.records import LoadReport
from mmkeras.data.records import image_file_checker
from mmkeras.data.records import reject_example
from mmkeras.data.splits import SPLITS


def _questions_file(split):
    """The JSON file the package reads a split's questions from (for messages)."""
    return os.path.join(os.path.dirname(easy_vqa.__file__), "data", split,
                        "questions.json")


def _read_questions(split, questions, image_paths):
    """`[(where, question, answer, image_id, image_path or None)]` in file order."""
    texts, answers, image_ids = questions
    if not len(texts) == len(answers) == len(image_ids):
        raise ValueError(
            f"easy-vqa {split} questions, answers and image ids differ in length: "
            f"{len(texts)}, {len(answers)}, {len(image_ids)}."
        )
    path = _questions_file(split)
    return [
        (f"{path}[{i}]", text, answer, image_id, image_paths.get(image_id))
        for i, (text, answer, image_id) in enumerate(zip(texts, answers, image_ids))
    ]


def _records(rows, split, answers, skip_bad_examples, report):
    """Checks rows and turns the good ones into `ClassificationRecord`s.

    Each image file is checked once (header and end, not decoded), however many
    questions it has; each question of a bad image is one bad example.
    """
    image_is_fine = image_file_checker(skip_bad_examples, report)
    records = []
    for where, text, answer, image_id, image_path in rows:
        text = clean_text(str(text))
        if not text:
            reject_example(where, "empty question", skip_bad_examples, report)
            continue
        if answer not in answers:
            reject_example(
                where,
                f"answer {answer!r} is not one of the {len(answers)} easy-vqa "
                f"answers ({', '.join(sorted(answers))})",
                skip_bad_examples,
                report,
            )
            continue
        if image_path is None:
            reject_example(
                where, f"image {image_id!r} has no PNG file in the easy-vqa {split} "
                "images", skip_bad_examples, report,
            )
            continue
        if not image_is_fine(image_path, where):
            continue
        records.append(ClassificationRecord(image_path, text, (answer,), where))
    return records


def load_easy_vqa(validation_fraction=0.1, seed=0, skip_bad_examples=False,
                  max_train=0):
    """Loads easy-vqa from its installed package.

    Training questions are split into train and validation by image: a seeded
    random `validation_fraction` of the training images (before bad examples
    are left out, so skipping one never moves another image) gives validation.
    The package's test questions are the test split. Errors name the questions
    file and the question's index in it, e.g. `.../train/questions.json[12]`.

    Args:
        validation_fraction: fraction of the training images, 0 to < 1, whose
            questions form the validation split.
        seed: int, the seed of the train/validation split.
        skip_bad_examples: count and leave out questions with an empty text,
            an answer outside the 13 answers, or a missing or corrupt image,
            instead of raising `BadExampleError`.
        max_train: keep only the first `max_train` training questions (in file
            order, after the split); 0 keeps all.

    Returns:
        A `ClassificationData` with `label_names` in the order of easy-vqa's
        `answers.txt`; records in file order.
    """
    if not 0 <= validation_fraction < 1:
        raise ValueError(
            "`validation_fraction` must be in [0, 1). "
            f"Received: validation_fraction={validation_fraction!r}"
        )
    if not isinstance(max_train, int) or max_train < 0:
        raise ValueError(
            f"`max_train` must be an int >= 0 (0: all). Received: max_train={max_train!r}"
        )
    label_names = list(easy_vqa.get_answers())
    answers = set(label_names)
    report = LoadReport()

    train_rows = _read_questions(
        "train", easy_vqa.get_train_questions(), easy_vqa.get_train_image_paths()
    )
    test_rows = _read_questions(
        "test", easy_vqa.get_test_questions(), easy_vqa.get_test_image_paths()
    )
    # Sorted before the permutation: the split depends on the seed, not on the
    # order in which the package lists files.
    train_images = sorted({row[3] for row in train_rows}, key=str)
    order = np.random.default_rng(seed).permutation(len(train_images))
    num_validation = int(round(len(train_images) * validation_fraction))
    validation_images = {train_images[i] for i in order[:num_validation]}
    rows = {
        "train": [row for row in train_rows if row[3] not in validation_images],
        "validation": [row for row in train_rows if row[3] in validation_images],
        "test": test_rows,
    }
    if max_train:
        rows["train"] = rows["train"][:max_train]

    splits = {
        split: _records(rows[split], "test" if split == "test" else "train",
                        answers, skip_bad_examples, report)
        for split in SPLITS
    }
    report.count_examples(splits)
    return ClassificationData(splits=splits, label_names=label_names, report=report)
