"""Request errors and TF Serving's status codes, for gRPC and for HTTP."""

import grpc

# TensorFlow Serving's own status -> HTTP mapping (model_servers/http_server.cc).
_HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}
_GRPC_CODE_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


class ServingError(Exception):
    """A request error with the gRPC status code that TF Serving would return."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def http_status(self):
        return _HTTP_STATUS.get(self.code, 500)


def grpc_code(error_code):
    """A TensorFlow error code (an int, as in `tf.errors.OpError`) -> grpc.StatusCode."""
    return _GRPC_CODE_BY_NUMBER.get(error_code, grpc.StatusCode.INTERNAL)


def clean_tf_message(message):
    """Drops the eager "Graph execution error / Detected at node" preamble."""
    marker = "<stack traces unavailable>"
    if marker in message:
        message = message.split(marker, 1)[1]
    elif message.startswith("Graph execution error:"):
        message = message[len("Graph execution error:") :]
    return message.strip()
