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
    cache: bool = True


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    hidden_dim: int = 128
    num_layers: int = 2
    num_heads: int = 4
    intermediate_dim: int = 256
    dropout: float = 0.1
    stem_filters: typing.Tuple[int, ...] = (32, 64, 128)
    convs_per_stage: int = 2
    backbone_class: typing.Optional[str] = None
    backbone_preset: typing.Optional[str] = None


@dataclasses.dataclass(frozen=True)
class TrainConfig:
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


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    batch_size: int = 128
    max_images: int = 0  # 0: the whole test split.
    num_samples: int = 10


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    model_name: str = "captioner"
    version: int = 0  # 0: one more than the highest existing version.


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    task: str = "caption"
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    export: ExportConfig = ExportConfig()


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
            stem_filters=(32, 64, 128, 192),
            convs_per_stage=1,
        ),
        train=TrainConfig(steps=2500, max_minutes=10.0, learning_rate=1e-3),
        eval=EvalConfig(batch_size=50),
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
            hidden_dim=32, num_layers=1, num_heads=2, intermediate_dim=64, stem_filters=(8, 16)
        ),
        train=TrainConfig(steps=20, steps_per_epoch=10, checkpoint_every=10, warmup_steps=5),
        eval=EvalConfig(batch_size=32, num_samples=3),
    )


EXPERIMENTS = {
    "caption_synthetic": caption_synthetic,
    "caption_flickr8k": caption_flickr8k,
    "caption_tiny": caption_tiny,
}


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
    if isinstance(current, bool) or field_type is bool:
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ValueError(f"--set {path}: expected true/false. Received: {text!r}")
    if isinstance(current, tuple) or "Tuple" in str(field_type):
        try:
            return tuple(int(v) for v in text.replace("(", "").replace(")", "").split(",") if v)
        except ValueError:
            raise ValueError(f"--set {path}: expected comma-separated ints. Received: {text!r}")
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
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[field.name] = value
    return cls(**kwargs)
