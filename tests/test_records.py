"""Tests for caption records, load reports and image-file validation."""

import io

import numpy as np
import pytest
from PIL import Image

from mmkeras.data.records import BadExampleError
from mmkeras.data.records import CaptionRecord
from mmkeras.data.records import LoadReport
from mmkeras.data.records import validate_image_file
from mmkeras.data.records import validate_records


def _image_bytes(image_format):
    buffer = io.BytesIO()
    pixels = np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3)
    Image.fromarray(pixels).save(buffer, format=image_format)
    return buffer.getvalue()


@pytest.fixture
def jpeg_bytes():
    return _image_bytes("JPEG")


@pytest.fixture
def png_bytes():
    return _image_bytes("PNG")


def _write(directory, name, data):
    path = directory / name
    path.write_bytes(data)
    return str(path)


def test_valid_jpeg_and_png(tmp_path, jpeg_bytes, png_bytes):
    assert validate_image_file(_write(tmp_path, "a.jpg", jpeg_bytes)) is None
    assert validate_image_file(_write(tmp_path, "a.png", png_bytes)) is None
    # The check goes by content, not by the file name.
    assert validate_image_file(_write(tmp_path, "png.jpg", png_bytes)) is None


def test_trailing_padding_is_tolerated(tmp_path, jpeg_bytes, png_bytes):
    assert validate_image_file(_write(tmp_path, "a.jpg", jpeg_bytes + b"\n")) is None
    padded = jpeg_bytes + b"\0" * 8
    assert validate_image_file(_write(tmp_path, "b.jpg", padded)) is None
    assert validate_image_file(_write(tmp_path, "c.png", png_bytes + b"\r\n")) is None
    # Padding beyond a few bytes means something else is wrong with the file.
    reason = validate_image_file(_write(tmp_path, "d.jpg", jpeg_bytes + b"\0" * 100))
    assert reason is not None and "truncated JPEG" in reason


def test_missing_file(tmp_path):
    path = str(tmp_path / "nope.jpg")
    reason = validate_image_file(path)
    assert path in reason and "does not exist" in reason


def test_directory_is_not_an_image(tmp_path):
    reason = validate_image_file(tmp_path)
    assert str(tmp_path) in reason and "not a regular file" in reason


def test_empty_file(tmp_path):
    path = _write(tmp_path, "empty.jpg", b"")
    reason = validate_image_file(path)
    assert path in reason and "empty" in reason


def test_not_an_image(tmp_path):
    path = _write(tmp_path, "text.jpg", b"hello, this is not an image at all\n")
    reason = validate_image_file(path)
    assert path in reason and "neither JPEG nor PNG" in reason


def test_truncated_jpeg(tmp_path, jpeg_bytes):
    path = _write(tmp_path, "cut.jpg", jpeg_bytes[: len(jpeg_bytes) // 2])
    reason = validate_image_file(path)
    assert path in reason and "truncated JPEG" in reason
    # Losing only the final marker byte is enough to be caught.
    assert "truncated JPEG" in validate_image_file(
        _write(tmp_path, "cut2.jpg", jpeg_bytes[:-1])
    )


def test_truncated_png(tmp_path, png_bytes):
    path = _write(tmp_path, "cut.png", png_bytes[:-12])
    reason = validate_image_file(path)
    assert path in reason and "truncated PNG" in reason


def test_validate_records_raises_with_origin(tmp_path, jpeg_bytes):
    good_path = _write(tmp_path, "good.jpg", jpeg_bytes)
    good = CaptionRecord(good_path, ("a",), "x.csv row 2")
    bad = CaptionRecord(str(tmp_path / "gone.jpg"), ("b",), "x.csv rows 3-4")
    with pytest.raises(BadExampleError) as info:
        validate_records([good, bad], skip_bad_examples=False, report=LoadReport())
    message = str(info.value)
    assert message.startswith("x.csv rows 3-4: image file ")
    assert "gone.jpg" in message and "--skip_bad_examples" in message
    assert isinstance(info.value, ValueError)


def test_validate_records_skips_and_counts(tmp_path, jpeg_bytes):
    good = CaptionRecord(_write(tmp_path, "good.jpg", jpeg_bytes), ("a",), "r2")
    empty = CaptionRecord(_write(tmp_path, "empty.jpg", b""), ("b",), "r3")
    missing = CaptionRecord(str(tmp_path / "gone.jpg"), ("c",), "r4")
    report = LoadReport()
    kept = validate_records([empty, good, missing], True, report)
    assert kept == [good]
    assert report.skipped_bad_examples == 2
    assert report.skipped_reasons[0].startswith("r3: ")
    assert report.skipped_reasons[1].startswith("r4: ")


def test_report_count_and_summary():
    report = LoadReport(dropped_empty_captions=1)
    report.count({
        "train": [CaptionRecord("a", ("x", "y"), "o"), CaptionRecord("b", ("z",), "o")],
        "validation": [],
        "test": [CaptionRecord("c", ("w",), "o")],
    })
    for i in range(7):
        report.skip(f"f.csv row {i}: broken")
    assert (report.num_images, report.num_captions) == (3, 4)
    summary = report.summary()
    assert "3 images" in summary and "4 captions" in summary
    assert "train 2, validation 0, test 1" in summary
    assert "skipped 7 bad examples" in summary and "dropped 1 empty" in summary
    assert "f.csv row 0: broken" in summary and "2 more" in summary
