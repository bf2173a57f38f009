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
