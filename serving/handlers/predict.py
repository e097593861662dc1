"""A config.json api on a model with one answer per request: the body read once, decoded by the api's request
schema, one Triton call (its prebuilt serving.triton.calls.InferCall), the outputs encoded by its response schema."""
from .. import codecs
from ..http import JSON_HEADERS, error_answer, read_body
from .schema import Outputs, decode


class Predict:
    def __init__(self, api, info, call, max_body_bytes):
        self.api, self.info, self.call, self.limit = api, info, call, max_body_bytes
        self.outputs = Outputs(api, info)

    def answer(self, environ):
        """(status line, headers, body) for one request; never raises."""
        try:
            tensors, batch, _ = decode(self.api, self.info, environ, read_body(environ, self.limit))
            body = codecs.dumps(self.outputs.encode(self.call(tensors), batch))
        except Exception as exc:   # noqa: BLE001 (error_answer: a ServingError's status, else a logged 500)
            return error_answer(environ, exc)
        return "200 OK", [JSON_HEADERS, ("Content-Length", str(len(body)))], [body]
