import json

import keras
import numpy as np
import pytest
from keras import ops

from mmkeras.layers.add_fusion import AddFusion
from mmkeras.layers.concat_fusion import ConcatFusion
from mmkeras.layers.cross_attention_fusion import CrossAttentionFusion
from mmkeras.layers.fusion import FUSION_DESCRIPTIONS, FUSION_LAYERS, get_fusion
from mmkeras.layers.fusion_layer import FusionLayer
from mmkeras.layers.bilinear_fusion import BilinearFusion
from mmkeras.layers.gated_fusion import GatedFusion
from mmkeras.layers.gcn_fusion import GCNFusion, grid_adjacency, normalize_adjacency
from mmkeras.layers.late_fusion import LateFusion
from mmkeras.layers.weighted_sum_fusion import WeightedSumFusion
from tests.layer_harness import (
    run_build_from_config,
    run_config_round_trip,
    run_layer_checks,
    run_save_load,
    symbolic_inputs,
)

# image_dim, text_dim and hidden_dim all differ, so a wrong projection shape fails.
BATCH, IMAGE_TOKENS, IMAGE_DIM, TEXT_LEN, TEXT_DIM, HIDDEN = 2, 9, 12, 5, 10, 16


def make_inputs(seed=0):
    rng = np.random.default_rng(seed)
    mask = np.ones((BATCH, TEXT_LEN), bool)
    mask[1, 3:] = False  # The second example has two padding tokens.
    return [
        rng.normal(size=(BATCH, IMAGE_TOKENS, IMAGE_DIM)).astype("float32"),
        rng.normal(size=(BATCH, IMAGE_DIM)).astype("float32"),
        rng.normal(size=(BATCH, TEXT_LEN, TEXT_DIM)).astype("float32"),
        rng.normal(size=(BATCH, TEXT_DIM)).astype("float32"),
        mask,
    ]


def numpy(x):
    return ops.convert_to_numpy(x)


# Non-default constructor arguments for every layer (some layers twice).
CASES = {
    "concat": (ConcatFusion, dict(hidden_dim=HIDDEN, activation="gelu", dropout=0.1)),
    "add": (AddFusion, dict(hidden_dim=HIDDEN, activation="tanh", dropout=0.2)),
    "weighted_sum_fixed": (
        WeightedSumFusion,
        dict(hidden_dim=HIDDEN, weights=(0.3, 0.7), activation="gelu", dropout=0.1),
    ),
    "weighted_sum_learned": (WeightedSumFusion, dict(hidden_dim=HIDDEN, weights="learned")),
    "gated": (GatedFusion, dict(hidden_dim=HIDDEN, activation="relu", dropout=0.1)),
    "cross_attention": (CrossAttentionFusion, dict(hidden_dim=HIDDEN, num_heads=2)),
    "cross_attention_bidirectional": (
        CrossAttentionFusion,
        dict(hidden_dim=HIDDEN, num_heads=2, num_layers=2, intermediate_dim=24, dropout=0.1,
             bidirectional=True, layer_norm_epsilon=1e-6),
    ),
    "bilinear": (BilinearFusion, dict(hidden_dim=HIDDEN, num_glimpses=3, dropout=0.1)),
    "bilinear_pooled": (BilinearFusion, dict(hidden_dim=HIDDEN, num_glimpses=0)),
    "gcn_full": (GCNFusion, dict(hidden_dim=HIDDEN, num_layers=3, activation="tanh", dropout=0.1)),
    "gcn_knn": (GCNFusion, dict(hidden_dim=HIDDEN, cross_modal_edges="knn", k=2)),
    "late_fixed": (LateFusion, dict(num_classes=3, hidden_dim=HIDDEN, weights=(0.4, 0.6), dropout=0.1)),
    "late_learned": (LateFusion, dict(num_classes=3, hidden_dim=HIDDEN)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_fusion_layer_checks(case, tmp_path):
    cls, kwargs = CASES[case]
    inputs = make_inputs()
    expected = (BATCH, kwargs["num_classes"] if cls is LateFusion else HIDDEN)
    layer = run_layer_checks(cls, kwargs, inputs, expected_shape=expected)

    clone = run_config_round_trip(layer)
    config = layer.get_config()
    json.dumps(config)
    for name, value in kwargs.items():
        if name == "weights":
            # Fixed weights serialise as a JSON list and come back as a pair.
            assert config["weights"] == (value if value == "learned" else list(value))
            assert clone.fusion_weights == value
        elif name != "activation":
            assert getattr(clone, name) == value, name
        else:
            assert config["activation"] == value

    run_save_load(layer, inputs, str(tmp_path))
    run_build_from_config(layer, inputs)
    # The mask is optional.
    assert tuple(layer(*inputs[:4]).shape) == expected


@pytest.mark.parametrize("case", sorted(CASES))
def test_fusion_layer_mixed_precision(case):
    cls, kwargs = CASES[case]
    layer = cls(**kwargs, dtype="mixed_float16")
    out = layer(*make_inputs())
    assert out.dtype == "float16"
    assert np.all(np.isfinite(numpy(out)))


@pytest.mark.parametrize("case", sorted(CASES))
def test_fusion_layer_dynamic_batch_and_text_length(case):
    # A classifier feeds variable-length text through a graph whose batch and
    # text length are unknown when it is traced.
    cls, kwargs = CASES[case]
    layer = cls(**kwargs)
    symbolic = [
        keras.Input((IMAGE_TOKENS, IMAGE_DIM)),
        keras.Input((IMAGE_DIM,)),
        keras.Input((None, TEXT_DIM)),
        keras.Input((TEXT_DIM,)),
        keras.Input((None,), dtype="bool"),
    ]
    model = keras.Model(symbolic, layer(*symbolic))
    inputs = make_inputs()
    np.testing.assert_allclose(
        model.predict(inputs, verbose=0), numpy(layer(*inputs)), atol=1e-5
    )


def test_gcn_needs_static_image_token_count():
    symbolic = [keras.Input((None, 4)), keras.Input((4,)), keras.Input((3, 4)), keras.Input((4,))]
    with pytest.raises(ValueError, match="image_tokens_shape"):
        GCNFusion(hidden_dim=8)(*symbolic)


def _perturb_padding(inputs):
    changed = [x.copy() for x in inputs]
    padding = ~inputs[4]
    changed[2][padding] = 100.0 * np.random.default_rng(1).normal(size=changed[2][padding].shape)
    return changed


@pytest.mark.parametrize(
    "case", ["cross_attention", "cross_attention_bidirectional", "gcn_full", "gcn_knn"]
)
def test_padding_tokens_do_not_change_output(case):
    cls, kwargs = CASES[case]
    layer = cls(**kwargs)
    inputs = make_inputs()
    reference = numpy(layer(*inputs))
    np.testing.assert_allclose(numpy(layer(*_perturb_padding(inputs))), reference, atol=1e-5)
    # Sanity: a real token does change the output of its example.
    changed = [x.copy() for x in inputs]
    changed[2][1, 0] += 5.0
    out = numpy(layer(*changed))
    assert not np.allclose(out[1], reference[1], atol=1e-4)
    np.testing.assert_allclose(out[0], reference[0], atol=1e-5)


def test_no_mask_means_all_tokens_real():
    inputs = make_inputs()
    inputs[4][:] = True
    for case in ("cross_attention_bidirectional", "gcn_knn"):
        cls, kwargs = CASES[case]
        layer = cls(**kwargs)
        np.testing.assert_allclose(numpy(layer(*inputs)), numpy(layer(*inputs[:4])), atol=1e-6)


def test_grid_adjacency():
    grid = grid_adjacency(9)
    np.testing.assert_array_equal(grid, grid.T)
    # Corners have 2 neighbours, edge midpoints 3, the centre 4.
    np.testing.assert_array_equal(grid.sum(1), [2, 3, 2, 3, 4, 3, 2, 3, 2])
    assert grid[0, 1] == grid[0, 3] == 1 and grid[2, 3] == 0  # No wrap-around.
    chain = grid_adjacency(3)  # Not a perfect square: a chain.
    np.testing.assert_array_equal(chain, [[0, 1, 0], [1, 0, 1], [0, 1, 0]])


def _hand_normalized(adjacency, node_mask):
    a = adjacency + np.diag(node_mask)
    degree = a.sum(1)
    inv_sqrt = np.where(degree > 0, 1.0 / np.sqrt(np.maximum(degree, 1e-12)), 0.0)
    return inv_sqrt[:, None] * a * inv_sqrt[None, :]


def test_gcn_normalized_adjacency_matches_hand_computation():
    # 2x2 image grid (nodes 0-3) and three text tokens (nodes 4-6), the last
    # one padding; full cross-modal edges.
    layer = GCNFusion(hidden_dim=4)
    image = np.random.default_rng(0).normal(size=(1, 4, 4)).astype("float32")
    text = np.random.default_rng(1).normal(size=(1, 3, 4)).astype("float32")
    adjacency, node_mask = layer.normalized_adjacency(image, text, np.array([[True, True, False]]))
    a = np.array(
        [
            [0, 1, 1, 0, 1, 1, 0],
            [1, 0, 0, 1, 1, 1, 0],
            [1, 0, 0, 1, 1, 1, 0],
            [0, 1, 1, 0, 1, 1, 0],
            [1, 1, 1, 1, 0, 1, 0],
            [1, 1, 1, 1, 1, 0, 0],
            [0, 0, 0, 0, 0, 0, 0],
        ],
        "float32",
    )
    mask = np.array([1, 1, 1, 1, 1, 1, 0], "float32")
    np.testing.assert_array_equal(numpy(node_mask)[0], mask)
    np.testing.assert_allclose(numpy(adjacency)[0], _hand_normalized(a, mask), atol=1e-6)
    # Degrees with self-loop: image nodes 5, real text nodes 6, padding 0.
    np.testing.assert_allclose(numpy(adjacency)[0, 0, 0], 1 / 5, atol=1e-6)
    np.testing.assert_allclose(numpy(adjacency)[0, 0, 4], 1 / np.sqrt(30), atol=1e-6)
    np.testing.assert_allclose(numpy(adjacency)[0, 4, 5], 1 / 6, atol=1e-6)
    assert not numpy(adjacency)[0, 6].any() and not numpy(adjacency)[0, :, 6].any()


def test_gcn_text_edges_skip_interior_padding():
    layer = GCNFusion(hidden_dim=4)
    adjacency, _ = layer.normalized_adjacency(
        np.ones((1, 2, 4), "float32"), np.ones((1, 3, 4), "float32"), np.array([[True, False, True]])
    )
    adjacency = numpy(adjacency)[0]  # Nodes: image 0-1, text 2-4.
    assert adjacency[2, 4] > 0 and adjacency[4, 2] > 0
    assert not adjacency[3].any()


def test_gcn_knn_edges_join_most_similar_image_tokens():
    layer = GCNFusion(hidden_dim=4, cross_modal_edges="knn", k=1)
    image = np.eye(4, dtype="float32")[None]  # Image token i points along axis i.
    text = np.array([[[0.1, 0, 2, 0], [0, 0, 0.2, 3], [1, 0, 0, 0]]], "float32")
    adjacency, _ = layer.normalized_adjacency(image, text, np.array([[True, True, False]]))
    cross = numpy(adjacency)[0, 4:, :4] > 0
    np.testing.assert_array_equal(
        cross, [[False, False, True, False], [False, False, False, True], [False] * 4]
    )
    np.testing.assert_array_equal(numpy(adjacency)[0, :4, 4:] > 0, cross.T)  # Symmetrised.


def test_normalize_adjacency_isolated_nodes_are_finite():
    adjacency = np.zeros((1, 3, 3), "float32")
    out = numpy(normalize_adjacency(adjacency, np.array([[1.0, 0.0, 1.0]], "float32")))
    np.testing.assert_allclose(out[0], np.diag([1.0, 0.0, 1.0]))


def test_weighted_sum_fixed_one_zero_ignores_text():
    layer = WeightedSumFusion(hidden_dim=8, weights=(1.0, 0.0))
    inputs = make_inputs()
    reference = numpy(layer(*inputs))
    other = make_inputs(seed=5)
    other[2][:] = np.nan
    other[3][:] = np.inf
    out = numpy(layer(inputs[0], inputs[1], other[2], other[3], other[4]))
    np.testing.assert_array_equal(out, reference)
    np.testing.assert_allclose(reference, numpy(layer.image_projection(inputs[1])), atol=1e-6)


def test_weighted_sum_learned_weights_are_normalized():
    layer = WeightedSumFusion(hidden_dim=8)
    inputs = make_inputs()
    layer(*inputs)
    assert layer.normalized_weights == (0.5, 0.5)
    layer.weight_logits.assign([1.0, -1.0])
    w_img, w_text = layer.normalized_weights
    assert w_img + w_text == pytest.approx(1.0, abs=1e-6)
    assert w_img == pytest.approx(np.exp(1) / (np.exp(1) + np.exp(-1)), abs=1e-6)
    expected = w_img * numpy(layer.image_projection(inputs[1])) + w_text * numpy(
        layer.text_projection(inputs[3])
    )
    np.testing.assert_allclose(numpy(layer(*inputs)), expected, atol=1e-5)


def test_gated_output_lies_between_projections():
    layer = GatedFusion(hidden_dim=HIDDEN)
    inputs = make_inputs()
    fused = numpy(layer(*inputs))
    h_img, h_text, z = (numpy(t) for t in layer.project(inputs[1], inputs[3]))
    assert np.all(fused >= np.minimum(h_img, h_text) - 1e-6)
    assert np.all(fused <= np.maximum(h_img, h_text) + 1e-6)
    assert np.all((z > 0) & (z < 1))
    assert not np.allclose(fused, h_img) and not np.allclose(fused, h_text)


def test_bilinear_fusion_is_a_product_under_attention():
    layer = BilinearFusion(hidden_dim=HIDDEN, num_glimpses=2)
    image_tokens, image_pooled, text_tokens, text_pooled, mask = make_inputs()
    fused, attention = layer(image_tokens, image_pooled, text_tokens, text_pooled, mask,
                             return_attention_scores=True)
    attention = numpy(attention)
    assert attention.shape == (BATCH, 2, IMAGE_TOKENS)
    np.testing.assert_allclose(attention.sum(axis=-1), 1.0, rtol=1e-5)
    # By hand: the glimpses are attention-weighted image tokens, and the
    # output is the product of the two tanh projections.
    glimpses = np.einsum("bgn,bnd->bgd", attention, image_tokens).reshape(BATCH, -1)
    expected = numpy(layer.image_projection(glimpses)) * numpy(layer.text_projection(text_pooled))
    np.testing.assert_allclose(numpy(fused), expected, rtol=1e-5, atol=1e-6)
    # Multiplicative: a zero text vector (zero-initialised biases) zeroes the output.
    zero_text = layer(image_tokens, image_pooled, text_tokens, np.zeros_like(text_pooled), mask)
    np.testing.assert_allclose(numpy(zero_text), 0.0, atol=1e-7)
    # The attention follows the text: another question attends elsewhere.
    other = layer(image_tokens, image_pooled, text_tokens, -3.0 * text_pooled, mask,
                  return_attention_scores=True)[1]
    assert not np.allclose(attention, numpy(other))


def test_late_fusion_weights():
    inputs = make_inputs()
    image_only = LateFusion(num_classes=3, hidden_dim=8, weights=(1.0, 0.0))
    assert image_only.produces_logits
    logits = numpy(image_only(*inputs))
    image_logits, text_logits = (numpy(t) for t in image_only.head_logits(inputs[1], inputs[3]))
    np.testing.assert_allclose(logits, image_logits, atol=1e-6)
    assert not np.allclose(logits, text_logits)

    learned = LateFusion(num_classes=3, hidden_dim=8)
    learned(*inputs)
    learned.weight_logits.assign([0.3, 2.0])
    w_img, w_text = learned.normalized_weights
    assert w_img + w_text == pytest.approx(1.0, abs=1e-6) and w_text > w_img
    image_logits, text_logits = (numpy(t) for t in learned.head_logits(inputs[1], inputs[3]))
    np.testing.assert_allclose(
        numpy(learned(*inputs)), w_img * image_logits + w_text * text_logits, atol=1e-5
    )


def test_cross_attention_scores():
    layer = CrossAttentionFusion(hidden_dim=HIDDEN, num_heads=4, num_layers=2, bidirectional=True)
    inputs = make_inputs()
    fused, scores = layer(*inputs, return_attention_scores=True)
    assert tuple(fused.shape) == (BATCH, HIDDEN)
    assert len(scores) == 2
    for layer_scores in scores:
        layer_scores = numpy(layer_scores)
        assert layer_scores.shape == (BATCH, 4, TEXT_LEN, IMAGE_TOKENS)
        np.testing.assert_allclose(layer_scores.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(numpy(fused), numpy(layer(*inputs)), atol=1e-6)

    # Symbolically too, so an attention-map tool can build a functional model.
    symbolic = symbolic_inputs(inputs)
    sym_fused, sym_scores = layer(*symbolic, return_attention_scores=True)
    model = keras.Model(symbolic, [sym_fused] + list(sym_scores))
    outputs = model(inputs)
    assert len(outputs) == 3 and tuple(outputs[2].shape) == (BATCH, 4, TEXT_LEN, IMAGE_TOKENS)
    np.testing.assert_allclose(numpy(outputs[1]), numpy(scores[0]), atol=1e-6)


def test_cross_attention_bidirectional_round_trip():
    layer = CrossAttentionFusion(hidden_dim=8, num_heads=2, num_layers=3, bidirectional=True)
    clone = run_config_round_trip(layer)
    assert clone.bidirectional and clone.num_layers == 3 and len(clone.image_blocks) == 3
    assert not CrossAttentionFusion(hidden_dim=8, num_heads=2).image_blocks


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: WeightedSumFusion(hidden_dim=8, weights=(0.7, 0.7)), r"weights=\(0.7, 0.7\)"),
        (lambda: WeightedSumFusion(hidden_dim=8, weights=(-0.5, 1.5)), r"weights=\(-0.5, 1.5\)"),
        (lambda: WeightedSumFusion(hidden_dim=8, weights="fixed"), "weights=fixed"),
        (lambda: LateFusion(num_classes=2, hidden_dim=8, weights=(0.7, 0.7)), r"weights=\(0.7, 0.7\)"),
        (lambda: LateFusion(num_classes=0, hidden_dim=8), "num_classes=0"),
        (lambda: GCNFusion(hidden_dim=8, num_layers=0), "num_layers=0"),
        (lambda: BilinearFusion(hidden_dim=8, num_glimpses=-1), "num_glimpses=-1"),
        (lambda: GCNFusion(hidden_dim=8, cross_modal_edges="all"), "cross_modal_edges=all"),
        (lambda: GCNFusion(hidden_dim=8, k=0), "k=0"),
        (lambda: CrossAttentionFusion(hidden_dim=10, num_heads=3), "num_heads=3"),
        (lambda: CrossAttentionFusion(hidden_dim=8, num_heads=2, num_layers=0), "num_layers=0"),
        (lambda: ConcatFusion(hidden_dim=0), "hidden_dim=0"),
        (lambda: AddFusion(hidden_dim=8, dropout=1.0), "dropout=1.0"),
        (lambda: get_fusion("nope"), "Received: fusion='nope'"),
    ],
)
def test_misconfiguration_raises(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_get_fusion():
    with pytest.raises(ValueError, match="Known: concat, add, weighted_sum, gated, cross_attention, bilinear, gcn, late"):
        get_fusion("nope")
    assert set(FUSION_DESCRIPTIONS) == set(FUSION_LAYERS)
    inputs = make_inputs()
    for name, cls in FUSION_LAYERS.items():
        kwargs = {"hidden_dim": 8}
        if cls is LateFusion:
            kwargs["num_classes"] = 3
        layer = get_fusion(name, **kwargs)
        assert type(layer) is cls and isinstance(layer, FusionLayer)
        assert layer.produces_logits == (name == "late")
        assert tuple(layer(*inputs).shape) == (BATCH, 3 if name == "late" else 8)
