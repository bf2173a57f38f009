"""`--batching_parameters_file`: TF Serving's BatchingParameters text proto."""

import dataclasses
import os

from google.protobuf import descriptor_pb2
from google.protobuf import descriptor_pool
from google.protobuf import message_factory
from google.protobuf import text_format
from google.protobuf import wrappers_pb2


@dataclasses.dataclass(frozen=True)
class BatchingParameters:
    """Server-side batching options (TF Serving's BatchingParameters).

    Defaults are TF Serving's when a field is omitted from the file, except
    `num_batch_threads`, which TF Serving sets to the number of cores.
    """

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    num_batch_threads: int = dataclasses.field(
        default_factory=lambda: os.cpu_count() or 1
    )
    max_enqueued_batches: int = 10


def _batching_parameters_message_class():
    """Builds the BatchingParameters proto class at run time.

    tensorflow-serving-api does not ship `session_bundle_config_pb2`, so the
    message (tensorflow_serving/servables/tensorflow/session_bundle_config.proto)
    is declared here with the same field names and numbers, in a private pool.
    """
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    file_proto = descriptor_pb2.FileDescriptorProto(
        name="mmkeras_serving/session_bundle_config.proto",
        package="tensorflow.serving",
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )
    message = file_proto.message_type.add(name="BatchingParameters")
    label_optional = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
    label_repeated = descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
    type_message = descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE
    for name, number, type_name in (
        ("max_batch_size", 1, ".google.protobuf.Int64Value"),
        ("batch_timeout_micros", 2, ".google.protobuf.Int64Value"),
        ("max_enqueued_batches", 3, ".google.protobuf.Int64Value"),
        ("num_batch_threads", 4, ".google.protobuf.Int64Value"),
        ("thread_pool_name", 5, ".google.protobuf.StringValue"),
    ):
        message.field.add(
            name=name,
            number=number,
            label=label_optional,
            type=type_message,
            type_name=type_name,
        )
    message.field.add(
        name="allowed_batch_sizes",
        number=6,
        label=label_repeated,
        type=descriptor_pb2.FieldDescriptorProto.TYPE_INT64,
    )
    message.field.add(
        name="pad_variable_length_inputs",
        number=7,
        label=label_optional,
        type=descriptor_pb2.FieldDescriptorProto.TYPE_BOOL,
    )
    pool.Add(file_proto)
    descriptor = pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters")
    return message_factory.GetMessageClass(descriptor)


def parse_batching_parameters(text):
    """Parses a BatchingParameters text proto into `BatchingParameters`.

    Accepts the files that `--batching_parameters_file` of TF Serving takes,
    e.g. `max_batch_size { value: 64 } batch_timeout_micros { value: 2000 }`.
    Fields that only TF Serving uses (allowed_batch_sizes, padding, ...) are
    accepted and ignored.
    """
    message = _batching_parameters_message_class()()
    text_format.Parse(text, message, allow_unknown_field=True)
    kwargs = {}
    for field in (
        "max_batch_size",
        "batch_timeout_micros",
        "num_batch_threads",
        "max_enqueued_batches",
    ):
        if message.HasField(field):
            kwargs[field] = int(getattr(message, field).value)
    params = BatchingParameters(**kwargs)
    if params.max_batch_size < 1 or params.num_batch_threads < 1:
        raise ValueError(
            "max_batch_size and num_batch_threads must be >= 1. Received: "
            f"{params}"
        )
    if params.batch_timeout_micros < 0 or params.max_enqueued_batches < 1:
        raise ValueError(
            "batch_timeout_micros must be >= 0 and max_enqueued_batches >= 1. "
            f"Received: {params}"
        )
    return params
