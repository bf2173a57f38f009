"""One loaded SavedModel version (`Servable`) and its signatures."""

import dataclasses
import functools
import os

from absl import logging
import grpc
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import get_model_metadata_pb2

from serving.server.status import ServingError
from serving.server.status import clean_tf_message
from serving.server.status import grpc_code
from serving.server.tensor_codec import dtype_name
from serving.server.tensor_codec import shape_string

DEFAULT_SIGNATURE = tf.saved_model.DEFAULT_SERVING_SIGNATURE_DEF_KEY
CLASSIFY_METHOD_NAME = tf.saved_model.CLASSIFY_METHOD_NAME


@functools.lru_cache(maxsize=None)
def import_tensorflow_text():
    """TF Text registers its ops on import; SavedModels that use them need it."""
    try:
        import tensorflow_text  # noqa: F401
    except ImportError:
        logging.warning("tensorflow_text is not installed: models with TF Text ops will not load")


@dataclasses.dataclass(frozen=True)
class _TensorSpec:
    key: str
    dtype: int
    dims: tuple  # None for unknown rank; -1 for unknown dimensions.


class Signature:
    """A SignatureDef of a loaded SavedModel and the function that runs it."""

    def __init__(self, name, signature_def, function):
        self.name = name
        self.signature_def = signature_def
        self.method_name = signature_def.method_name
        self.function = function
        self.inputs = {k: self._spec(k, v) for k, v in signature_def.inputs.items()}
        self.outputs = {k: self._spec(k, v) for k, v in signature_def.outputs.items()}
        self.input_keys = frozenset(self.inputs)

    @staticmethod
    def _spec(key, tensor_info):
        shape = tensor_info.tensor_shape
        dims = None if shape.unknown_rank else tuple(d.size for d in shape.dim)
        return _TensorSpec(key, tensor_info.dtype, dims)

    def check_input_keys(self, keys):
        keys = set(keys)
        if keys == self.input_keys:
            return
        extra = sorted(keys - self.input_keys)
        missing = sorted(self.input_keys - keys)
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"input size does not match signature: {len(keys)}!={len(self.input_keys)} "
            f"len({{{','.join(sorted(keys))}}}) != len({{{','.join(sorted(self.input_keys))}}}). "
            f"Sent extra: {{{','.join(extra)}}}. Missing but required: {{{','.join(missing)}}}.",
        )

    def check_input_dtype(self, key, dtype_enum):
        expected = self.inputs[key].dtype
        if dtype_enum != expected:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Expects input '{key}' to be {dtype_name(expected)} "
                f"({types_pb2.DataType.Name(expected)}) but "
                f"{dtype_name(dtype_enum)} ({types_pb2.DataType.Name(dtype_enum)}) "
                f"is provided",
            )

    def check_input_shape(self, key, shape):
        dims = self.inputs[key].dims
        if dims is None:
            return
        if len(shape) != len(dims) or any(
            d >= 0 and d != s for d, s in zip(dims, shape)
        ):
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Input '{key}' expects shape {shape_string(dims)} "
                f"(rank {len(dims)}, -1 is any size) but got shape "
                f"{shape_string(shape)}",
            )

    def output_keys(self, output_filter):
        if not output_filter:
            return list(self.outputs)
        seen = set()
        for alias in output_filter:
            if alias not in self.outputs:
                raise ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"output tensor alias not found in signature: {alias} Outputs "
                    f"expected to be in the set {{{','.join(sorted(self.outputs))}}}.",
                )
            if alias in seen:
                raise ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"duplicate output tensor alias: {alias}",
                )
            seen.add(alias)
        return list(output_filter)

    def __call__(self, inputs):
        """Runs the function on numpy inputs; returns numpy outputs."""
        # The error is raised outside the `except`, so that it does not keep
        # the TF error (and the traceback frames holding the inputs) as its
        # __context__ for as long as the request's error lives.
        error = None
        try:
            outputs = self.function(**inputs)
        except tf.errors.OpError as e:
            error = ServingError(grpc_code(e.error_code), clean_tf_message(e.message))
        except (TypeError, ValueError) as e:
            error = ServingError(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        if error is not None:
            try:
                raise error
            finally:
                error = None  # this frame is in the error's traceback: no cycle
        return {k: v.numpy() for k, v in outputs.items()}


class Servable:
    """One loaded version of a model."""

    def __init__(self, name, version, path):
        self.name = name
        self.version = version
        self.path = path
        import_tensorflow_text()
        # Kept alive for as long as the servable is: the signatures' functions
        # reference its variables.
        self._loaded = tf.saved_model.load(path, tags=["serve"])
        meta_graph = _read_serve_meta_graph(path)
        self.signature_def_map = get_model_metadata_pb2.SignatureDefMap()
        self.signatures = {}
        for key, signature_def in meta_graph.signature_def.items():
            self.signature_def_map.signature_def[key].CopyFrom(signature_def)
            if key in self._loaded.signatures:
                self.signatures[key] = Signature(
                    key, signature_def, self._loaded.signatures[key]
                )

    def signature(self, name):
        name = name or DEFAULT_SIGNATURE
        signature = self.signatures.get(name)
        if signature is None:
            raise ServingError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f'Serving signature key "{name}" not found.',
            )
        return signature


def _read_serve_meta_graph(path):
    saved_model = saved_model_pb2.SavedModel()
    pb_path = os.path.join(path, "saved_model.pb")
    if os.path.exists(pb_path):
        with open(pb_path, "rb") as f:
            saved_model.ParseFromString(f.read())
    else:
        with open(os.path.join(path, "saved_model.pbtxt")) as f:
            text_format.Parse(f.read(), saved_model)
    for meta_graph in saved_model.meta_graphs:
        if "serve" in meta_graph.meta_info_def.tags:
            return meta_graph
    raise ValueError(f"No MetaGraph with tag 'serve' in {path}")
