"""Serving test fixtures: toy SavedModels exported once per process.

The toy models themselves (and `make_image_bytes`, `make_example`) are in
`serving/toy_models.py`, and the `python -m serving.server` child process is
`serving.server.ServerProcess`, so that the serving benchmarks use them too
without importing `tests/`.
"""

import atexit
import os
import shutil
import tempfile

from serving import toy_models
from serving.server import ServerProcess  # noqa: F401 - used by the export tests.

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TOY_CACHE = {}
_TOY_ROOT = None


def toy_version_dir(kind):
    """Path of a toy SavedModel of `kind`, exported once per process."""
    global _TOY_ROOT
    if kind not in _TOY_CACHE:
        if _TOY_ROOT is None:
            _TOY_ROOT = tempfile.mkdtemp(prefix="mmkeras-toy-models-")
            atexit.register(shutil.rmtree, _TOY_ROOT, True)
        _TOY_CACHE[kind] = toy_models.export_toy(kind, os.path.join(_TOY_ROOT, kind, "1"))
    return _TOY_CACHE[kind]


def copy_toy_version(kind, base_path, version):
    """Copies the cached toy export of `kind` to `base_path/<version>`."""
    target = os.path.join(str(base_path), str(version))
    shutil.copytree(toy_version_dir(kind), target)
    return target
