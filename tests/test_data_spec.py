"""The one `--data` parser: forms, arguments, and errors that name what is wrong."""

import pytest

from mmkeras.data.data_spec import DATA_KINDS, parse_data_spec


@pytest.mark.parametrize(
    "text, kind, args",
    [
        ("synthetic", "synthetic", ()),
        ("easy_vqa", "easy_vqa", ()),
        ("flickr8k:../shared/data/flickr8k-1k", "flickr8k", ("../shared/data/flickr8k-1k",)),
        ("FLICKR8K_MATCH:/d", "flickr8k_match", ("/d",)),
        ("csv:m.csv", "csv", ("m.csv",)),
        ("jsonl:m.jsonl", "jsonl", ("m.jsonl",)),
        ("tfrecord:/data/tfr", "tfrecord", ("/data/tfr",)),
        ("coco:ann/c.json:images", "coco", ("ann/c.json", "images")),
        # The split falls after the JSON file name, so a path may hold ':'.
        ("coco:C:/ann/c.json:D:/images", "coco", ("C:/ann/c.json", "D:/images")),
    ],
)
def test_forms(text, kind, args):
    spec = parse_data_spec(text)
    assert (spec.kind, spec.args, spec.text) == (kind, args, text)


@pytest.mark.parametrize(
    "text, problem",
    [
        ("parquet:/x", "Unknown data kind 'parquet'"),
        ("flickr8k:", "needs DIR"),
        ("flickr8k", "needs DIR"),
        ("coco:x.json", "needs CAPTIONS_JSON:IMAGE_DIR"),
        ("synthetic:3", "takes no arguments"),
    ],
)
def test_errors_name_the_problem_and_the_forms(text, problem):
    with pytest.raises(ValueError) as info:
        parse_data_spec(text)
    message = str(info.value)
    assert problem in message and repr(text) in message
    assert "coco:CAPTIONS_JSON:IMAGE_DIR" in message


def test_a_task_limits_the_kinds():
    with pytest.raises(ValueError, match="'easy_vqa' is not usable here") as info:
        parse_data_spec("easy_vqa", kinds=("synthetic", "flickr8k"))
    assert "flickr8k:DIR" in str(info.value) and "tfrecord:DIR" not in str(info.value)
    assert set(DATA_KINDS) >= {"synthetic", "flickr8k", "coco", "csv", "jsonl", "tfrecord", "easy_vqa",
                               "flickr8k_match"}
