"""Tests for the classification / VQA readers: synthetic VQA, easy-vqa,
classification manifests and Flickr8k image-caption matching."""

import collections
import json
import re

import easy_vqa
import numpy as np
import pytest

from mmkeras.data.classification_manifest import load_classification_manifest
from mmkeras.data.easy_vqa_format import load_easy_vqa
from mmkeras.data.flickr8k_format import load_flickr8k
from mmkeras.data.flickr8k_match import load_flickr8k_match
from mmkeras.data.records import SKIP_HINT
from mmkeras.data.records import BadExampleError
from mmkeras.data.splits import hash_split
from mmkeras.data.synthetic_captions import COLORS
from mmkeras.data.synthetic_captions import SHAPES
from mmkeras.data.synthetic_captions import SyntheticCaptions
from mmkeras.data.synthetic_captions import encode_png
from mmkeras.data.synthetic_captions import parse_synthetic_image_id
from mmkeras.data.synthetic_vqa import load_synthetic_vqa
from tests.test_synthetic_captions import shape_coverage
from tests.test_synthetic_captions import measure_shape

SIZE = 64


# --- synthetic VQA -------------------------------------------------------------


def _present_colors(image):
    """Colours of which the (noise-free) image has a solid patch."""
    pixels = image.astype(float)
    return {
        name for name, rgb in COLORS.items()
        if (np.abs(pixels - np.array(rgb)).max(axis=-1) <= 24).sum() >= 10
    }


class _Seen:
    """What the pixels of one noise-free image show, measured per colour."""

    def __init__(self, image):
        self.colors = _present_colors(image)
        self.shape, self.side, self.center = {}, {}, {}
        for color in self.colors:
            coverage = shape_coverage(image, color)
            self.side[color], self.shape[color] = measure_shape(coverage)
            ys, xs = np.indices(coverage.shape)
            self.center[color] = ((coverage * xs).sum() / coverage.sum(),
                                  (coverage * ys).sum() / coverage.sum())

    def on_side(self, anchor, relation):
        """Colours lying `relation` ("left of", ...) the shape of colour `anchor`."""
        axis, sign = {"left of": (0, -1), "right of": (0, 1), "above": (1, -1),
                      "below": (1, 1)}[relation]
        return [c for c in self.colors if c != anchor
                and sign * (self.center[c][axis] - self.center[anchor][axis]) > 0]


def _check_answer(seen, question, answer):
    """Asserts that `answer` is what the pixels say; returns the question type."""
    if m := re.fullmatch(r"what color is the (\w+)\?", question):
        assert [c for c in seen.colors if seen.shape[c] == m[1]] == [answer]
        return "color_of_shape"
    if m := re.fullmatch(r"what shape is the (\w+) object\?", question):
        assert seen.shape[m[1]] == answer
        return "shape_of_color"
    if m := re.fullmatch(r"what size is the (\w+) (\w+)\?", question):
        assert seen.shape[m[1]] == m[2]
        assert answer == ("small" if seen.side[m[1]] <= 0.25 * SIZE else "large")
        assert seen.side[m[1]] <= 0.25 * SIZE or seen.side[m[1]] >= 0.33 * SIZE
        return "size"
    if m := re.fullmatch(r"is there an? (\w+) (\w+)\?", question):
        there = m[1] in seen.colors and seen.shape[m[1]] == m[2]
        assert answer == ("yes" if there else "no")
        return "exists"
    relation = r"(left of|right of|above|below) the (\w+) (\w+)\?"
    if m := re.fullmatch(r"what shape is " + relation, question):
        assert seen.shape[m[2]] == m[3]
        (other,) = seen.on_side(m[2], m[1])
        assert seen.shape[other] == answer
        return "relation_shape"
    if m := re.fullmatch(r"what color is the shape " + relation, question):
        assert seen.shape[m[2]] == m[3]
        assert seen.on_side(m[2], m[1]) == [answer]
        return "relation_color"
    raise AssertionError(f"unknown question {question!r}")


@pytest.fixture(scope="module")
def vqa():
    return load_synthetic_vqa(seed=4, image_size=SIZE, num_train=120, num_validation=10,
                              num_test=10)


def test_synthetic_vqa_answers_match_the_pixels(vqa):
    # The same scenes without pixel noise: the geometry helpers need clean pixels.
    clean = SyntheticCaptions(seed=4, image_size=SIZE, num_train=120, num_validation=10,
                              num_test=10, noise_stddev=0)
    kinds = collections.Counter()
    seen = {}
    for record in vqa.splits["train"]:
        if record.image not in seen:
            seen[record.image] = _Seen(clean.render_image(record.image))
        (answer,) = record.labels
        assert answer in vqa.label_names
        kinds[_check_answer(seen[record.image], record.text, answer)] += 1
    assert set(kinds) == {"color_of_shape", "shape_of_color", "size", "exists",
                          "relation_shape", "relation_color"}
    # The noisy images that the pipeline renders show the same scenes.
    image = vqa.synthetic.render_image("synthetic:train:0")
    assert image.shape == (SIZE, SIZE, 3)
    assert _present_colors(clean.render_image("synthetic:train:0")) <= {
        c for c in COLORS if (np.abs(image.astype(float) - COLORS[c]).max(-1) <= 40).any()}


def test_synthetic_vqa_needs_image_and_question(vqa):
    records = [r for split in vqa.splits.values() for r in split]
    by_image = collections.defaultdict(list)
    by_question = collections.defaultdict(set)
    for record in records:
        by_image[record.image].append(record)
        by_question[record.text].add(record.labels)
    assert len(by_image) == 140
    assert all(2 <= len(questions) <= 3 for questions in by_image.values())
    # Same image, different answers: the question matters.
    assert np.mean([len({r.labels for r in rs}) > 1 for rs in by_image.values()]) > 0.9
    # Same question, different answers: the image matters.
    repeated = [answers for text, answers in by_question.items()
                if sum(r.text == text for r in records) >= 5]
    assert len(repeated) >= 10
    assert np.mean([len(answers) >= 2 for answers in repeated]) > 0.9
    answers = collections.Counter(r.labels[0] for r in vqa.splits["train"])
    assert abs(answers["yes"] - answers["no"]) <= 1 and answers["yes"] >= 20
    for split, split_records in vqa.splits.items():
        assert all(parse_synthetic_image_id(r.image)[0] == split for r in split_records)


def test_synthetic_vqa_is_deterministic_for_a_seed(vqa):
    again = load_synthetic_vqa(seed=4, image_size=SIZE, num_train=120, num_validation=10,
                               num_test=10)
    other = load_synthetic_vqa(seed=5, image_size=SIZE, num_train=120, num_validation=10,
                               num_test=10)
    assert again.splits == vqa.splits and again.label_names == vqa.label_names
    assert other.splits["train"] != vqa.splits["train"]
    np.testing.assert_array_equal(again.synthetic.render_image("synthetic:test:3"),
                                  vqa.synthetic.render_image("synthetic:test:3"))
    assert vqa.report.split_sizes == {s: len(r) for s, r in vqa.splits.items()}


def test_synthetic_vqa_multi_label_lists_every_color_and_shape():
    data = load_synthetic_vqa(seed=2, image_size=SIZE, num_train=40, num_validation=2,
                              num_test=2, multi_label=True)
    clean = SyntheticCaptions(seed=2, image_size=SIZE, num_train=40, num_validation=2,
                              num_test=2, noise_stddev=0)
    assert data.multi_label and data.label_names == sorted(set(COLORS) | set(SHAPES))
    several = 0
    for record in data.splits["train"]:
        seen = _Seen(clean.render_image(record.image))
        if record.text == "which colors are in the image?":
            assert set(record.labels) == seen.colors
        else:
            assert record.text == "which shapes are in the image?"
            assert set(record.labels) == set(seen.shape.values())
        several += len(record.labels) > 1
    assert several > 10


# --- easy-vqa ------------------------------------------------------------------


@pytest.fixture(scope="module")
def easy():
    return load_easy_vqa()


def test_easy_vqa_counts_labels_and_image_split(easy):
    train, validation = easy.splits["train"], easy.splits["validation"]
    assert len(train) + len(validation) == 38575 and len(easy.splits["test"]) == 9673
    assert easy.label_names == easy_vqa.get_answers() and len(easy.label_names) == 13
    assert not easy.multi_label
    train_images = {r.image for r in train}
    validation_images = {r.image for r in validation}
    assert not train_images & validation_images
    assert len(train_images) + len(validation_images) == 4000
    assert len(validation_images) == 400
    assert len({r.image for r in easy.splits["test"]}) == 1000
    # Records keep the package's pairs of question, answer and image.
    texts, answers, image_ids = easy_vqa.get_train_questions()
    paths = easy_vqa.get_train_image_paths()
    first = validation[0]
    index = int(re.search(r"\[(\d+)\]$", first.origin)[1])
    assert (first.text, first.labels, first.image) == (
        texts[index], (answers[index],), paths[image_ids[index]])
    assert easy.report.skipped_bad_examples == 0 and easy.report.num_images == 5000


def test_easy_vqa_split_follows_the_seed(easy):
    again = load_easy_vqa(seed=0, max_train=100)
    other = load_easy_vqa(seed=1, max_train=100)
    assert again.splits["validation"] == easy.splits["validation"]
    assert again.splits["train"] == easy.splits["train"][:100]
    assert {r.image for r in other.splits["validation"]} != {
        r.image for r in easy.splits["validation"]}


@pytest.fixture
def fake_easy_vqa(tmp_path, monkeypatch):
    """easy_vqa with five train questions, some bad, and one test question."""
    good = tmp_path / "0.png"
    good.write_bytes(encode_png(np.zeros((8, 8, 3), np.uint8)))
    truncated = tmp_path / "1.png"
    truncated.write_bytes(good.read_bytes()[:-20])
    questions = (
        ["what color is the shape?", "is there a cat?", "   ", "what shape?",
         "what shape is it?"],
        ["red", "maybe", "yes", "circle", "circle"],
        [0, 0, 0, 1, 7],
    )
    monkeypatch.setattr(easy_vqa, "get_train_questions", lambda: questions)
    monkeypatch.setattr(easy_vqa, "get_test_questions",
                        lambda: (["what color?"], ["red"], [0]))
    images = {0: str(good), 1: str(truncated)}
    monkeypatch.setattr(easy_vqa, "get_train_image_paths", lambda: images)
    monkeypatch.setattr(easy_vqa, "get_test_image_paths", lambda: images)


def test_easy_vqa_bad_examples_name_file_and_row(fake_easy_vqa):
    with pytest.raises(BadExampleError) as error:
        load_easy_vqa(validation_fraction=0)
    message = str(error.value)
    assert re.search(r"train/questions\.json\[1\]: answer 'maybe'", message)
    assert message.endswith(SKIP_HINT)
    data = load_easy_vqa(validation_fraction=0, skip_bad_examples=True)
    assert [r.text for r in data.splits["train"]] == ["what color is the shape?"]
    assert len(data.splits["test"]) == 1
    assert data.report.skipped_bad_examples == 4
    reasons = "\n".join(data.report.skipped_reasons)
    for pattern in (r"\[1\]: answer 'maybe'", r"\[2\]: empty question",
                    r"\[3\]: image file .*1\.png is a truncated PNG",
                    r"\[4\]: image 7 has no PNG"):
        assert re.search(pattern, reasons), pattern


# --- classification manifests --------------------------------------------------


@pytest.fixture
def folder(tmp_path):
    """Four small PNGs, an empty file and a truncated PNG in `tmp_path/img`."""
    (tmp_path / "img").mkdir()
    for i in range(4):
        array = np.full((8, 8, 3), 40 * i, np.uint8)
        (tmp_path / "img" / f"{i}.png").write_bytes(encode_png(array))
    (tmp_path / "img" / "empty.png").write_bytes(b"")
    (tmp_path / "img" / "cut.png").write_bytes(
        (tmp_path / "img" / "0.png").read_bytes()[:-20])
    return tmp_path


def write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_manifest_csv_single_label_with_split_column(folder):
    path = write(folder / "m.csv", [
        "image,text,label,split",
        "img/0.png,is it dark?,yes,train",
        'img/1.png,"what, if anything, is it?",cat,train',
        "img/2.png,is it dark?,no,val",
        "img/3.png,is it dark?,yes,test",
    ])
    # "no" never occurs in train, so the validation row is a bad example.
    with pytest.raises(BadExampleError, match=f"{re.escape(str(path))} row 4: label 'no'"):
        load_classification_manifest(path)
    data = load_classification_manifest(path, skip_bad_examples=True)
    assert not data.multi_label and data.label_names == ["cat", "yes"]
    assert [r.text for r in data.splits["train"]] == ["is it dark?",
                                                      "what, if anything, is it?"]
    assert data.splits["train"][1].image == str(folder / "img" / "1.png")
    assert data.splits["train"][1].origin == f"{path} row 3"
    assert data.splits["test"][0].labels == ("yes",)
    assert data.splits["validation"] == []
    assert data.report.skipped_bad_examples == 1
    assert data.report.skipped_reasons == [
        f"{path} row 4: label 'no' is unknown (no training row has it)"]


def test_manifest_jsonl_multi_label_and_hash_split(folder):
    rows = [{"image": f"img/{i}.png", "text": f"report {i}", "labels": ["a", "b"][: 1 + i % 2]}
            for i in range(4)]
    rows.append({"image": "img/0.png", "text": "single", "label": "a"})
    path = write(folder / "m.jsonl", [json.dumps(row) for row in rows])
    data = load_classification_manifest(path, label_names=["b", "a", "c"])
    assert data.multi_label and data.label_names == ["b", "a", "c"]
    got = {(r.text, r.labels, split) for split, rs in data.splits.items() for r in rs}
    expected = {(row["text"], tuple(row.get("labels", [row.get("label")])),
                 hash_split(row["image"])) for row in rows}
    assert got == expected
    assert data.report.split_sizes == {s: len(r) for s, r in data.splits.items()}


def test_manifest_csv_multi_label_pipe_separated(folder):
    path = write(folder / "m.csv", [
        "image,text,labels,split",
        "img/0.png,first,cat|dog,train",
        "img/1.png,second, dog | |dog ,train",
        "img/2.png,third,cat,test",
    ])
    data = load_classification_manifest(path)
    assert data.multi_label and data.label_names == ["cat", "dog"]
    assert [r.labels for r in data.splits["train"]] == [("cat", "dog"), ("dog",)]
    assert data.splits["test"][0].labels == ("cat",)


GOOD_ROW = "img/0.png,a question,yes,train"


@pytest.mark.parametrize("row, reason", [
    ("img/1.png,a question", "missing label"),
    (",a question,yes,train", "missing image path"),
    ("img/1.png,   ,yes,train", "empty text"),
    ("img/9.png,a question,yes,train", "does not exist"),
    ("img/empty.png,a question,yes,train", "is empty"),
    ("img/cut.png,a question,yes,train", "truncated PNG"),
    ("img/1.png,a question,,train", "no label"),
    ("img/1.png,a question,maybe,train", "label 'maybe' is unknown (not in label_names"),
    ("img/1.png,a question,yes,holdout", "unknown split"),
])
def test_manifest_csv_bad_rows(folder, row, reason):
    path = write(folder / "m.csv", ["image,text,label,split", GOOD_ROW, row, GOOD_ROW])
    with pytest.raises(BadExampleError) as error:
        load_classification_manifest(path, label_names=["yes", "no"])
    message = str(error.value)
    assert message.startswith(f"{path} row 3: ") and reason in message, message
    assert message.endswith(SKIP_HINT)
    data = load_classification_manifest(path, skip_bad_examples=True,
                                        label_names=["yes", "no"])
    assert data.report.skipped_bad_examples == 1
    assert [r.origin for r in data.splits["train"]] == [f"{path} row 2", f"{path} row 4"]


@pytest.mark.parametrize("row, reason", [
    ({"image": "img/1.png", "label": "yes"}, "missing text"),
    ({"text": "q", "label": "yes"}, "missing image"),
    ({"image": "img/1.png", "text": "q"}, "missing label"),
    ({"image": "img/1.png", "text": "", "label": "yes"}, "empty text"),
    ({"image": "img/1.png", "text": "q", "labels": []}, "no label"),
    ({"image": "img/1.png", "text": "q", "labels": "yes"}, "a list of strings"),
    ({"image": "img/cut.png", "text": "q", "label": "yes"}, "truncated PNG"),
    ({"image": "img/1.png", "text": "q", "label": "no", "split": "validation"},
     "label 'no' is unknown (no training row has it)"),
])
def test_manifest_jsonl_bad_rows(folder, row, reason):
    good = json.dumps({"image": "img/0.png", "text": "q", "label": "yes", "split": "train"})
    path = write(folder / "m.jsonl", [good, json.dumps(row), good])
    with pytest.raises(BadExampleError) as error:
        load_classification_manifest(path)
    message = str(error.value)
    assert message.startswith(f"{path} line 2: ") and reason in message, message
    assert message.endswith(SKIP_HINT)
    data = load_classification_manifest(path, skip_bad_examples=True)
    assert data.report.skipped_bad_examples == 1
    assert [r.origin for r in data.splits["train"]] == [f"{path} line 1", f"{path} line 3"]


def test_manifest_header_problems(folder):
    with pytest.raises(ValueError, match="label"):
        load_classification_manifest(write(folder / "a.csv", ["image,text", GOOD_ROW]))
    with pytest.raises(ValueError, match="both"):
        load_classification_manifest(write(folder / "b.csv", ["image,text,label,labels"]))
    with pytest.raises(ValueError, match="no usable training rows"):
        load_classification_manifest(
            write(folder / "c.csv", ["image,text,label,split", "img/0.png,q,yes,test"]))


# --- Flickr8k image-caption matching -------------------------------------------


def test_flickr8k_match(flickr8k_dir):
    data = load_flickr8k_match(flickr8k_dir, seed=0)
    captions = load_flickr8k(flickr8k_dir)
    assert data.label_names == ["match", "no_match"] and not data.multi_label
    assert {s: len(r) for s, r in data.splits.items()} == {
        "train": 1600, "validation": 200, "test": 200}
    for split, records in data.splits.items():
        own = {r.image: set(r.captions) for r in captions[split]}
        split_of_caption = {c: r.image for r in captions[split] for c in r.captions}
        assert collections.Counter(r.labels for r in records) == {
            ("match",): len(own), ("no_match",): len(own)}
        assert {r.image for r in records} == set(own)
        for record in records:
            if record.labels == ("match",):
                assert record.text in own[record.image]
            else:
                assert record.text not in own[record.image]
                # From another image of the same split.
                assert record.text in split_of_caption
    again = load_flickr8k_match(flickr8k_dir, seed=0)
    other = load_flickr8k_match(flickr8k_dir, seed=1)
    assert again.splits == data.splits
    assert other.splits["train"] != data.splits["train"]
    # The positives do not all use the first caption: the seed picks among five.
    firsts = {r.image: r.captions[0] for r in captions["train"]}
    picked = [r.text == firsts[r.image] for r in data.splits["train"] if r.labels == ("match",)]
    assert 0.1 < np.mean(picked) < 0.4
