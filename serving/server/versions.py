"""The version lifecycle: which versions of each model are loaded and served.

`ModelManager` polls each model's base path, loads the versions that its
version policy asks for (default: the highest loadable one) and unloads the
others only after the new ones are loaded. A version that fails to load is
logged and skipped until its files change.
"""

import os
import threading

from absl import logging
import grpc
from tensorflow_serving.apis import get_model_status_pb2

from serving import model_config
from serving.server.servables import Servable
from serving.server.status import ServingError

State = get_model_status_pb2.ModelVersionStatus.State


def _loadable_versions(base_path):
    """{version: (path, fingerprint)} of the loadable version directories."""
    return {
        version: (path, _fingerprint(path))
        for version, path in model_config.version_dirs(base_path, loadable_only=True).items()
    }


def _fingerprint(path):
    """Size and mtime of every file: a retry key for versions that failed."""
    items = []
    for root, _, files in os.walk(path):
        for name in files:
            try:
                st = os.stat(os.path.join(root, name))
            except OSError:
                continue
            relative = os.path.relpath(os.path.join(root, name), path)
            items.append((relative, st.st_size, st.st_mtime_ns))
    return tuple(sorted(items))


def _aspired(policy, versions):
    if policy[0] == "all":
        return set(versions)
    if policy[0] == "specific":
        return set(versions) & set(policy[1])
    return set(sorted(versions, reverse=True)[: policy[1]])


class _ModelState:
    def __init__(self, config):
        self.config = config
        self.servables = {}  # version -> Servable, AVAILABLE ones only
        self.states = {}  # version -> (State, grpc code, message)
        self.failed = {}  # version -> (path, fingerprint) that failed to load


class ModelManager:
    """Loads, serves and unloads model versions from their base paths."""

    def __init__(self, model_configs, poll_wait_seconds=1.0, loader=Servable):
        self._lock = threading.RLock()
        self._poll_lock = threading.Lock()
        self._models = {}
        self._loader = loader
        self._poll_wait_seconds = poll_wait_seconds
        self._stop = threading.Event()
        self._thread = None
        self.set_configs(model_configs)

    def set_configs(self, model_configs):
        with self._lock:
            models = {}
            for config in model_configs:
                state = self._models.get(config.name)
                if state is not None and state.config.base_path == config.base_path:
                    state.config = config
                else:
                    state = _ModelState(config)
                models[config.name] = state
            removed = set(self._models) - set(models)
            for name in removed:
                for version in sorted(self._models[name].servables):
                    logging.info(
                        "Unloaded servable version {name: %s version: %d}", name, version
                    )
            self._models = models

    def model_names(self):
        with self._lock:
            return sorted(self._models)

    def poll_once(self):
        """Brings every model's loaded versions in line with its base path."""
        with self._poll_lock:
            with self._lock:
                models = list(self._models.values())
            for model in models:
                try:
                    self._poll_model(model)
                except Exception:  # noqa: BLE001 - never let polling die.
                    logging.exception("Polling model %s failed", model.config.name)

    def _poll_model(self, model):
        config = model.config
        on_disk = _loadable_versions(config.base_path)
        if not on_disk and not model.servables:
            if not os.path.isdir(config.base_path):
                logging.log_every_n_seconds(
                    logging.WARNING,
                    "No versions of servable %s found under base path %s",
                    60,
                    config.name,
                    config.base_path,
                )
        candidates = {
            v: entry for v, entry in on_disk.items() if model.failed.get(v) != entry
        }
        while True:
            aspired = _aspired(config.version_policy, candidates)
            to_load = sorted(aspired - set(model.servables), reverse=True)
            if not to_load:
                break
            for version in to_load:
                path, _ = candidates[version]
                if not self._load(model, version, path):
                    model.failed[version] = candidates.pop(version)
        aspired = _aspired(config.version_policy, candidates)
        for version in sorted(set(model.servables) - aspired):
            with self._lock:
                del model.servables[version]
                model.states[version] = (State.END, grpc.StatusCode.OK, "")
            logging.info(
                "Unloaded servable version {name: %s version: %d}", config.name, version
            )

    def _load(self, model, version, path):
        name = model.config.name
        with self._lock:
            model.states[version] = (State.LOADING, grpc.StatusCode.OK, "")
        logging.info("Loading servable version {name: %s version: %d} from %s", name, version, path)
        try:
            servable = self._loader(name, version, path)
        except Exception as e:  # noqa: BLE001 - a bad export must not kill the server.
            message = f"Failed to load servable version {{name: {name} version: {version}}}: {e}"
            logging.error("%s", message)
            with self._lock:
                model.states[version] = (State.END, grpc.StatusCode.UNKNOWN, message)
            return False
        with self._lock:
            model.servables[version] = servable
            model.failed.pop(version, None)
            model.states[version] = (State.AVAILABLE, grpc.StatusCode.OK, "")
        logging.info("Successfully loaded servable version {name: %s version: %d}", name, version)
        return True

    def start(self):
        """Loads the initial versions, then polls in the background."""
        self.poll_once()
        if self._poll_wait_seconds > 0:
            self._thread = threading.Thread(
                target=self._poll_loop, name="model-poller", daemon=True
            )
            self._thread.start()

    def _poll_loop(self):
        while not self._stop.wait(self._poll_wait_seconds):
            self.poll_once()

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def get_servable(self, model_spec):
        """ModelSpec (name, version | version_label) -> Servable."""
        name = model_spec.name
        which = model_spec.WhichOneof("version_choice")
        with self._lock:
            model = self._models.get(name)
            if which == "version_label":
                label = model_spec.version_label
                if model is None or label not in model.config.version_labels:
                    raise ServingError(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"Unrecognized servable version label: {label}",
                    )
                version = model.config.version_labels[label]
            elif which == "version":
                version = model_spec.version.value
            else:
                version = None
            if version is None:
                if model is not None and model.servables:
                    return model.servables[max(model.servables)]
                raise ServingError(
                    grpc.StatusCode.NOT_FOUND,
                    f"Servable not found for request: Latest({name})",
                )
            servable = model.servables.get(version) if model is not None else None
            if servable is None:
                raise ServingError(
                    grpc.StatusCode.NOT_FOUND,
                    f"Servable not found for request: Specific({name}, {version})",
                )
            return servable

    def version_states(self, name, version=None):
        """[(version, State, code, message)] as GetModelStatus reports them."""
        with self._lock:
            model = self._models.get(name)
            states = dict(model.states) if model is not None else {}
        if version is not None:
            if version not in states:
                raise ServingError(
                    grpc.StatusCode.NOT_FOUND,
                    f"Could not find version {version} of model {name}",
                )
            return [(version,) + states[version]]
        if not states:
            raise ServingError(
                grpc.StatusCode.NOT_FOUND, f"Could not find any versions of model {name}"
            )
        return [(v,) + states[v] for v in sorted(states, reverse=True)]
