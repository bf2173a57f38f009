"""Tests for the built-in synthetic captioning data set."""

import collections
import hashlib
import io

import numpy as np
import pytest
from PIL import Image

from mmkeras.data.records import validate_image_file
from mmkeras.data.synthetic_captions import COLORS
from mmkeras.data.synthetic_captions import SHAPES
from mmkeras.data.synthetic_captions import SyntheticCaptions
from mmkeras.data.synthetic_captions import encode_jpeg
from mmkeras.data.synthetic_captions import encode_png
from mmkeras.data.synthetic_captions import parse_synthetic_image_id


def _digest(image):
    return hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()


def _parse(caption):
    """Canonical caption -> (layout, [(size, colour, shape), ...]) in reading order."""
    words = caption.replace(" ,", "").split()
    layout = "single"
    if words[-3:] == ["in", "a", "row"] or "left" in words:
        layout = "row"
    elif words[-3:] == ["in", "a", "column"] or "above" in words:
        layout = "column"
    objects = [
        tuple(words[i + 1 : i + 4])
        for i, word in enumerate(words)
        if word == "a" and i + 3 < len(words) and words[i + 1] in ("small", "large")
    ]
    return layout, objects


def shape_coverage(image, color):
    """How much of each pixel the shape of `color` covers, 0 to 1 (noise-free images).

    Anti-aliased edge pixels are blends of the shape and the background colour:
    projecting each pixel on the background -> fill segment gives its coverage, which
    measures the shape's geometry to a fraction of a pixel even when it is small.
    """
    pixels = image.astype(float)
    core = np.abs(pixels - np.array(COLORS[color])).max(axis=-1) <= 24
    ys, xs = np.nonzero(core)
    assert len(ys) > 0, f"no {color} pixels"
    fill = pixels[core].mean(axis=0)
    background = pixels[0, 0]
    coverage = (pixels - background) @ (fill - background)
    coverage /= (fill - background) @ (fill - background)
    region = np.zeros(coverage.shape)
    region[ys.min() - 1 : ys.max() + 2, xs.min() - 1 : xs.max() + 2] = 1
    return np.clip(coverage, 0, 1) * region


def measure_shape(coverage):
    """(side, shape) of a shape from its coverage map, by simple geometry."""
    rows, columns = coverage.sum(axis=1), coverage.sum(axis=0)
    width, height, area = rows.max(), columns.max(), coverage.sum()
    center = (rows * np.arange(len(rows))).sum() / area
    above, below = np.interp([center - height / 4, center + height / 4],
                             np.arange(len(rows)), rows) / width
    side = max(width, height)
    if area / (width * height) > 0.9:
        return side, "square"
    # A triangle's widest row is its base; the other shapes are symmetric.
    if below - above > 0.25:
        return side, "triangle"
    if area / (width * height) > 0.7:
        return side, "circle"
    # A quarter of the way from the centre, a cross is as wide as its vertical arm
    # (about a third of its width), a diamond half as wide as it is.
    return side, "cross" if above + below < 0.95 else "diamond"


def test_render_shapes_and_determinism():
    data = SyntheticCaptions(seed=3, num_train=20, num_validation=5, num_test=5)
    again = SyntheticCaptions(seed=3, num_train=20, num_validation=5, num_test=5)
    for split in ("train", "validation", "test"):
        for index in range(5):
            image, captions = data.render(split, index)
            assert image.shape == (64, 64, 3) and image.dtype == np.uint8
            image_again, captions_again = again.render(split, index)
            np.testing.assert_array_equal(image, image_again)
            assert captions == captions_again == data.captions(split, index)


def test_different_seeds_differ():
    a = SyntheticCaptions(seed=0, num_train=50)
    b = SyntheticCaptions(seed=1, num_train=50)
    captions_a = [a.captions("train", i) for i in range(50)]
    captions_b = [b.captions("train", i) for i in range(50)]
    assert sum(x != y for x, y in zip(captions_a, captions_b)) > 40
    for i in range(5):
        assert _digest(a.render("train", i)[0]) != _digest(b.render("train", i)[0])


def test_splits_never_share_an_image():
    data = SyntheticCaptions(seed=0, num_train=800, num_validation=200, num_test=200)
    digests = {
        split: {
            _digest(data.render(split, i)[0]) for i in range(data.num_examples(split))
        }
        for split in ("train", "validation", "test")
    }
    assert len(digests["train"]) == 800
    assert len(digests["validation"]) == 200 and len(digests["test"]) == 200
    assert not digests["train"] & digests["validation"]
    assert not digests["train"] & digests["test"]
    assert not digests["validation"] & digests["test"]


def test_captions_cover_the_grammar():
    data = SyntheticCaptions(seed=0, num_train=600)
    vocabulary = set(data.vocabulary())
    assert len(vocabulary) >= 25
    seen = collections.Counter()
    for index in range(600):
        captions = data.captions("train", index)
        assert len(set(captions)) >= 2
        for caption in captions:
            assert 1 <= len(caption.split()) <= 20
            assert set(caption.split()) <= vocabulary, caption
        layout, objects = _parse(captions[0])
        seen[layout, len(objects)] += 1
        for size, color, shape in objects:
            seen[size] += 1
            seen[color] += 1
            seen[shape] += 1
        # Colours within an image are distinct, so each object is identifiable.
        assert len({color for _, color, _ in objects}) == len(objects)
    assert all(seen[color] > 0 for color in COLORS) and len(COLORS) >= 6
    assert all(seen[shape] > 0 for shape in SHAPES) and len(SHAPES) >= 4
    assert seen["small"] > 0 and seen["large"] > 0
    for layout in [("single", 1), ("row", 2), ("column", 2), ("row", 3), ("column", 3)]:
        assert seen[layout] >= 30, seen


def test_captions_match_the_pixels():
    """Size, colour, shape and order in the canonical caption are visible."""
    size = 64
    data = SyntheticCaptions(seed=5, num_train=150, image_size=size, noise_stddev=0)
    for index in range(150):
        image, captions = data.render("train", index)
        layout, objects = _parse(captions[0])
        extents = []
        for object_size, color, shape in objects:
            coverage = shape_coverage(image, color)
            side, seen_shape = measure_shape(coverage)
            if object_size == "small":
                assert side <= 0.25 * size, (index, captions[0], side)
            else:
                assert side >= 0.33 * size, (index, captions[0], side)
            assert seen_shape == shape, (index, captions[0])
            ys, xs = np.nonzero(coverage > 0.5)
            extents.append((xs.min(), xs.max(), ys.min(), ys.max()))
        for first, second in zip(extents, extents[1:]):
            if layout == "row":
                assert first[1] < second[0], (index, captions[0])
            elif layout == "column":
                assert first[3] < second[2], (index, captions[0])


def test_captions_do_not_depend_on_image_size():
    small = SyntheticCaptions(seed=2, image_size=32, num_train=30)
    large = SyntheticCaptions(seed=2, image_size=128, num_train=30)
    for index in range(30):
        assert small.captions("train", index) == large.captions("train", index)
    assert small.render("train", 0)[0].shape == (32, 32, 3)
    assert large.render("train", 0)[0].shape == (128, 128, 3)


def test_records_and_image_ids():
    data = SyntheticCaptions(seed=1, num_train=7, num_validation=3, num_test=2)
    records = data.records("validation")
    assert [r.image for r in records] == [f"synthetic:validation:{i}" for i in range(3)]
    assert records[2].captions == data.captions("validation", 2)
    np.testing.assert_array_equal(
        data.render_image("synthetic:validation:2"), data.render("validation", 2)[0]
    )
    assert parse_synthetic_image_id("synthetic:test:12") == ("test", 12)
    assert [data.num_examples(s) for s in ("train", "validation", "test")] == [7, 3, 2]
    bad_ids = ["synthetic:dev:1", "synthetic:train", "synthetic:train:-1", "x:train:1"]
    for bad in bad_ids:
        with pytest.raises(ValueError, match="synthetic:<split>:<index>"):
            data.render_image(bad)
    with pytest.raises(ValueError, match=r"index.*Received: index=7"):
        data.render("train", 7)
    with pytest.raises(ValueError, match="Received: split='dev'"):
        data.records("dev")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"image_size": 16},
        {"image_size": 256},
        {"seed": -1},
        {"num_train": 0},
        {"num_test": -1},
        {"noise_stddev": 50},
    ],
)
def test_invalid_arguments(kwargs):
    with pytest.raises(ValueError, match="Received"):
        SyntheticCaptions(**kwargs)


def test_encoders_write_valid_files(tmp_path):
    image = SyntheticCaptions(num_train=1).render("train", 0)[0]
    for name, data in [("x.png", encode_png(image)), ("x.jpg", encode_jpeg(image))]:
        path = tmp_path / name
        path.write_bytes(data)
        assert validate_image_file(path) is None
        decoded = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        assert decoded.shape == image.shape
        if name.endswith(".png"):
            np.testing.assert_array_equal(decoded, image)
        else:
            assert np.abs(decoded.astype(int) - image).mean() < 8
