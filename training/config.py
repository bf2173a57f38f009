"""Experiment configuration: frozen dataclasses, named experiments, overrides."""

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

    stem_filters: typing.Tuple[int, ...] = (32, 64, 128)
    convs_per_stage: int = 2
    stem_norm: str = "batch"  # Or "group" (no batch statistics; what contrastive training wants).
    backbone_class: typing.Optional[str] = None
    backbone_kwargs: typing.Dict[str, typing.Any] = dataclasses.field(default_factory=dict)
    backbone_preset: typing.Optional[str] = None
    trainable: str = "all"


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

    # ~175 ms a step on 2 CPU cores: the schedule completes in ~3.2 minutes.
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


def caption_synthetic():
    """The default: captioner on the built-in synthetic shapes data."""
    return ExperimentConfig()


def caption_flickr8k():
    """Captioner on Flickr8k (e.g. `--data=flickr8k:../shared/data/flickr8k-1k`)."""
    return ExperimentConfig(
        data=DataConfig(
            spec="flickr8k:../shared/data/flickr8k-1k",
            image_size=128,
            sequence_length=25,
            vocabulary_size=3000,
            batch_size=32,
            augment=True,
        ),
        # One convolution per stage: at 128 px the two-conv stem costs 4x the
        # compute, and a 10-minute CPU budget buys more steps this way.
        model=ModelConfig(
            hidden_dim=192,
            num_layers=2,
            num_heads=4,
            intermediate_dim=512,
            dropout=0.2,
            image_encoder=ImageEncoderConfig(stem_filters=(32, 64, 128, 192), convs_per_stage=1),
        ),
        train=TrainConfig(steps=2500, max_minutes=10.0, learning_rate=1e-3),
        eval=EvalConfig(batch_size=50),
    )


def caption_flickr8k_pretrained():
    """Captioner on Flickr8k with the ImageNet EfficientNet-Lite0 image encoder, frozen.

    The preset is built from its wheel on first use (`python -m training.presets`
    builds it ahead). Frozen, the encoder runs once per training image and
    the decoder trains on the cached 7x7 feature grid, so the 10-minute CPU
    budget goes to the decoder; `--set model.image_encoder.trainable=top:N`
    fine-tunes the top N blocks instead (no cache, far fewer steps).
    """
    base = caption_flickr8k()
    return dataclasses.replace(
        base,
        data=dataclasses.replace(base.data, image_size=224, augment=False, batch_size=64),
        model=dataclasses.replace(
            base.model, hidden_dim=256, intermediate_dim=512, dropout=0.3,
            image_encoder=ImageEncoderConfig(backbone_preset="efficientnet_lite0_imagenet", trainable="none"),
        ),
        # ~1 s a step on 2 CPU cores (the decoder over 49 tokens of 1280
        # features, 64 captions): the schedule ends within the 10 minutes (~9
        # epochs of the 4,000 training captions).
        train=dataclasses.replace(base.train, steps=560, learning_rate=1e-3, warmup_steps=60,
                                  steps_per_epoch=100, checkpoint_every=100),
        caption=CaptionConfig(min_word_count=2),
    )


def caption_tiny():
    """Seconds-long run for tests and smoke checks."""
    return ExperimentConfig(
        data=DataConfig(
            image_size=32,
            sequence_length=20,
            vocabulary_size=200,
            batch_size=16,
            synthetic_num_train=256,
            synthetic_num_validation=32,
            synthetic_num_test=32,
        ),
        model=ModelConfig(
            hidden_dim=32, num_layers=1, num_heads=2, intermediate_dim=64,
            image_encoder=ImageEncoderConfig(stem_filters=(8, 16)),
        ),
        train=TrainConfig(steps=20, steps_per_epoch=10, checkpoint_every=10, warmup_steps=5),
        eval=EvalConfig(batch_size=32, num_samples=3),
    )


def classify_synthetic():
    """Fusion classifier (VQA) on questions about the built-in synthetic shapes."""
    return ExperimentConfig(
        task="classify",
        data=DataConfig(
            image_size=64, sequence_length=16, vocabulary_size=500, batch_size=64,
            synthetic_num_train=4000, synthetic_num_validation=300, synthetic_num_test=500,
        ),
        model=ModelConfig(
            hidden_dim=128, num_heads=4, intermediate_dim=256, dropout=0.1,
            image_encoder=ImageEncoderConfig(stem_filters=(32, 64, 128), convs_per_stage=1),
            text_encoder=TextEncoderConfig(num_layers=1),
            fusion="cross_attention",
        ),
        train=TrainConfig(steps=1000, max_minutes=5.0, learning_rate=2e-3, warmup_steps=100,
                          steps_per_epoch=200, checkpoint_every=200),
        eval=EvalConfig(batch_size=128),
    )


def vqa_synthetic():
    """`classify_synthetic` as the `vqa` task (answers as classes)."""
    return dataclasses.replace(classify_synthetic(), task="vqa")


def vqa_easy_vqa():
    """VQA on easy-vqa (`--data=easy_vqa`): 13 answers, 64 px images, 15-minute budget."""
    return ExperimentConfig(
        task="vqa",
        data=DataConfig(spec="easy_vqa", image_size=64, sequence_length=12, vocabulary_size=300,
                        batch_size=64),
        model=ModelConfig(
            hidden_dim=128, num_heads=4, intermediate_dim=256, dropout=0.1,
            image_encoder=ImageEncoderConfig(stem_filters=(32, 64, 128), convs_per_stage=1),
            text_encoder=TextEncoderConfig(num_layers=1),
            fusion="cross_attention",
        ),
        # ~230 ms a step on 2 CPU cores: the schedule completes within the budget.
        train=TrainConfig(steps=3600, max_minutes=15.0, learning_rate=2e-3, warmup_steps=200,
                          steps_per_epoch=400, checkpoint_every=400),
        eval=EvalConfig(batch_size=256),
    )


def vqa_easy_vqa_pretrained():
    """easy-vqa with the ImageNet EfficientNet-Lite0 frozen (features cached), bilinear fusion.

    Images upsampled to 128 px give a 4x4 feature grid; each image is encoded
    once, so the 15-minute budget buys ~8000 steps of the text encoder,
    fusion and head instead of ~3500 of a from-scratch CNN.
    """
    base = vqa_easy_vqa()
    return dataclasses.replace(
        base,
        data=dataclasses.replace(base.data, image_size=128),
        model=dataclasses.replace(
            base.model, fusion="bilinear", head_hidden_dim=256,
            image_encoder=ImageEncoderConfig(backbone_preset="efficientnet_lite0_imagenet", trainable="none"),
        ),
        train=dataclasses.replace(base.train, steps=8000, learning_rate=1e-3, warmup_steps=300,
                                  steps_per_epoch=1000, checkpoint_every=1000),
    )


def classify_flickr8k_match():
    """Does this caption describe this photo? Flickr8k-1k matching (`--data=flickr8k_match:DIR`)."""
    return ExperimentConfig(
        task="classify",
        data=DataConfig(spec="flickr8k_match:../shared/data/flickr8k-1k", image_size=128,
                        sequence_length=25, vocabulary_size=2000, batch_size=32, augment=True),
        model=ModelConfig(
            hidden_dim=128, num_heads=4, intermediate_dim=256, dropout=0.2,
            image_encoder=ImageEncoderConfig(stem_filters=(32, 64, 128, 128), convs_per_stage=1),
            text_encoder=TextEncoderConfig(num_layers=1),
            fusion="cross_attention",
        ),
        train=TrainConfig(steps=2000, max_minutes=10.0, learning_rate=1e-3, steps_per_epoch=200,
                          checkpoint_every=200),
        eval=EvalConfig(batch_size=50),
    )


def classify_tiny():
    """Seconds-long classifier run for tests and smoke checks."""
    return ExperimentConfig(
        task="classify",
        data=DataConfig(image_size=32, sequence_length=12, vocabulary_size=200, batch_size=16,
                        synthetic_num_train=128, synthetic_num_validation=32, synthetic_num_test=32),
        model=ModelConfig(
            hidden_dim=32, num_heads=2, intermediate_dim=64,
            image_encoder=ImageEncoderConfig(stem_filters=(8, 16)),
            text_encoder=TextEncoderConfig(num_layers=1),
        ),
        train=TrainConfig(steps=20, steps_per_epoch=10, checkpoint_every=10, warmup_steps=5),
        eval=EvalConfig(batch_size=32, num_samples=3),
        classify=ClassifyConfig(cv_folds=2, cv_grid=(0.25, 0.75), cv_steps=4),
    )


def vqa_tiny():
    """`classify_tiny` as the `vqa` task."""
    return dataclasses.replace(classify_tiny(), task="vqa")


def contrastive_synthetic():
    """Dual encoder (CLIP-style InfoNCE) on the built-in synthetic shapes, from scratch."""
    return ExperimentConfig(
        task="contrastive",
        data=DataConfig(image_size=64, sequence_length=24, vocabulary_size=500, batch_size=128),
        model=ModelConfig(
            hidden_dim=128, num_heads=4, intermediate_dim=256, dropout=0.0,
            image_encoder=ImageEncoderConfig(stem_filters=(32, 64, 128), convs_per_stage=1, stem_norm="group"),
            text_encoder=TextEncoderConfig(num_layers=2),
        ),
        train=TrainConfig(steps=1500, max_minutes=10.0, learning_rate=2e-3, warmup_steps=100,
                          steps_per_epoch=250, checkpoint_every=250),
        eval=EvalConfig(batch_size=250),
    )


def contrastive_flickr8k_pretrained():
    """Dual encoder on Flickr8k: the frozen ImageNet EfficientNet-Lite0 and MiniLM, aligned.

    Locked-image tuning (Zhai et al., 2022) with the text backbone locked as
    well: the image features are computed once and cached; the budget trains
    the projections. `--set model.text_encoder.trainable=top:2` (or `all`)
    fine-tunes MiniLM too, at several times the cost of a step.
    """
    return ExperimentConfig(
        task="contrastive",
        data=DataConfig(spec="flickr8k:../shared/data/flickr8k-1k", image_size=224, sequence_length=24,
                        batch_size=64),
        model=ModelConfig(
            hidden_dim=256, dropout=0.1,
            image_encoder=ImageEncoderConfig(backbone_preset="efficientnet_lite0_imagenet", trainable="none"),
            text_encoder=TextEncoderConfig(backbone_preset="minilm_l6", trainable="none"),
        ),
        # Both backbones frozen: the projections (and the text tower's output
        # projection and norm) align the two pretrained spaces. Fine-tuning
        # MiniLM (all or top:2 layers) cost 2.7-12 s a step on the shared
        # 2-core machine; frozen, ~1.4 s at a load of 5.
        train=TrainConfig(steps=600, max_minutes=10.0, learning_rate=1e-3, warmup_steps=50,
                          steps_per_epoch=100, checkpoint_every=100),
        eval=EvalConfig(batch_size=50),
        contrastive=ContrastiveConfig(projection_dim=256),
    )


def contrastive_flickr8k():
    """`contrastive_flickr8k_pretrained` from random towers (the baseline of the bar)."""
    base = contrastive_flickr8k_pretrained()
    return dataclasses.replace(
        base,
        data=dataclasses.replace(base.data, image_size=128, vocabulary_size=3000, augment=True),
        model=ModelConfig(
            hidden_dim=192, num_heads=4, intermediate_dim=512, dropout=0.1,
            image_encoder=ImageEncoderConfig(stem_filters=(32, 64, 128, 192), convs_per_stage=1,
                                             stem_norm="group"),
            text_encoder=TextEncoderConfig(num_layers=2),
        ),
        train=dataclasses.replace(base.train, steps=2500, learning_rate=1e-3),
    )


def contrastive_tiny():
    """Seconds-long dual encoder run for tests and smoke checks."""
    return dataclasses.replace(
        caption_tiny(), task="contrastive",
        model=dataclasses.replace(caption_tiny().model, text_encoder=TextEncoderConfig(num_layers=1)),
        contrastive=ContrastiveConfig(projection_dim=16, zero_shot_images=20, num_retrieval_samples=3),
    )


EXPERIMENTS = {
    "caption_synthetic": caption_synthetic,
    "caption_flickr8k": caption_flickr8k,
    "caption_flickr8k_pretrained": caption_flickr8k_pretrained,
    "caption_tiny": caption_tiny,
    "classify_synthetic": classify_synthetic,
    "classify_flickr8k_match": classify_flickr8k_match,
    "classify_tiny": classify_tiny,
    "contrastive_flickr8k": contrastive_flickr8k,
    "contrastive_flickr8k_pretrained": contrastive_flickr8k_pretrained,
    "contrastive_synthetic": contrastive_synthetic,
    "contrastive_tiny": contrastive_tiny,
    "vqa_synthetic": vqa_synthetic,
    "vqa_easy_vqa": vqa_easy_vqa,
    "vqa_easy_vqa_pretrained": vqa_easy_vqa_pretrained,
    "vqa_tiny": vqa_tiny,
}

# The experiment a task starts from when --experiment is not given...
DEFAULT_EXPERIMENTS = {"caption": "caption_synthetic", "classify": "classify_synthetic", "vqa": "vqa_synthetic",
                       "contrastive": "contrastive_synthetic"}
# ... unless --data names a data set that has its own experiment.
DATA_EXPERIMENTS = {
    ("caption", "flickr8k"): "caption_flickr8k",
    ("classify", "flickr8k_match"): "classify_flickr8k_match",
    ("vqa", "easy_vqa"): "vqa_easy_vqa_pretrained",
    ("contrastive", "flickr8k"): "contrastive_flickr8k_pretrained",
}


def default_experiment(task, data=None):
    """The experiment `--task=task --data=data` starts from without --experiment."""
    kind = str(data or "").partition(":")[0].strip().lower()
    return DATA_EXPERIMENTS.get((task, kind), DEFAULT_EXPERIMENTS[task])


def get_experiment(name):
    if name not in EXPERIMENTS:
        raise ValueError(
            f"Unknown experiment {name!r}. Known experiments: {', '.join(sorted(EXPERIMENTS))}"
        )
    return EXPERIMENTS[name]()


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
