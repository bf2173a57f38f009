"""Request handling shared by the gRPC and REST front ends.

`ServingCore` answers TF Serving's request protos with its response protos
(Predict, Classify, GetModelMetadata, GetModelStatus); the gRPC front end is a
thin shell around it, and the REST front end turns JSON into the same calls.
"""

import grpc
import numpy as np
from tensorflow.core.example import example_pb2
from tensorflow_serving.apis import classification_pb2
from tensorflow_serving.apis import get_model_metadata_pb2
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.apis import predict_pb2

from serving.server.servables import CLASSIFY_METHOD_NAME
from serving.server.servables import DEFAULT_SIGNATURE
from serving.server.status import ServingError
from serving.server.tensor_codec import ndarray_to_tensor_proto
from serving.server.tensor_codec import tensor_proto_to_ndarray

SIGNATURE_DEF_FIELD = "signature_def"


class ServingCore:
    """Request handling shared by the gRPC and REST front ends."""

    def __init__(self, manager, batcher=None):
        self.manager = manager
        self.batcher = batcher

    def run_signature(self, servable, signature, inputs):
        """Validates numpy `inputs` against `signature` and runs it."""
        signature.check_input_keys(inputs)
        batch_sizes = set()
        for key, array in inputs.items():
            signature.check_input_shape(key, array.shape)
            batch_sizes.add(array.shape[0] if array.ndim else None)
        if self.batcher is None or len(batch_sizes) != 1 or None in batch_sizes:
            return signature(inputs)
        batch_key = (
            id(servable),
            signature.name,
            tuple(sorted((k, v.dtype.str, v.shape[1:]) for k, v in inputs.items())),
        )
        return self.batcher.run(batch_key, signature, inputs, batch_sizes.pop())

    def predict(self, request):
        """PredictRequest -> PredictResponse."""
        if not request.HasField("model_spec"):
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
        servable = self.manager.get_servable(request.model_spec)
        signature = servable.signature(request.model_spec.signature_name)
        signature.check_input_keys(request.inputs.keys())
        inputs = {}
        for key, proto in request.inputs.items():
            signature.check_input_dtype(key, proto.dtype)
            inputs[key] = tensor_proto_to_ndarray(proto)
        output_keys = signature.output_keys(request.output_filter)
        outputs = self.run_signature(servable, signature, inputs)
        response = predict_pb2.PredictResponse()
        _fill_model_spec(
            response.model_spec, request.model_spec.name, signature.name, servable.version
        )
        for key in output_keys:
            ndarray_to_tensor_proto(outputs[key], signature.outputs[key].dtype, response.outputs[key])
        return response

    def classify(self, request):
        """ClassificationRequest -> ClassificationResponse."""
        servable = self.manager.get_servable(request.model_spec)
        signature_name = request.model_spec.signature_name or DEFAULT_SIGNATURE
        signature = servable.signatures.get(signature_name)
        if signature is None:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"No signature was found with the name: {signature_name}",
            )
        if signature.method_name != CLASSIFY_METHOD_NAME:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Expected classification signature method_name to be "
                f"{CLASSIFY_METHOD_NAME}. Was: {signature.method_name}",
            )
        if len(signature.inputs) != 1 or "inputs" not in signature.inputs:
            raise ServingError(
                grpc.StatusCode.FAILED_PRECONDITION,
                "No classification inputs found in SignatureDef",
            )
        examples = _serialized_examples(request.input)
        outputs = self.run_signature(servable, signature, {"inputs": examples})
        classes = outputs.get("classes")
        scores = outputs.get("scores")
        if classes is None and scores is None:
            raise ServingError(
                grpc.StatusCode.FAILED_PRECONDITION,
                'Expected classification signature outputs to contain at least one of '
                '"classes" or "scores".',
            )
        for name, value in (("classes", classes), ("scores", scores)):
            if value is not None and (value.ndim != 2 or value.shape[0] != len(examples)):
                raise ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"Expected {name} Tensor shape: [batch_size num_classes] but got "
                    f"{list(value.shape)}",
                )
        response = classification_pb2.ClassificationResponse()
        _fill_model_spec(
            response.model_spec, request.model_spec.name, signature_name, servable.version
        )
        num_classes = (classes if classes is not None else scores).shape[1]
        for i in range(len(examples)):
            classifications = response.result.classifications.add()
            for c in range(num_classes):
                cls = classifications.classes.add()
                if classes is not None:
                    cls.label = classes[i, c].decode("utf-8", errors="replace")
                if scores is not None:
                    cls.score = float(scores[i, c])
        return response

    def metadata(self, request):
        """GetModelMetadataRequest -> GetModelMetadataResponse."""
        if not request.HasField("model_spec"):
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
        if not request.metadata_field:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                "GetModelMetadataRequest must specify at least one metadata_field",
            )
        for field in request.metadata_field:
            if field != SIGNATURE_DEF_FIELD:
                raise ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"Metadata field {field} is not supported",
                )
        servable = self.manager.get_servable(request.model_spec)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        response.metadata[SIGNATURE_DEF_FIELD].Pack(servable.signature_def_map)
        return response

    def model_status(self, request):
        """GetModelStatusRequest -> GetModelStatusResponse."""
        if not request.HasField("model_spec"):
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
        spec = request.model_spec
        version = spec.version.value if spec.HasField("version") else None
        response = get_model_status_pb2.GetModelStatusResponse()
        for v, state, code, message in self.manager.version_states(spec.name, version):
            status = response.model_version_status.add(version=v, state=state)
            status.status.error_code = code.value[0]
            status.status.error_message = message
        return response


def _fill_model_spec(model_spec, name, signature_name, version):
    model_spec.name = name
    model_spec.signature_name = signature_name or DEFAULT_SIGNATURE
    model_spec.version.value = version


def _serialized_examples(input_proto):
    """Input proto -> object array of serialized tf.Examples."""
    kind = input_proto.WhichOneof("kind")
    if kind == "example_list":
        examples = [e.SerializeToString() for e in input_proto.example_list.examples]
    elif kind == "example_list_with_context":
        context = input_proto.example_list_with_context.context
        examples = []
        for e in input_proto.example_list_with_context.examples:
            merged = example_pb2.Example()
            merged.CopyFrom(context)
            merged.MergeFrom(e)
            examples.append(merged.SerializeToString())
    else:
        examples = []
    if not examples:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Input is empty.")
    array = np.empty(len(examples), dtype=object)
    array[:] = examples
    return array
