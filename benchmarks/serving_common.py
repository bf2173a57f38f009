"""Pieces shared by the serving benchmarks (not a benchmark itself)."""

import os


def latest_version_dir(base_path):
    """The highest integer version directory under `base_path`, as TF Serving picks it."""
    versions = [int(v) for v in os.listdir(base_path) if v.isdigit()] if os.path.isdir(base_path) else []
    if not versions:
        raise ValueError(f"No version directories under {base_path}")
    return os.path.join(base_path, str(max(versions)))


def load_signature(version_dir, signature):
    """Loads one signature of a SavedModel in-process, as the server does."""
    import tensorflow as tf

    try:
        import tensorflow_text  # noqa: F401  (registers the TF Text ops exports use)
    except ImportError:
        pass
    return tf.saved_model.load(version_dir).signatures[signature]
