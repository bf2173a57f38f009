"""ClassifierEnsemble: vote, average, stacking, saving, export; the training.ensemble CLI."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from mmkeras.data.text_preprocessor import text_preprocessor_from_vocabulary
from mmkeras.data.tokenizer import learn_vocabulary
from mmkeras.models import ClassifierEnsemble, build_fusion_classifier
from tests.backbone_fixtures import save_tiny_resnet_preset
from training import ensemble as ensemble_cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXTS = ["what colour is the circle", "is there a red square", "what shape is blue", "how many shapes"]
LABELS = ["red", "blue", "yes", "no"]
FUSIONS = ("concat", "gated", "late")


@pytest.fixture(scope="module")
def preprocessor():
    return text_preprocessor_from_vocabulary(learn_vocabulary(TEXTS * 5, 60), 8)


def make(preprocessor, fusion, labels=LABELS, multi_label=False, seed=0):
    keras.utils.set_random_seed(seed)
    return build_fusion_classifier(
        num_classes=len(labels), image_size=32, sequence_length=8,
        vocabulary_size=preprocessor.tokenizer.vocabulary_size(), hidden_dim=16, num_heads=2,
        intermediate_dim=32, dropout=0.0, fusion=fusion, label_names=labels, multi_label=multi_label,
        text_preprocessor=preprocessor, image_encoder_kwargs={"stem_filters": (8, 16), "convs_per_stage": 1},
        text_encoder_kwargs={"num_layers": 1},
    )


def batch(preprocessor, n=4, seed=0):
    rng = np.random.default_rng(seed)
    text = preprocessor(tf.constant((TEXTS * n)[:n]))
    return {
        "images": rng.uniform(0, 255, (n, 32, 32, 3)).astype("float32"),
        "token_ids": text["token_ids"].numpy(),
        "padding_mask": text["padding_mask"].numpy(),
    }


@pytest.fixture(scope="module")
def members(preprocessor):
    models = [make(preprocessor, f, seed=i) for i, f in enumerate(FUSIONS)]
    x = batch(preprocessor)
    for m in models:
        m(x)
    return models


def member_probs(models, x):
    return [np.asarray(m.probabilities(m(x, training=False)["logits"])) for m in models]


def jpeg_images(n=3):
    rng = np.random.default_rng(1)
    return [tf.io.encode_jpeg(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).numpy() for _ in range(n)]


@pytest.mark.parametrize("weights", [None, (1.0, 2.0, 1.0)])
def test_average_is_the_weighted_mean_of_member_probabilities(preprocessor, members, weights):
    x = batch(preprocessor)
    probs = member_probs(members, x)
    ensemble = ClassifierEnsemble(members, method="average", weights=weights)
    w = np.ones(3) if weights is None else np.asarray(weights)
    expected = np.einsum("mbc,m->bc", np.stack(probs), w / w.sum())
    np.testing.assert_allclose(ensemble(x)["probabilities"], expected, atol=1e-6)
    assert not np.allclose(probs[0], probs[1], atol=1e-3), "members must differ for the test to mean anything"


def test_vote_takes_the_majority_and_breaks_ties_by_mean_probability(members):
    vote = ClassifierEnsemble(members, method="vote")
    # Members' top classes: 1, 1, 0 (member 2 is very sure of 0): the majority wins.
    probs = [np.array([[0.3, 0.4, 0.2, 0.1]]), np.array([[0.1, 0.5, 0.3, 0.1]]), np.array([[0.97, 0.01, 0.01, 0.01]])]
    out = np.asarray(vote.combine(probs))
    assert np.asarray(vote.decisions(out)).tolist() == [1]
    np.testing.assert_allclose(out[0, :2], [1 / 3, 2 / 3], atol=1e-3)
    # Averaging the same members picks class 0: vote is not average.
    assert np.asarray(ClassifierEnsemble(members, method="average").decisions(
        ClassifierEnsemble(members, method="average").combine(probs))).tolist() == [0]

    # Top classes 0, 1, 3: a tie, won by the tied class of highest mean probability
    # (3: 0.30), not by class 2, which has the highest mean (0.35) but no vote.
    tie = [np.array([[0.40, 0.0, 0.35, 0.25]]), np.array([[0.0, 0.45, 0.40, 0.15]]),
           np.array([[0.1, 0.1, 0.3, 0.5]])]
    assert np.asarray(vote.decisions(vote.combine(tie))).tolist() == [3]
    # Two members that disagree: the more probable class on average wins.
    two = ClassifierEnsemble(members[:2], method="vote")
    split = [np.array([[0.6, 0.4, 0.0, 0.0], [0.9, 0.1, 0.0, 0.0]]),
             np.array([[0.1, 0.9, 0.0, 0.0], [0.3, 0.7, 0.0, 0.0]])]
    assert np.asarray(two.decisions(two.combine(split))).tolist() == [1, 0]
    # The tie breaker never outweighs a vote.
    assert np.asarray(vote.decisions(vote.combine(probs[:2] + tie[2:]))).tolist() == [1]


def test_stacking_learns_to_trust_the_reliable_member(members):
    two = ClassifierEnsemble(members[:2], method="stacking")
    rng = np.random.default_rng(0)

    def case(n):
        targets = rng.integers(0, 4, n)
        right = np.full((n, 4), 0.1)
        right[np.arange(n), targets] = 0.7  # always right, not very sure
        wrong = np.full((n, 4), 0.02)
        wrong[np.arange(n), (targets + 1) % 4] = 0.94  # always wrong, very sure
        return [right, wrong], targets

    train_probs, train_targets = case(200)
    loss = two.fit_stacking(train_probs, train_targets)
    assert loss < 0.3
    test_probs, test_targets = case(100)
    stacked = np.asarray(two.decisions(two.combine(test_probs)))
    average = ClassifierEnsemble(members[:2], method="average")
    averaged = np.asarray(average.decisions(average.combine(test_probs)))
    assert np.mean(stacked == test_targets) > 0.95
    assert np.mean(averaged == test_targets) < 0.05
    with pytest.raises(ValueError, match="method='stacking'"):
        average.fit_stacking(test_probs, test_targets)
    with pytest.raises(ValueError, match="one probability array per member"):
        two.fit_stacking(test_probs[:1], test_targets)


def test_multi_label_vote_and_average(preprocessor):
    models = [make(preprocessor, f, multi_label=True, seed=i) for i, f in enumerate(FUSIONS)]
    x = batch(preprocessor)
    for m in models:
        m(x)
    probs = [np.array([[0.9, 0.6, 0.2, 0.1]]), np.array([[0.8, 0.4, 0.7, 0.1]]), np.array([[0.1, 0.7, 0.1, 0.45]])]
    vote = ClassifierEnsemble(models, method="vote")
    shares = np.asarray(vote.combine(probs))
    np.testing.assert_allclose(shares, [[2 / 3, 2 / 3, 1 / 3, 0.0]], atol=1e-6)
    assert np.asarray(vote.decisions(shares)).tolist() == [[1, 1, 0, 0]]

    average = ClassifierEnsemble(models, method="average")
    mean = np.asarray(average.combine(probs))
    np.testing.assert_allclose(mean, np.mean(probs, axis=0), atol=1e-6)
    # Average decides at the members' mean thresholds.
    for m, t in zip(models, ([0.5, 0.5, 0.5, 0.1], [0.5, 0.5, 0.5, 0.2], [0.5, 0.5, 0.5, 0.0])):
        m.thresholds.assign(np.asarray(t, "float32"))
    assert np.asarray(average.decisions(mean)).tolist() == [[1, 1, 0, 1]]  # 0.2167 > 0.1
    # The whole model: probabilities are sigmoids, averaged.
    np.testing.assert_allclose(average(x)["probabilities"], np.mean(member_probs(models, x), axis=0), atol=1e-6)


def test_bad_members_and_arguments_are_value_errors(preprocessor, members):
    other = make(preprocessor, "add", labels=["cat", "dog", "bird", "fish"])
    other(batch(preprocessor))
    with pytest.raises(ValueError, match=r"same labels.*'red'.*member 1 labels \['cat'"):
        ClassifierEnsemble([members[0], other])
    with pytest.raises(ValueError, match="at least 2 members. Received: 1"):
        ClassifierEnsemble(members[:1])
    with pytest.raises(ValueError, match="method='max'"):
        ClassifierEnsemble(members, method="max")
    with pytest.raises(ValueError, match="weights"):
        ClassifierEnsemble(members, weights=[1.0, -1.0, 1.0])
    with pytest.raises(ValueError, match="weights"):
        ClassifierEnsemble(members, weights=[1.0, 1.0])


def test_load_members_names_the_mismatched_run_directories(preprocessor, members, tmp_path):
    other = make(preprocessor, "add", labels=["cat", "dog", "bird", "fish"])
    other(batch(preprocessor))
    dirs = []
    for name, model in (("run_a", members[0]), ("run_b", other)):
        os.makedirs(tmp_path / name)
        model.save(tmp_path / name / "model.keras")
        (tmp_path / name / "config.json").write_text("{}")
        dirs.append(str(tmp_path / name))
    with pytest.raises(ensemble_cli.EnsembleError, match=r"run_a: \['red'.*run_b: \['cat'"):
        ensemble_cli.load_members(dirs)
    with pytest.raises(ensemble_cli.EnsembleError, match="run_c/config.json does not exist"):
        ensemble_cli.load_members([dirs[0], str(tmp_path / "run_c")])
    with pytest.raises(ensemble_cli.EnsembleError, match="at least 2 members"):
        ensemble_cli.load_members(dirs[:1])


def test_config_round_trip(members):
    ensemble = ClassifierEnsemble(members, method="average", weights=(0.2, 0.5, 0.3), name="my_ensemble")
    config = ensemble.get_config()
    clone = ClassifierEnsemble.from_config(config)
    assert clone.get_config() == config
    assert clone.method == "average" and clone.weights_list == [0.2, 0.5, 0.3] and clone.name == "my_ensemble"


def test_members_over_one_frozen_tower_run_and_hold_it_once(preprocessor, tmp_path):
    preset_dir = save_tiny_resnet_preset(tmp_path / "resnet_preset", 32)
    bert = {"vocabulary_size": preprocessor.tokenizer.vocabulary_size(), "num_layers": 1, "num_heads": 2,
            "hidden_dim": 16, "intermediate_dim": 32, "max_sequence_length": 8}
    models = []
    for seed, fusion in enumerate(("concat", "gated", "late")):
        keras.utils.set_random_seed(seed)
        models.append(build_fusion_classifier(
            num_classes=len(LABELS), image_size=32, sequence_length=8,
            vocabulary_size=preprocessor.tokenizer.vocabulary_size(), hidden_dim=16, num_heads=2,
            intermediate_dim=32, dropout=0.0, fusion=fusion, label_names=LABELS, text_preprocessor=preprocessor,
            image_encoder_kwargs={"backbone_preset": preset_dir},
            text_encoder_kwargs={"backbone_class": "BertBackbone", "backbone_kwargs": bert},
        ))
    x = batch(preprocessor)
    for m in models:
        m(x)
    # Members 0 and 2 hold one text tower (as two runs over one frozen preset do); member 1 its own.
    models[2].text_encoder.backbone.set_weights(models[0].text_encoder.backbone.get_weights())
    expected = np.mean(member_probs(models, x), axis=0)
    images, texts = jpeg_images(), TEXTS[:3]
    expected_raw = np.mean([np.asarray(m.probabilities_from_raw(tf.constant(images), tf.constant(texts)))
                            for m in models], axis=0)

    ensemble = ClassifierEnsemble(models, method="average")
    assert ensemble.image_feature_sources == [0, 0, 0]
    assert ensemble.text_feature_sources == [0, 1, 0]
    image_backbones = {id(m.image_encoder.backbone) for m in ensemble.members}
    text_backbones = [m.text_encoder.backbone for m in ensemble.members]
    assert len(image_backbones) == 1
    assert text_backbones[2] is text_backbones[0] and text_backbones[1] is not text_backbones[0]
    # The members passed in are untouched; the ensemble holds each shared backbone once.
    assert models[1].image_encoder.backbone is not models[0].image_encoder.backbone
    size = lambda layer: sum(int(np.prod(w.shape)) for w in layer.weights)  # noqa: E731
    shared = 2 * size(models[0].image_encoder.backbone) + size(models[0].text_encoder.backbone)
    assert ensemble.count_params() == sum(m.count_params() for m in models) - shared
    np.testing.assert_allclose(np.asarray(ensemble(x)["probabilities"]), expected, atol=1e-6)
    raw = np.asarray(ensemble.probabilities_from_raw(tf.constant(images), tf.constant(texts)))
    np.testing.assert_allclose(raw, expected_raw, atol=1e-6)

    path = str(tmp_path / "ensemble.keras")
    ensemble.save(path)
    shutil.rmtree(preset_dir)  # the saved ensemble needs no preset folder
    restored = keras.saving.load_model(path)
    assert len({id(m.image_encoder.backbone) for m in restored.members}) == 1
    assert restored.members[2].text_encoder.backbone is restored.members[0].text_encoder.backbone
    assert restored.count_params() == ensemble.count_params()
    np.testing.assert_allclose(np.asarray(restored(x)["probabilities"]), expected, atol=1e-6)


def test_unbuilt_members_are_never_taken_to_share_features(preprocessor):
    models = [make(preprocessor, f, seed=i) for i, f in enumerate(FUSIONS[:2])]
    ensemble = ClassifierEnsemble(models, method="average")
    assert ensemble.image_feature_sources == [0, 1] and ensemble.text_feature_sources == [0, 1]
    with pytest.raises(ValueError, match="text_feature_sources.*Received: text_feature_sources=\\[1, 1\\]"):
        ClassifierEnsemble(models, text_feature_sources=[1, 1])


def fitted_stacking(members):
    stacking = ClassifierEnsemble(members, method="stacking")
    rng = np.random.default_rng(0)
    probs = [rng.dirichlet(np.ones(4), 32) for _ in members]
    stacking.fit_stacking(probs, rng.integers(0, 4, 32), epochs=20)
    return stacking


@pytest.mark.parametrize("method", ["vote", "average", "stacking"])
def test_save_and_load_give_equal_probabilities(preprocessor, members, method, tmp_path):
    if method == "stacking":
        ensemble = fitted_stacking(members)
    else:
        ensemble = ClassifierEnsemble(members, method=method, weights=(0.2, 0.5, 0.3) if method == "average" else None)
    x = batch(preprocessor, seed=3)
    expected = np.asarray(ensemble(x)["probabilities"])
    path = tmp_path / "ensemble.keras"
    ensemble.save(path)
    restored = keras.saving.load_model(path)
    assert isinstance(restored, ClassifierEnsemble) and restored.method == method
    assert restored.label_names == LABELS and len(restored.members) == 3
    np.testing.assert_allclose(restored(x)["probabilities"], expected, atol=1e-5)
    texts = tf.constant(TEXTS[:3])
    images = tf.constant(jpeg_images())
    np.testing.assert_allclose(restored.probabilities_from_raw(images, texts),
                               ensemble.probabilities_from_raw(images, texts), atol=1e-5)


FRESH_PROCESS = textwrap.dedent(
    """
    import json, sys
    import tensorflow as tf
    import tensorflow_text  # registers the TF Text ops of the tokenizer
    path, inputs_file = sys.argv[1], sys.argv[2]
    inputs = json.load(open(inputs_file))
    loaded = tf.saved_model.load(path)
    out = loaded.signatures["serving_default"](
        images=tf.constant([bytes.fromhex(h) for h in inputs["images"]]), texts=tf.constant(inputs["texts"]))
    assert not any(m.startswith(("mmkeras", "keras_hub")) for m in sys.modules), "export needs the library"
    print(json.dumps({"probabilities": out["probabilities"].numpy().tolist(),
                      "labels": [s.decode() for s in out["labels"].numpy().tolist()],
                      "class_ids": out["class_ids"].numpy().tolist()}))
    """
)


def test_export_serves_the_in_memory_probabilities_in_a_fresh_process(members, tmp_path):
    from serving.export import export_classifier

    ensemble = fitted_stacking(members[:2])  # Two members: export time grows with each.
    path = export_classifier(ensemble, str(tmp_path / "saved_models"), "classifier_ensemble")
    assert path.endswith(os.path.join("classifier_ensemble", "1"))
    assert os.path.exists(os.path.join(path, "assets", "labels.txt"))
    images, texts = jpeg_images(), TEXTS[:3]
    inputs = tmp_path / "inputs.json"
    inputs.write_text(json.dumps({"images": [b.hex() for b in images], "texts": texts}))
    script = tmp_path / "load.py"
    script.write_text(FRESH_PROCESS)
    proc = subprocess.run([sys.executable, str(script), path, str(inputs)], capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    served = json.loads(proc.stdout.strip().splitlines()[-1])
    expected = np.asarray(ensemble.probabilities_from_raw(tf.constant(images), tf.constant(texts)))
    np.testing.assert_allclose(served["probabilities"], expected, atol=1e-5)
    assert served["class_ids"] == np.argmax(expected, -1).tolist()
    assert served["labels"] == [LABELS[i] for i in np.argmax(expected, -1)]


def cli_env():
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env["PYTHONPATH"] = os.pathsep.join([REPO, env.get("PYTHONPATH", "")])
    return env


def train_members(experiment, flags_by_dir):
    """Trains one tiny run per `{run_dir: [flags]}`, all at once (each process mostly starts up)."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "training.train", f"--experiment={experiment}", "--max_steps=3", "--verbose=0",
             "--export_dir=", "--report=false", f"--model_dir={run_dir}", *flags],
            cwd=REPO, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for run_dir, flags in flags_by_dir.items()
    ]
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out[-3000:]


def run_ensemble(*flags, timeout=600):
    return subprocess.run([sys.executable, "-m", "training.ensemble", *flags], cwd=REPO, env=cli_env(),
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_ensemble_cli_stacks_trained_runs_and_exports(tmp_path):
    runs = {f: tmp_path / f for f in ("concat", "late")}
    train_members("classify_tiny", {run_dir: [f"--fusion={fusion}"] for fusion, run_dir in runs.items()})
    members = ",".join(str(d) for d in runs.values())
    model_dir, export_dir = tmp_path / "ensemble", tmp_path / "saved_models"
    proc = run_ensemble(f"--members={members}", "--method=stacking", f"--model_dir={model_dir}",
                        f"--export_dir={export_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((model_dir / "eval_metrics.json").read_text())
    for key in ("accuracy", "macro_f1", "weighted_f1", "accuracy_image_only", "accuracy_text_only"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["method"] == "stacking" and len(metrics["members"]) == 2
    assert metrics["accuracy_ci_low"] <= metrics["accuracy"] <= metrics["accuracy_ci_high"]
    assert len(metrics["member_accuracies"]) == 2 and metrics["num_validation_examples"] > 0
    # One pass over the test split for every member gives each member's own evaluation.
    for run_dir, accuracy in zip(runs.values(), metrics["member_accuracies"]):
        assert accuracy == pytest.approx(json.loads((run_dir / "eval_metrics.json").read_text())["accuracy"], abs=1e-6)
    assert (model_dir / "classification_report.txt").read_text().strip()
    assert (model_dir / "model.keras").exists()
    assert (export_dir / "classifier_ensemble" / "1" / "saved_model.pb").exists()

    # Writing the ensemble over a member is refused before anything is written.
    before = (runs["concat"] / "eval_metrics.json").read_bytes()
    proc = run_ensemble(f"--members={members}", f"--model_dir={runs['concat']}", "--export_dir=", timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "is one of the --members" in proc.stderr, proc.stderr
    assert (runs["concat"] / "eval_metrics.json").read_bytes() == before

    # A missing member: one `error:` line naming it, no traceback, exit 1.
    shutil.rmtree(runs["late"])
    proc = run_ensemble(f"--members={members}", f"--model_dir={model_dir}", "--export_dir=", timeout=300)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and os.path.join(str(runs["late"]), "config.json") in errors[0], proc.stderr


@pytest.mark.slow
def test_ensemble_cli_combines_trained_captioners_and_exports(tmp_path):
    # Members may differ in architecture; the synthetic data (and so the
    # vocabulary) depends on train.seed, so both keep seed 0.
    runs = [tmp_path / f"layers{n}" for n in (1, 2)]
    train_members("caption_tiny", {run_dir: [f"--set=model.num_layers={n}"] for n, run_dir in zip((1, 2), runs)})
    members = ",".join(str(d) for d in runs)
    model_dir, export_dir = tmp_path / "ensemble", tmp_path / "saved_models"
    proc = run_ensemble(f"--members={members}", "--weights=2,1", f"--model_dir={model_dir}",
                        f"--export_dir={export_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((model_dir / "eval_metrics.json").read_text())
    # Every key of a captioning run's evaluation, greedy and beam, plus each member alone.
    member_metrics = json.loads((runs[0] / "eval_metrics.json").read_text())
    assert set(member_metrics) - {"train_seconds", "train_steps"} <= set(metrics)
    assert metrics["cider_ci_low"] <= metrics["cider"] <= metrics["cider_ci_high"]
    assert len(metrics["member_cider"]) == len(metrics["member_beam_cider"]) == 2
    assert metrics["members"] == [str(d) for d in runs] and metrics["method"] == "average"
    assert metrics["weights"] == [2.0, 1.0]
    rows = [json.loads(line) for line in (model_dir / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == metrics["num_test_images"] and {"generated", "beam", "references"} <= set(rows[0])
    assert (model_dir / "model.keras").exists()
    assert (export_dir / "captioner_ensemble" / "1" / "saved_model.pb").exists()

    # Its report draws the gallery and attention maps from the config it wrote.
    proc = subprocess.run([sys.executable, "-m", "training.report", f"--model_dir={model_dir}"],
                          cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    page = (model_dir / "report.html").read_text()
    assert 'alt="attention: ' in page and "Traceback" not in page

    # training.compare reads the ensemble's captions beside its members'.
    proc = subprocess.run(
        [sys.executable, "-m", "training.compare", f"--model_dirs={runs[0]},{model_dir}"],
        cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0 and "difference" in proc.stdout, proc.stderr[-3000:]

    # Classifier-only methods are refused by name.
    proc = run_ensemble(f"--members={members}", "--method=vote", f"--model_dir={model_dir}", "--export_dir=",
                        timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "--method=vote" in proc.stderr and "next-word probabilities" in proc.stderr, proc.stderr


def test_members_must_be_all_classifiers_or_all_captioners(tmp_path):
    for name, task in (("caption", "caption"), ("vqa", "vqa"), ("dual", "contrastive")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps({"task": task}))
    assert ensemble_cli.member_kind([str(tmp_path / "caption")] * 2) == "captioner"
    assert ensemble_cli.member_kind([str(tmp_path / "vqa")] * 2) == "classifier"
    with pytest.raises(ensemble_cli.EnsembleError, match="must all be classifiers or all captioners"):
        ensemble_cli.member_kind([str(tmp_path / "caption"), str(tmp_path / "vqa")])
    with pytest.raises(ensemble_cli.EnsembleError, match="'contrastive' has no ensemble"):
        ensemble_cli.member_kind([str(tmp_path / "caption"), str(tmp_path / "dual")])


def test_the_ensemble_is_never_written_over_a_trained_run(tmp_path):
    members = [tmp_path / "a", tmp_path / "b"]
    for member in members:
        (member / "checkpoints").mkdir(parents=True)
    with pytest.raises(ensemble_cli.EnsembleError, match="is one of the --members"):
        ensemble_cli.check_model_dir(str(tmp_path / "a" / ".." / "a"), [str(m) for m in members])
    (tmp_path / "other" / "checkpoints").mkdir(parents=True)
    with pytest.raises(ensemble_cli.EnsembleError, match="holds a training run"):
        ensemble_cli.check_model_dir(str(tmp_path / "other"), [str(m) for m in members])
    # A new directory, or an earlier ensemble's (no checkpoints), is fine.
    ensemble_cli.check_model_dir(str(tmp_path / "new"), [str(m) for m in members])
    (tmp_path / "ensemble").mkdir()
    (tmp_path / "ensemble" / "eval_metrics.json").write_text("{}")
    ensemble_cli.check_model_dir(str(tmp_path / "ensemble"), [str(m) for m in members])
