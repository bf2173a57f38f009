"""TensorProto <-> numpy, with the typed value fields that TF Serving fills.

TF Serving answers with typed value fields (`float_val`, `string_val`, ...),
not `tensor_content`, and this codec does too; it parses requests in either
layout, without letting a tiny proto claim a huge shape.
"""

import math

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2
from tensorflow.core.framework import types_pb2

from serving.server.status import ServingError

# Largest tensor that a request may describe without sending every value.
_MAX_BROADCAST_ELEMENTS = 1 << 22


# DataType -> (numpy dtype, TensorProto value field) for the typed fields that
# TF Serving fills in responses (Tensor::AsProtoField).
NUMERIC_FIELDS = {
    types_pb2.DT_FLOAT: (np.float32, "float_val"),
    types_pb2.DT_DOUBLE: (np.float64, "double_val"),
    types_pb2.DT_INT32: (np.int32, "int_val"),
    types_pb2.DT_INT16: (np.int16, "int_val"),
    types_pb2.DT_INT8: (np.int8, "int_val"),
    types_pb2.DT_UINT8: (np.uint8, "int_val"),
    types_pb2.DT_UINT16: (np.uint16, "int_val"),
    types_pb2.DT_INT64: (np.int64, "int64_val"),
    types_pb2.DT_UINT32: (np.uint32, "uint32_val"),
    types_pb2.DT_UINT64: (np.uint64, "uint64_val"),
    types_pb2.DT_BOOL: (np.bool_, "bool_val"),
}


def dtype_name(dtype_enum):
    """DT_FLOAT -> "float", as in TensorFlow's DataTypeString."""
    try:
        return types_pb2.DataType.Name(dtype_enum)[len("DT_") :].lower()
    except ValueError:
        return str(dtype_enum)


def shape_string(dims):
    return "[" + ",".join(str(d) for d in dims) + "]"


def tensor_proto_to_ndarray(proto):
    """TensorProto -> numpy array (object array of bytes for DT_STRING)."""
    shape = tuple(d.size for d in proto.tensor_shape.dim)
    size = math.prod(shape)
    if proto.dtype == types_pb2.DT_STRING:
        values = proto.string_val
        if len(values) == size:
            array = np.empty(len(values), dtype=object)
            array[:] = list(values)
            return array.reshape(shape)
    elif proto.dtype in NUMERIC_FIELDS:
        np_dtype, field = NUMERIC_FIELDS[proto.dtype]
        if proto.tensor_content:
            if len(proto.tensor_content) == size * np.dtype(np_dtype).itemsize:
                return np.frombuffer(proto.tensor_content, dtype=np_dtype).reshape(shape)
        else:
            values = getattr(proto, field)
            if len(values) == size:
                return np.asarray(values, dtype=np_dtype).reshape(shape)
    # Rare layouts (half, complex, one value broadcast to the shape, ...):
    # TensorFlow's parser, but never let a tiny proto claim a huge shape.
    if size > _MAX_BROADCAST_ELEMENTS:
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"Tensor of shape {shape_string(shape)} has {size} elements but the "
            "request does not hold them",
        )
    try:
        return tf.make_ndarray(proto)
    except Exception as e:  # noqa: BLE001 - any parse failure is the client's.
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"Cannot parse tensor of dtype {dtype_name(proto.dtype)} and shape "
            f"{shape_string(shape)}: {e}",
        ) from e


def ndarray_to_tensor_proto(array, dtype_enum, proto=None):
    """numpy array -> TensorProto with typed value fields (like TF Serving)."""
    proto = proto if proto is not None else tensor_pb2.TensorProto()
    proto.dtype = dtype_enum
    for d in array.shape:
        proto.tensor_shape.dim.add(size=d)
    if dtype_enum == types_pb2.DT_STRING:
        proto.string_val.extend(array.ravel().tolist())
    elif dtype_enum in NUMERIC_FIELDS:
        getattr(proto, NUMERIC_FIELDS[dtype_enum][1]).extend(array.ravel().tolist())
    else:
        proto.CopyFrom(tf.make_tensor_proto(array))
    return proto
