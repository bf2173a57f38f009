"""training.compare: paired bootstrap comparison of two captioning runs' predictions.jsonl."""

import json
import subprocess
import sys

import pytest

from training.compare import CompareError, compare_runs, format_results

SUBJECTS = ["dog", "cat", "horse", "bird", "boy", "girl", "man", "woman", "car", "boat"]
PLACES = ["grass", "water", "snow", "street", "beach", "park"]


def _references(i):
    subject, place = SUBJECTS[i % len(SUBJECTS)], PLACES[i % len(PLACES)]
    return [f"a {subject} in the {place}", f"the {subject} is on the {place}", f"a {subject} near the {place} today"]


def write_run(directory, captions, beam=True, images=None):
    directory.mkdir(parents=True)
    with open(directory / "predictions.jsonl", "w", encoding="utf-8") as f:
        for i, caption in enumerate(captions):
            row = {"image": (images or {}).get(i, f"img{i}.jpg"), "generated": caption, "references": _references(i)}
            if beam:
                row["beam"] = caption
            f.write(json.dumps(row) + "\n")
    return str(directory)


def test_a_run_that_names_each_image_beats_a_generic_one_beyond_the_noise(tmp_path):
    n = 60
    generic = write_run(tmp_path / "generic", ["a thing in the place"] * n)
    specific = write_run(tmp_path / "specific", [_references(i)[i % 3] for i in range(n)])
    base, other = compare_runs([generic, specific])
    assert base["cider"] < 0.2 < other["cider"]
    assert other["difference"] == pytest.approx(other["cider"] - base["cider"])
    low, high = other["difference_interval"]
    assert 0 < low < other["difference"] < high  # the images differ in how well they are named
    assert (other["better"], other["worse"]) == (n, 0)
    assert "better; higher on 60, lower on 0 images" in format_results([base, other], "beam")


def test_identical_runs_differ_by_exactly_zero_and_half_right_runs_by_noise(tmp_path):
    n = 40
    captions = [_references(i)[0] if i % 2 else "a thing in the place" for i in range(n)]
    a = write_run(tmp_path / "a", captions)
    b = write_run(tmp_path / "b", captions)
    # Right on the other half of the images: same mean, opposite images.
    c = write_run(tmp_path / "c", [_references(i)[0] if i % 2 == 0 else "a thing in the place" for i in range(n)])
    _, same, swapped = compare_runs([a, b, c], decoding="greedy")
    assert same["difference"] == 0 and same["difference_interval"] == (0.0, 0.0)
    low, high = swapped["difference_interval"]
    assert low < 0 < high and swapped["better"] == swapped["worse"] == n // 2
    assert "within the noise" in format_results(compare_runs([a, c]), "greedy")


def test_runs_that_cannot_be_compared_are_named(tmp_path):
    a = write_run(tmp_path / "a", ["a dog"] * 5)
    with pytest.raises(CompareError, match="predictions.jsonl does not exist"):
        compare_runs([a, str(tmp_path / "missing")])
    other_images = write_run(tmp_path / "other", ["a dog"] * 5, images={2: "elsewhere.jpg"})
    with pytest.raises(CompareError, match="Test image 2 differs: 'elsewhere.jpg'"):
        compare_runs([a, other_images])
    shorter = write_run(tmp_path / "short", ["a dog"] * 4)
    with pytest.raises(CompareError, match="captioned 4 test images"):
        compare_runs([a, shorter])
    no_beam = write_run(tmp_path / "greedy_only", ["a dog"] * 5, beam=False)
    with pytest.raises(CompareError, match="no 'beam' caption .*eval_beam=false"):
        compare_runs([a, no_beam])
    (tmp_path / "torn").mkdir()
    (tmp_path / "torn" / "predictions.jsonl").write_text('{"image": "x", "references": ["a"]}\n{"imag')
    with pytest.raises(CompareError, match="line 2: not JSON"):
        compare_runs([a, str(tmp_path / "torn")])
    with pytest.raises(CompareError, match="at least two"):
        compare_runs([a])


def test_command_line_prints_the_table_and_fails_clearly(tmp_path):
    a = write_run(tmp_path / "a", ["a thing in the place"] * 20)
    b = write_run(tmp_path / "b", [_references(i)[0] for i in range(20)])
    ok = subprocess.run([sys.executable, "-m", "training.compare", f"--model_dirs={a},{b}"],
                        capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert ok.stdout.splitlines()[0].startswith("beam CIDEr-D") and "(baseline)" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "training.compare", f"--model_dirs={a},{tmp_path / 'nope'}"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "nope/predictions.jsonl does not exist" in bad.stderr
