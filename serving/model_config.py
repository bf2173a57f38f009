"""The TensorFlow Serving files that sit beside the exports, written and read.

`serving/docker/docker-compose.yml` mounts the export directory
(`saved_models/`) at `/models` in the TF Serving container and starts it with

    --model_config_file=/models/models.config
    --batching_parameters_file=/models/batching_parameters.pbtxt

so the exporter keeps both files in the export directory:

    write_models_config("saved_models", {"captioner": None, "classifier": None})
    write_batching_parameters("saved_models")

`models.config` is a `model_config_list` text proto whose base paths are
container paths (`/models/<name>`). `python -m serving.server
--model_config_file=saved_models/models.config` reads the same file on this
machine: a `/models/X` path that does not exist here is taken as `X` under the
config file's folder.

This module is the one place that knows these files and the export layout:
`write_*` for the exporter, `load_model_config_file` (-> `ModelConfig`s) for
the local server, and `version_dirs` for anyone who lists the integer version
directories under a model's base path (`<base_path>/<version>/`).
"""

import dataclasses
import os
import re
import tempfile

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

MODELS_CONFIG_FILENAME = "models.config"
BATCHING_PARAMETERS_FILENAME = "batching_parameters.pbtxt"
CONTAINER_MODELS_ROOT = "/models"
MODEL_PLATFORM = "tensorflow"


# A version directory is named by an integer and nothing else: `.tmp-3` (an
# export being written) and `3.tmp` are not versions.
_VERSION_DIR_RE = re.compile(r"[0-9]+")


def container_base_path(name):
    """Base path of model `name` inside the serving container."""
    return f"{CONTAINER_MODELS_ROOT}/{name}"


def _atomic_write(path, text):
    # TF Serving may re-read the config while we write it
    # (--model_config_file_poll_wait_seconds): never show it a partial file.
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".config")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise
    return path


def read_models_config(path):
    """Parses a `models.config` file into a `ModelServerConfig` proto."""
    config = model_server_config_pb2.ModelServerConfig()
    with open(path) as f:
        text_format.Parse(f.read(), config)
    return config


def write_models_config(
    export_dir,
    models,
    versions=None,
    version_labels=None,
    replace=False,
    filename=MODELS_CONFIG_FILENAME,
):
    """Writes or updates `export_dir/models.config` for TF Serving.

    Args:
        export_dir: the export directory (mounted at `/models` in the
            container); the file is written there.
        models: dict model name -> base path in the container, or None for
            `/models/<name>`; a list of names means all None.
        versions: optional dict model name -> list of versions to serve
            (`specific` version policy). Models not listed serve their
            highest version (TF Serving's default `latest { num_versions: 1 }`).
        version_labels: optional dict model name -> {label: version}, e.g.
            `{"captioner": {"stable": 1, "canary": 2}}`.
        replace: if False (default) entries for other models already in the
            file are kept and those named in `models` are replaced; if True
            the file lists exactly `models`.
        filename: file name inside `export_dir`.

    Returns:
        The path of the written file.

    Example:

        write_models_config("saved_models", {"captioner": None})
    """
    if not isinstance(models, dict):
        models = {name: None for name in models}
    versions = versions or {}
    version_labels = version_labels or {}
    for name in list(versions) + list(version_labels):
        if name not in models:
            raise ValueError(
                f"versions/version_labels name a model that is not in models. "
                f"Received: {name}"
            )
    path = os.path.join(export_dir, filename)
    config = model_server_config_pb2.ModelServerConfig()
    if not replace and os.path.exists(path):
        config = read_models_config(path)
    existing = [c for c in config.model_config_list.config if c.name not in models]
    new_config = model_server_config_pb2.ModelServerConfig()
    model_list = new_config.model_config_list
    for old in existing:
        model_list.config.add().CopyFrom(old)
    for name in sorted(models):
        if not name or "/" in name:
            raise ValueError(f"Invalid model name. Received: name={name!r}")
        entry = model_list.config.add()
        entry.name = name
        entry.base_path = models[name] or container_base_path(name)
        entry.model_platform = MODEL_PLATFORM
        if name in versions:
            entry.model_version_policy.specific.versions.extend(
                sorted(int(v) for v in versions[name])
            )
        for label, version in sorted(version_labels.get(name, {}).items()):
            entry.version_labels[label] = int(version)
    return _atomic_write(path, text_format.MessageToString(new_config))


def write_batching_parameters(
    export_dir,
    max_batch_size=64,
    batch_timeout_micros=1000,
    num_batch_threads=4,
    max_enqueued_batches=100,
    filename=BATCHING_PARAMETERS_FILENAME,
):
    """Writes `export_dir/batching_parameters.pbtxt` for `--enable_batching`.

    A `BatchingParameters` text proto (fields are `Int64Value` wrappers, hence
    the `{ value: N }` form). The defaults suit one GPU: batches of up to 64
    examples, a batch waits at most 1 ms to fill, 4 threads run batches, and
    up to 100 batches queue before requests are rejected with UNAVAILABLE.

    Args:
        export_dir: the export directory (mounted at `/models`).
        max_batch_size: most examples in one model call.
        batch_timeout_micros: longest wait for a batch to fill.
        num_batch_threads: batches run in parallel.
        max_enqueued_batches: queue length, in batches, before rejecting.
        filename: file name inside `export_dir`.

    Returns:
        The path of the written file.
    """
    values = {
        "max_batch_size": max_batch_size,
        "batch_timeout_micros": batch_timeout_micros,
        "num_batch_threads": num_batch_threads,
        "max_enqueued_batches": max_enqueued_batches,
    }
    for name, value in values.items():
        minimum = 0 if name == "batch_timeout_micros" else 1
        if int(value) != value or value < minimum:
            raise ValueError(f"{name} must be an integer >= {minimum}. Received: {name}={value}")
    text = "".join(f"{name} {{ value: {int(value)} }}\n" for name, value in values.items())
    return _atomic_write(os.path.join(export_dir, filename), text)


# ---------------------------------------------------------------------------
# Reading: models.config -> ModelConfig, for the local server.


@dataclasses.dataclass
class ModelConfig:
    """One served model: name, local base path, version policy and labels."""

    name: str
    base_path: str
    # ("latest", n) | ("all",) | ("specific", frozenset of versions)
    version_policy: tuple = ("latest", 1)
    version_labels: dict = dataclasses.field(default_factory=dict)


def resolve_base_path(base_path, config_dir):
    """Maps a base path from a container `models.config` to this machine.

    An existing path is used as is. Otherwise `/models/X` becomes
    `<config_dir>/X` and a relative path is resolved against `config_dir`.
    """
    container_root = CONTAINER_MODELS_ROOT + "/"
    if os.path.isabs(base_path):
        if os.path.exists(base_path) or config_dir is None:
            return base_path
        if base_path.startswith(container_root):
            return os.path.join(config_dir, base_path[len(container_root) :])
        return base_path
    if config_dir is not None:
        return os.path.normpath(os.path.join(config_dir, base_path))
    return os.path.abspath(base_path)


def model_configs_from_proto(server_config, config_dir=None):
    """ModelServerConfig proto -> list of `ModelConfig`."""
    if server_config.WhichOneof("config") != "model_config_list":
        raise ValueError("Only model_config_list model server configs are supported.")
    models = []
    for config in server_config.model_config_list.config:
        if not config.name:
            raise ValueError(f"A model config has no name: {config}")
        if config.model_platform not in ("", MODEL_PLATFORM):
            raise ValueError(
                f"Model {config.name}: only model_platform \"{MODEL_PLATFORM}\" is "
                f"supported. Received: {config.model_platform}"
            )
        policy_kind = config.model_version_policy.WhichOneof("policy_choice")
        if policy_kind == "all":
            policy = ("all",)
        elif policy_kind == "specific":
            policy = ("specific", frozenset(config.model_version_policy.specific.versions))
        elif policy_kind == "latest":
            policy = ("latest", max(1, config.model_version_policy.latest.num_versions))
        else:
            policy = ("latest", 1)
        models.append(
            ModelConfig(
                name=config.name,
                base_path=resolve_base_path(config.base_path, config_dir),
                version_policy=policy,
                version_labels=dict(config.version_labels),
            )
        )
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise ValueError(f"Duplicate model names in config: {names}")
    return models


def load_model_config_file(path):
    """Reads a `model_config_list` text proto file into `ModelConfig`s."""
    return model_configs_from_proto(
        read_models_config(path), config_dir=os.path.dirname(os.path.abspath(path))
    )


# ---------------------------------------------------------------------------
# Version directories: <base_path>/<version>/.


def version_dirs(base_path, loadable_only=False):
    """{version: path} of the integer-named directories under `base_path`.

    Args:
        base_path: a model's base path; a missing one has no versions.
        loadable_only: keep only directories that hold a SavedModel
            (`saved_model.pb` or `saved_model.pbtxt`), the ones a server can
            load. Without it, every version directory counts, as a new
            version number must not reuse any of them.
    """
    try:
        entries = os.listdir(base_path)
    except OSError:
        return {}
    versions = {}
    for entry in entries:
        path = os.path.join(base_path, entry)
        if not _VERSION_DIR_RE.fullmatch(entry) or not os.path.isdir(path):
            continue
        if loadable_only and not (
            os.path.isfile(os.path.join(path, "saved_model.pb"))
            or os.path.isfile(os.path.join(path, "saved_model.pbtxt"))
        ):
            continue
        versions[int(entry)] = path
    return versions
