"""`serving.model_config`: writers, readers and version directories, and their
agreement with the server, the exporter and docker-compose."""

import os
import re

import pytest
from tensorflow_serving.config import model_server_config_pb2

from serving import model_config
from serving import server
from tests import serving_fixtures as fx

COMPOSE_FILE = os.path.join(fx.REPO_ROOT, "serving", "docker", "docker-compose.yml")


def test_write_models_config_is_a_model_config_list(tmp_path):
    path = model_config.write_models_config(
        tmp_path,
        {"captioner": None, "classifier": "/models/vqa_classifier"},
        versions={"classifier": [3, 1]},
        version_labels={"captioner": {"stable": 1, "canary": 2}},
    )
    assert path == os.path.join(tmp_path, "models.config")
    config = model_config.read_models_config(path)
    entries = {c.name: c for c in config.model_config_list.config}
    assert set(entries) == {"captioner", "classifier"}
    assert entries["captioner"].base_path == "/models/captioner"
    assert entries["classifier"].base_path == "/models/vqa_classifier"
    assert {c.model_platform for c in entries.values()} == {"tensorflow"}
    assert list(entries["classifier"].model_version_policy.specific.versions) == [1, 3]
    assert dict(entries["captioner"].version_labels) == {"stable": 1, "canary": 2}
    assert not entries["captioner"].HasField("model_version_policy")


def test_write_models_config_updates_in_place(tmp_path):
    model_config.write_models_config(tmp_path, ["captioner", "classifier"])
    model_config.write_models_config(tmp_path, {"classifier": "/models/other", "dual_encoder": None})
    config = model_config.read_models_config(tmp_path / "models.config")
    assert {c.name: c.base_path for c in config.model_config_list.config} == {
        "captioner": "/models/captioner",
        "classifier": "/models/other",
        "dual_encoder": "/models/dual_encoder",
    }
    model_config.write_models_config(tmp_path, ["captioner"], replace=True)
    config = model_config.read_models_config(tmp_path / "models.config")
    assert [c.name for c in config.model_config_list.config] == ["captioner"]
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp")]
    with pytest.raises(ValueError):
        model_config.write_models_config(tmp_path, ["a/b"])


def test_batching_parameters_round_trip_through_the_server_parser(tmp_path):
    path = model_config.write_batching_parameters(
        tmp_path, max_batch_size=32, batch_timeout_micros=500, num_batch_threads=2, max_enqueued_batches=9
    )
    with open(path) as f:
        params = server.parse_batching_parameters(f.read())
    assert params == server.BatchingParameters(32, 500, 2, 9)
    with open(model_config.write_batching_parameters(tmp_path)) as f:
        defaults = server.parse_batching_parameters(f.read())
    assert defaults.max_batch_size == 64
    with pytest.raises(ValueError):
        model_config.write_batching_parameters(tmp_path, max_batch_size=0)


def test_server_maps_container_paths_next_to_the_config(tmp_path):
    (tmp_path / "captioner").mkdir()
    model_config.write_models_config(tmp_path, ["captioner", "missing"], version_labels={"captioner": {"stable": 1}})
    configs = model_config.load_model_config_file(str(tmp_path / "models.config"))
    assert [(c.name, c.base_path, c.version_policy) for c in configs] == [
        ("captioner", str(tmp_path / "captioner"), ("latest", 1)),
        ("missing", str(tmp_path / "missing"), ("latest", 1)),
    ]
    assert configs[0].version_labels == {"stable": 1}
    assert model_config.resolve_base_path("relative/x", str(tmp_path)) == str(tmp_path / "relative" / "x")
    assert model_config.resolve_base_path(str(tmp_path), "/elsewhere") == str(tmp_path)


def test_version_dirs_is_the_one_lister_of_versions(tmp_path):
    from serving.export import next_version

    base = tmp_path / "captioner"
    assert model_config.version_dirs(base) == {}
    assert next_version(str(base)) == 1
    for name in ("2", "4", ".tmp-9-abc", "9.tmp", "x"):
        (base / name).mkdir(parents=True)
    (base / "2" / "saved_model.pb").write_bytes(b"")
    (base / "7").write_text("a file, not a version")
    assert model_config.version_dirs(base) == {2: str(base / "2"), 4: str(base / "4")}
    # Only directories that hold a SavedModel can be served...
    assert model_config.version_dirs(base, loadable_only=True) == {2: str(base / "2")}
    # ...but a new version never reuses the number of any version directory.
    assert next_version(str(base)) == 5


def _compose_service():
    """The one service of docker-compose.yml, with PyYAML or a line-based fallback."""
    with open(COMPOSE_FILE) as f:
        text = f.read()
    try:
        import yaml
    except ImportError:
        yaml = None
    if yaml is not None:
        [service] = yaml.safe_load(text)["services"].values()
        return service

    def items(key):
        block = re.search(rf"^(\s+){key}:\n((?:\1\s+- .*\n)+)", text, re.M)
        return [re.sub(r"\s+#.*$", "", line.split("- ", 1)[1]).strip().strip('"')
                for line in block.group(2).splitlines()]

    return {
        "image": re.search(r"^\s+image:\s*(\S+)", text, re.M).group(1),
        "ports": items("ports"),
        "volumes": items("volumes"),
        "command": items("command"),
        "deploy": {"resources": {"reservations": {"devices": [{
            "driver": re.search(r"driver:\s*(\S+)", text).group(1),
            "capabilities": re.search(r"capabilities:\s*\[(.*)\]", text).group(1).split(","),
        }]}}},
    }


def test_docker_compose_matches_the_written_files():
    service = _compose_service()
    assert service["image"] == "tensorflow/serving:2.21.0-gpu"
    ports = {str(p).split(":")[-1] for p in service["ports"]}
    assert ports == {"8500", "8501"}
    [volume] = service["volumes"]
    host, container = volume.split(":")[:2]
    assert container == model_config.CONTAINER_MODELS_ROOT
    # The host side is the export directory, relative to serving/docker/.
    assert os.path.normpath(os.path.join(os.path.dirname(COMPOSE_FILE), host)) == os.path.join(
        fx.REPO_ROOT, "saved_models"
    )
    flags = dict(arg.lstrip("-").split("=", 1) for arg in service["command"])
    assert flags["model_config_file"] == (
        f"{model_config.CONTAINER_MODELS_ROOT}/{model_config.MODELS_CONFIG_FILENAME}"
    )
    assert flags["batching_parameters_file"] == (
        f"{model_config.CONTAINER_MODELS_ROOT}/{model_config.BATCHING_PARAMETERS_FILENAME}"
    )
    assert flags["enable_batching"] == "true"
    # A config value (how often TF Serving polls for versions), not a timing.
    poll_wait = int(flags["file_system_poll_wait_seconds"])
    assert poll_wait > 0
    # Every base path that write_models_config writes lives under the mount.
    assert model_config.container_base_path("captioner").startswith(container + "/")
    [device] = service["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]


def test_models_config_is_accepted_by_model_server_config_proto(tmp_path):
    from google.protobuf import text_format

    model_config.write_models_config(tmp_path, ["captioner"])
    with open(tmp_path / "models.config") as f:
        text = f.read()
    parsed = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    assert parsed.model_config_list.config[0].name == "captioner"
    assert "model_config_list" in text and 'model_platform: "tensorflow"' in text
