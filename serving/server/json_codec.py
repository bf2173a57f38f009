"""TF Serving's REST JSON values <-> numpy arrays and tf.Examples.

Bytes travel as `{"b64": "..."}`; other strings as UTF-8 JSON strings.
"""

import base64
import json

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import types_pb2

from serving.server.status import ServingError
from serving.server.tensor_codec import NUMERIC_FIELDS
from serving.server.tensor_codec import dtype_name
from serving.server.tensor_codec import shape_string


def is_b64(value):
    """Whether a JSON value is TF Serving's `{"b64": "..."}` form of bytes."""
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _json_shape(value):
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _json_leaf(value, dtype_enum):
    if dtype_enum == types_pb2.DT_STRING:
        if isinstance(value, str):
            return value.encode("utf-8")
        if is_b64(value):
            try:
                return base64.b64decode(value["b64"], validate=True)
            except ValueError:
                raise ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT, "Unable to base64 decode"
                ) from None
    elif dtype_enum == types_pb2.DT_BOOL:
        if isinstance(value, bool):
            return value
    elif dtype_enum in (types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE, types_pb2.DT_HALF):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
    elif dtype_enum in NUMERIC_FIELDS:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    raise ServingError(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"JSON Value: {json.dumps(value)} is not of expected type: "
        f"{dtype_name(dtype_enum)}",
    )


def json_to_ndarray(value, dtype_enum):
    """A JSON value (nested lists, `{"b64": ...}` for bytes) -> numpy array."""
    shape = _json_shape(value)
    flat = []

    def walk(node, level):
        if isinstance(node, list):
            if level >= len(shape) or len(node) != shape[level]:
                raise ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"Encountered list at unexpected size: {len(node)} at level: "
                    f"{level} expected shape: {shape_string(shape)}",
                )
            for item in node:
                walk(item, level + 1)
        else:
            if level != len(shape):
                raise ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"JSON Value: {json.dumps(node)} found at incorrect level: "
                    f"{level + 1} in the JSON DOM. Expected at level: {len(shape)}",
                )
            flat.append(_json_leaf(node, dtype_enum))

    walk(value, 0)
    if dtype_enum == types_pb2.DT_STRING:
        array = np.empty(len(flat), dtype=object)
        array[:] = flat
    else:
        np_dtype = tf.dtypes.as_dtype(dtype_enum).as_numpy_dtype
        array = np.asarray(flat, dtype=np_dtype)
    return array.reshape(shape)


def json_values(array, as_bytes):
    """numpy array -> (nested) Python values ready for json.dumps."""
    if array.dtype == object:
        if as_bytes:
            flat = [{"b64": base64.b64encode(v).decode("ascii")} for v in array.ravel()]
        else:
            flat = [v.decode("utf-8", errors="replace") for v in array.ravel()]
        converted = np.empty(len(flat), dtype=object)
        converted[:] = flat
        return converted.reshape(array.shape).tolist()
    if array.dtype == np.float32:
        # Shortest float32 text, as TF Serving writes it (0.1, not 0.100000001).
        return (
            np.asarray([float(str(v)) for v in array.ravel()], dtype=np.float64)
            .reshape(array.shape)
            .tolist()
        )
    return array.tolist()


def _json_feature(name, values, feature):
    for value in values if isinstance(values, list) else [values]:
        if isinstance(value, bool):
            feature.int64_list.value.append(int(value))
        elif isinstance(value, int):
            feature.int64_list.value.append(value)
        elif isinstance(value, float):
            feature.float_list.value.append(value)
        elif isinstance(value, str):
            feature.bytes_list.value.append(value.encode("utf-8"))
        elif is_b64(value):
            feature.bytes_list.value.append(_json_leaf(value, types_pb2.DT_STRING))
        else:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Feature: {name} has element with unexpected JSON type: {json.dumps(value)}",
            )
        if len([k for k in ("int64_list", "float_list", "bytes_list") if feature.HasField(k)]) > 1:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Unexpected element type in feature: {name}",
            )


def json_example(obj, example):
    """A JSON object of features -> the `tf.train.Example` proto `example`."""
    if not isinstance(obj, dict):
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "Example must be JSON object but got JSON " + type(obj).__name__,
        )
    for name, values in obj.items():
        _json_feature(name, values, example.features.feature[name])
