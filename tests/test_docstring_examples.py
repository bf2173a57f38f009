"""Every docstring example in `mmkeras` runs and shows what it prints.

The examples are what a newcomer copies first; an example whose output
drifted (a shape printed as `TensorShape`, a changed score) or that raises
(generating from an unbuilt captioner did) must fail here.
"""

import doctest
import importlib
import pkgutil

import pytest

import mmkeras

MODULES = sorted(info.name for info in pkgutil.walk_packages(mmkeras.__path__, "mmkeras."))

# Modules whose docstrings must keep examples: the public layers, models and metrics.
WITH_EXAMPLES = {
    "mmkeras.layers.cross_modal_attention", "mmkeras.layers.image_encoder", "mmkeras.layers.text_decoder",
    "mmkeras.layers.text_decoder_block", "mmkeras.models.dual_encoder", "mmkeras.models.fusion_classifier",
    "mmkeras.models.image_captioner", "mmkeras.models.self_critical", "mmkeras.metrics.bleu",
    "mmkeras.metrics.cider", "mmkeras.metrics.rouge_l", "mmkeras.metrics.meteor", "mmkeras.metrics.caption_metrics",
    "mmkeras.metrics.classification", "mmkeras.metrics.plots", "mmkeras.metrics.porter_stemmer",
}


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name))
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} fail"
    if name in WITH_EXAMPLES:
        assert result.attempted > 0, f"{name} lost its docstring examples"


def test_the_modules_with_examples_exist():
    assert WITH_EXAMPLES <= set(MODULES)


def test_command_examples_keep_their_line_continuations():
    """A shell `\\` at a line's end inside a plain (non-raw) string literal joins the
    lines in the text that `--help` prints; such literals must write `\\\\`."""
    import pathlib
    import re
    import tokenize

    root = pathlib.Path(__file__).resolve().parent.parent
    joined = []
    for path in sorted(p for d in ("mmkeras", "training", "serving", "benchmarks") for p in (root / d).rglob("*.py")):
        with open(path, encoding="utf-8") as f:
            for token in tokenize.generate_tokens(f.readline):
                prefix = re.match(r"[a-zA-Z]*", token.string).group()
                if token.type != tokenize.STRING or "r" in prefix.lower():
                    continue
                body = token.string[len(prefix):].replace("\\\\", "")
                # `"""\` right after the opening quotes deliberately starts the text on the next line.
                quotes = 3 if body[:3] in ('"""', "'''") else 1
                if "\\\n" in body[quotes + 2:]:
                    joined.append(f"{path.relative_to(root)}:{token.start[0]}")
    assert not joined, f"string literals whose line ends in a single backslash: {joined}"
