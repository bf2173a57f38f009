"""Experiment configuration: frozen dataclasses, overrides, JSON (named experiments: `training.experiments`)."""

import dataclasses
import json
import typing


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the data comes from and how it is batched.

    `batch_size` is global: under a distribution strategy each replica gets
    `batch_size / num_replicas` examples.
    """

    spec: str = "synthetic"
    image_size: int = 64
    sequence_length: int = 25
    vocabulary_size: int = 2000
    batch_size: int = 32
    augment: bool = False
    skip_bad_examples: bool = False
    synthetic_num_train: int = 20000
    synthetic_num_validation: int = 500
    synthetic_num_test: int = 500
    synthetic_multi_label: bool = False  # classify/vqa: multi-label questions ("which colours ...?")
    cache: bool = True
    # With a frozen image encoder (model.image_encoder.trainable=none) and no
    # augmentation, training encodes each image once and trains on the cached
    # features (not for sharded TFRecord input, which streams).
    cache_image_features: bool = True
    # With a frozen image encoder and augment=true: cache the features of this
    # many versions of each training image (the image and feature_views - 1
    # augmented ones); each visit takes one. 1: augment=true encodes every step.
    feature_views: int = 1
    # The same for a frozen text tower (model.text_encoder.trainable=none,
    # contrastive and classify/vqa): each distinct text is encoded once, if
    # its float32 features fit in max_text_feature_cache_mb.
    cache_text_features: bool = True
    max_text_feature_cache_mb: int = 2048


@dataclasses.dataclass(frozen=True)
class ImageEncoderConfig:
    """The image tower (`mmkeras.layers.ImageEncoder`) of every model family.

    `backbone_class` (a `keras_hub.models` class name) with `backbone_kwargs`,
    or `backbone_preset` (a keras-hub preset: a local folder, or an `hf://` /
    `kaggle://` handle where there is internet), replaces the default conv stem.
    `trainable` is `all` (fine-tune everything), `none` (freeze the stem or
    backbone; the projection to `hidden_dim` still trains) or `top:N` (train
    only the top N stages or backbone blocks).
    """

    # Two stride-2 stages: a 64 px image becomes a 16x16 token grid, each token
    # 4x4 pixels, fine enough for attention maps to land on the small synthetic
    # shapes (see `caption_synthetic`).
    stem_filters: typing.Tuple[int, ...] = (32, 64)
    convs_per_stage: int = 2
    stem_norm: str = "batch"  # Or "group" (no batch statistics; what contrastive training wants).
    backbone_class: typing.Optional[str] = None
    backbone_kwargs: typing.Dict[str, typing.Any] = dataclasses.field(default_factory=dict)
    backbone_preset: typing.Optional[str] = None
    trainable: str = "all"
    # Dropout on the image tokens (after the projection to hidden_dim): the
    # regulariser of a frozen backbone whose cached features a small data set
    # would otherwise let the decoder or head memorise.
    dropout: float = 0.0


@dataclasses.dataclass(frozen=True)
class TextEncoderConfig:
    """The text tower (`mmkeras.layers.TextEncoder`) of the classifier.

    A keras-hub text backbone (`backbone_class` + `backbone_kwargs`, or a
    `backbone_preset` whose own tokenizer then replaces the learned WordPiece
    vocabulary) replaces the default Transformer encoder. `trainable` as for
    the image encoder (`top:N`: the top N Transformer layers).
    """

    num_layers: int = 2
    pooling: str = "mean"
    backbone_class: typing.Optional[str] = None
    backbone_kwargs: typing.Dict[str, typing.Any] = dataclasses.field(default_factory=dict)
    backbone_preset: typing.Optional[str] = None
    trainable: str = "all"


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Model sizes shared by the tasks, the encoders, and the classifier's fusion.

    `num_layers` is the caption decoder's depth. The fusion fields apply to
    `classify` and `vqa` only: `fusion` is one of `mmkeras.layers.FUSION_LAYERS`;
    `fusion_weights` is `learned`, two fixed floats `IMG,TEXT` summing to 1 (for
    `weighted_sum` and `late`), or `cv` (k-fold cross-validation over
    `classify.cv_grid`, `weighted_sum` only); `modality_dropout` blanks a whole
    modality for that fraction of training examples.
    """

    hidden_dim: int = 128
    num_layers: int = 2
    num_heads: int = 4
    intermediate_dim: int = 256
    dropout: float = 0.1
    image_encoder: ImageEncoderConfig = ImageEncoderConfig()
    text_encoder: TextEncoderConfig = TextEncoderConfig()
    fusion: str = "concat"
    fusion_weights: str = "learned"
    fusion_num_layers: int = 1
    fusion_bidirectional: bool = False
    gcn_cross_modal_edges: str = "full"
    modality_dropout: float = 0.0
    head_hidden_dim: int = 0  # classify/vqa: a GELU hidden layer of that width in the head (0: linear).
    # Transfer (every task whose model has the towers): a trained run's
    # `model.keras` (`--init_from=MODEL_DIR`) gives the image and text
    # encoders their weights; `lora_rank` > 0 then trains low-rank adapters
    # of the loaded towers' Dense/EinsumDense/Embedding kernels instead of
    # the towers themselves (Hu et al., 2021).
    init_from: str = ""
    lora_rank: int = 0


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimization (AdamW, linear warmup then cosine decay), budget and checkpoints.

    Early stopping: with `early_stopping_patience` > 0, the model is evaluated
    on the validation split every `eval_every` steps (default
    `steps_per_epoch`); training stops after that many evaluations without
    improvement of `early_stopping_metric` (default: the task's, e.g.
    `val_accuracy`), and the best weights are restored before the final
    evaluation and export.
    """

    # ~136 ms a step of the default captioner on 2 CPU cores (1,100 steps in
    # 149 s, measured): the schedule completes well inside the 5-minute run.
    steps: int = 1100
    # Safety net for the 5-minute default run on a slow or busy machine.
    max_minutes: float = 3.3
    learning_rate: float = 2e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01
    clipnorm: float = 1.0
    steps_per_epoch: int = 250
    checkpoint_every: int = 250
    seed: int = 0
    log_every: int = 50  # Steps between metric logs (TensorBoard, train_log.jsonl).
    mixed_precision: str = "float32"  # Or mixed_float16 (loss scaling), mixed_bfloat16.
    jit_compile: bool = False  # XLA-compile the training step.
    eval_every: int = 0
    early_stopping_patience: int = 0
    early_stopping_metric: str = ""


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    batch_size: int = 128
    max_images: int = 0  # 0: the whole test split (images, or examples for classify).
    num_samples: int = 10


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    model_name: str = ""  # Empty: by task (captioner, classifier, vqa).
    version: int = 0  # 0: one more than the highest existing version.
    # Requests whose images declare more pixels (read from their headers,
    # before decoding) fail with INVALID_ARGUMENT; recorded in the export.
    max_pixels: int = 40_000_000


@dataclasses.dataclass(frozen=True)
class CaptionConfig:
    """Settings of the `caption` task only."""

    num_beams: int = 3  # Beam width of evaluation samples and the `beam_search` export.
    # "word": the captioner's vocabulary holds whole training words only, so it
    # never strings WordPiece continuations into non-words; "wordpiece": pieces.
    vocabulary: str = "word"
    min_word_count: int = 1  # vocabulary="word": rarer training words become [UNK].
    # Decoding of evaluation and export (both signatures block repeated n-grams;
    # `length_penalty` ranks beams: summed log-prob / length ** length_penalty).
    no_repeat_ngram_size: int = 0  # 0: off.
    length_penalty: float = 1.0  # 1: mean log-prob per token; 0: raw sum.
    eval_beam: bool = True  # Also report beam-search metrics (`beam_` keys) and samples.
    # Self-critical sequence training (CIDEr-D reward, Rennie et al. 2017):
    # teacher forcing until this step, then `self_critical_samples` sampled
    # captions per image, each weighted by its CIDEr-D minus the mean of the
    # image's other samples. 0: off. In-memory caption data only.
    self_critical_from_step: int = 0
    self_critical_samples: int = 5


@dataclasses.dataclass(frozen=True)
class ClassifyConfig:
    """Settings of the `classify` and `vqa` tasks only.

    `cv_folds`, `cv_grid` and `cv_steps` drive `model.fusion_weights=cv`: for
    each image weight in the grid, `cv_folds` models train `cv_steps` steps on
    the other folds of the training split; the weight with the best mean
    held-out accuracy is used for the final model. `tune_thresholds`
    (multi-label data) picks per-label decision thresholds on the validation
    split.
    """

    cv_folds: int = 3
    cv_grid: typing.Tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9)
    cv_steps: int = 150
    tune_thresholds: bool = True
    ablation: bool = True  # Also report image-only and text-only accuracy.


@dataclasses.dataclass(frozen=True)
class ContrastiveConfig:
    """Settings of the `contrastive` task only (`mmkeras.models.DualEncoder`).

    `loss` is `infonce` (CLIP) or `sigmoid` (SigLIP); `logit_scale_init` 0
    takes the loss's default (1/0.07, or 10 for sigmoid). Zero-shot
    classification (`zero_shot`) embeds every label in each of its prompt
    templates, averages them, and classifies images by cosine similarity:
    on the synthetic data's single-shape test images (shape and colour) and
    on easy-vqa test images (shape and colour answers); `zero_shot_images`
    caps the easy-vqa images.
    """

    loss: str = "infonce"
    projection_dim: int = 128
    logit_scale_init: float = 0.0
    zero_shot: bool = True
    zero_shot_images: int = 300
    num_retrieval_samples: int = 12  # Queries written to retrieval_samples.json (with top-5 images).


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    task: str = "caption"
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    export: ExportConfig = ExportConfig()
    caption: CaptionConfig = CaptionConfig()
    classify: ClassifyConfig = ClassifyConfig()
    contrastive: ContrastiveConfig = ContrastiveConfig()


def _parse_value(text, current, field_type, path):
    """Parses an override string into the type of the field it replaces."""
    if text.lower() in ("none", "null") and (
        current is None or "Optional" in str(field_type)
    ):
        return None
    if isinstance(current, dict) or "Dict" in str(field_type):
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = None
        if not isinstance(value, dict):
            raise ValueError(f"--set {path}: expected a JSON object such as {{\"a\": 1}}. Received: {text!r}")
        return value
    if isinstance(current, bool) or field_type is bool:
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ValueError(f"--set {path}: expected true/false. Received: {text!r}")
    if isinstance(current, tuple) or "Tuple" in str(field_type):
        kind = float if "float" in str(field_type) else int
        try:
            return tuple(kind(v) for v in text.replace("(", "").replace(")", "").split(",") if v)
        except ValueError:
            raise ValueError(
                f"--set {path}: expected comma-separated {kind.__name__}s. Received: {text!r}"
            ) from None
    for kind in (int, float):
        if isinstance(current, kind) or field_type is kind:
            try:
                return kind(text)
            except ValueError:
                raise ValueError(
                    f"--set {path}: expected {kind.__name__}. Received: {text!r}"
                ) from None
    return text


def override(config, assignments):
    """Returns `config` with `field.path=value` assignments applied.

    Example: `override(cfg, ["train.steps=100", "model.hidden_dim=64"])`.
    """
    for assignment in assignments:
        if "=" not in assignment:
            raise ValueError(
                f"--set takes field.path=value. Received: {assignment!r}"
            )
        path, text = assignment.split("=", 1)
        config = _replace_path(config, path.strip().split("."), text.strip(), path)
    return config


def _replace_path(obj, parts, text, full_path):
    fields = {f.name: f for f in dataclasses.fields(obj)}
    name = parts[0]
    if name not in fields:
        raise ValueError(
            f"--set {full_path}: {type(obj).__name__} has no field {name!r}. "
            f"Fields: {', '.join(fields)}"
        )
    current = getattr(obj, name)
    if len(parts) > 1:
        if not dataclasses.is_dataclass(current):
            raise ValueError(f"--set {full_path}: {name!r} is not a section.")
        value = _replace_path(current, parts[1:], text, full_path)
    else:
        if dataclasses.is_dataclass(current):
            raise ValueError(f"--set {full_path}: {name!r} is a section, not a value.")
        value = _parse_value(text, current, fields[name].type, full_path)
    return dataclasses.replace(obj, **{name: value})


def to_json(config):
    return json.dumps(dataclasses.asdict(config), indent=2, sort_keys=True)


def differences(old, new, prefix=""):
    """`["model.hidden_dim: 32 -> 48", ...]`: the fields of two `to_json` dicts that differ.

    A field only one side has (a config written by another mmkeras version)
    shows as missing on the other.
    """
    def shown(values, key):
        return json.dumps(values[key]) if key in values else "(missing)"

    changed = []
    for key in sorted(set(old) | set(new)):
        path = f"{prefix}{key}"
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changed.extend(differences(a, b, f"{path}."))
        elif a != b or (key in old) != (key in new):
            changed.append(f"{path}: {shown(old, key)} -> {shown(new, key)}")
    return changed


def from_dict(cls, values):
    """Rebuilds a config dataclass from `dataclasses.asdict` output."""
    kwargs = {}
    for field in dataclasses.fields(cls):
        if field.name not in values:
            continue
        value = values[field.name]
        if dataclasses.is_dataclass(field.default):
            value = from_dict(type(field.default), value)
        elif isinstance(value, dict):
            value = dict(value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[field.name] = value
    return cls(**kwargs)
