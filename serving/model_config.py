"""Writes the TensorFlow Serving config files that sit beside the exports.

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
"""

import os
import tempfile

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

MODELS_CONFIG_FILENAME = "models.config"
BATCHING_PARAMETERS_FILENAME = "batching_parameters.pbtxt"
CONTAINER_MODELS_ROOT = "/models"
MODEL_PLATFORM = "tensorflow"


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
