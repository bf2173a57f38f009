"""Pieces shared by the serving benchmarks (not a benchmark itself)."""

import os

from serving import model_config


def latest_version_dir(base_path):
    """The highest loadable version directory under `base_path`: the one the server serves."""
    versions = model_config.version_dirs(base_path, loadable_only=True)
    if not versions:
        raise ValueError(f"No version directories under {base_path}")
    return versions[max(versions)]


def model_to_serve(work_dir, model_base_path, model_name, toy, **toy_kwargs):
    """(base_path, latest version dir) of the model a benchmark serves.

    With `toy`, the toy captioner (`serving/toy_models.py`, built with
    `toy_kwargs`) is first exported to `work_dir/model_name/1`. Raises
    ValueError if the base path holds no version.
    """
    base_path = os.path.abspath(model_base_path)
    if toy:
        from serving import toy_models

        base_path = os.path.join(work_dir, model_name)
        toy_models.export_toy("captioner", os.path.join(base_path, "1"), **toy_kwargs)
    return base_path, latest_version_dir(base_path)


def load_signature(version_dir, signature):
    """Loads one signature of a SavedModel in-process, as the server does."""
    import tensorflow as tf

    try:
        import tensorflow_text  # noqa: F401  (registers the TF Text ops exports use)
    except ImportError:
        pass
    return tf.saved_model.load(version_dir).signatures[signature]


def predict_request(model_name, signature, images):
    """A PredictRequest with input `images` (anything `tf.make_tensor_proto` takes; None for none)."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature
    if images is not None:
        request.inputs["images"].CopyFrom(tf.make_tensor_proto(images))
    return request
