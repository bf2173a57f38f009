"""gRPC front end: tensorflow.serving.PredictionService and ModelService."""

import grpc
from tensorflow_serving.apis import model_management_pb2
from tensorflow_serving.apis import model_service_pb2_grpc
from tensorflow_serving.apis import prediction_service_pb2_grpc

from serving import model_config
from serving.server.status import ServingError


def _answer(context, handler, request):
    """Runs `handler(request)`; a `ServingError` becomes the RPC's status."""
    try:
        return handler(request)
    except ServingError as e:
        context.abort(e.code, e.message)


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """tensorflow.serving.PredictionService."""

    def __init__(self, core):
        self._core = core

    def Predict(self, request, context):
        return _answer(context, self._core.predict, request)

    def Classify(self, request, context):
        return _answer(context, self._core.classify, request)

    def Regress(self, request, context):
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "Regress is not supported by mmkeras models.")

    def MultiInference(self, request, context):
        context.abort(
            grpc.StatusCode.UNIMPLEMENTED, "MultiInference is not supported by mmkeras models."
        )

    def GetModelMetadata(self, request, context):
        return _answer(context, self._core.metadata, request)


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """tensorflow.serving.ModelService."""

    def __init__(self, core):
        self._core = core

    def GetModelStatus(self, request, context):
        return _answer(context, self._core.model_status, request)

    def HandleReloadConfigRequest(self, request, context):
        response = model_management_pb2.ReloadConfigResponse()
        try:
            configs = model_config.model_configs_from_proto(request.config)
        except ValueError as e:
            response.status.error_code = grpc.StatusCode.INVALID_ARGUMENT.value[0]
            response.status.error_message = str(e)
            return response
        self._core.manager.set_configs(configs)
        self._core.manager.poll_once()
        response.status.error_code = 0
        return response
