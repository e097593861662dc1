"""The prebuilt calls of a route: its ModelInferRequest is built once (model, version, requested outputs), and a
request only adds shapes and raw tensor bytes; outputs are read from `raw_output_contents` without a second copy."""
from tritonclient.grpc import service_pb2

from .. import codecs
from ..grpc_wire import RpcError


def _field(number, length):
    """The key and length of a length-delimited protobuf field."""
    out, value = bytearray([number << 3 | 2]), length
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


class InferCall:
    """One route's call to its model: the request prebuilt once, filled per request."""

    def __init__(self, c, info, output_names, guard):
        self.call, self.info, self.guard = c.call, info, guard   # guard: Guard, shared by the model's calls' kinds
        # The request is written as bytes: serialized protobuf messages concatenate as a merge, and repeated fields
        # keep their order, so the prebuilt part (model, version, requested outputs), then per input its
        # InferInputTensor (cached per shape) and its raw_input_contents, make the ModelInferRequest.
        self.prefix = service_pb2.ModelInferRequest(
            model_name=info.name, model_version=info.version,
            outputs=[service_pb2.ModelInferRequest.InferRequestedOutputTensor(name=n) for n in output_names]
        ).SerializeToString()
        self.heads = {}

    @property
    def timeout(self):
        return self.guard.timeout

    def parts(self, tensors):
        parts = [self.prefix]
        inputs = self.info.inputs
        for name, arr in tensors.items():
            raw = codecs.raw_view(arr, inputs[name][0])
            parts += (self.head(name, arr.shape), _field(7, len(raw)), raw)
        return parts

    def head(self, name, shape):
        head = self.heads.get((name, shape))
        if head is None:
            if len(self.heads) > 256:   # inputs with variable dimensions: keep the cache small
                self.heads.clear()
            tensor = service_pb2.ModelInferRequest.InferInputTensor(name=name, datatype=self.info.inputs[name][0],
                                                                    shape=shape).SerializeToString()
            head = self.heads[(name, shape)] = _field(5, len(tensor)) + tensor
        return head

    def __call__(self, tensors):
        """{input name: numpy array} -> {output name: numpy array}, in one gRPC call."""
        parts = self.parts(tensors)
        left = self.guard.enter()
        try:
            response = self.call("ModelInfer", parts, left)
        except RpcError as exc:
            raise self.guard.failed(exc) from None
        finally:
            self.guard.leave()
        return {out.name: codecs.from_raw(raw, out.datatype, out.shape)
                for out, raw in zip(response.outputs, response.raw_output_contents)}


class StreamCall(InferCall):
    """A decoupled model's call: one request on Triton's ModelStreamInfer, its responses as they come. The same
    Guard as a unary call: a stream holds its model and a slot until it ends.

    The request asks for an explicit final response (`triton_enable_empty_final_response`), and is half-closed, so
    Triton ends the stream once the final response is out."""

    def __init__(self, client, info, output_names, guard, raw=False):
        super().__init__(client, info, output_names, guard)
        self.client = client
        self.raw = raw   # responses as {name: (datatype, raw bytes)}: a caller that reads a few small outputs per
                         # token (the OpenAI routes) skips numpy
        request = service_pb2.ModelInferRequest(
            model_name=info.name, model_version=info.version,
            outputs=[service_pb2.ModelInferRequest.InferRequestedOutputTensor(name=n) for n in output_names])
        request.parameters["triton_enable_empty_final_response"].bool_param = True
        self.prefix = request.SerializeToString()

    def responses(self, tensors, idle=None, coalesce=False):
        """Yields {output name: array} per response (with `coalesce`, a list of them: every response that has
        arrived by then), and None after each `idle` seconds without one; ends after the final response. Raises
        ServingError (a deadline, Triton's error for the request, a busy model). Closing it (a client that hung up)
        cancels the request in Triton. The model is held, and a slot taken, until the stream ends: nothing unloads
        it under an open stream."""
        left = self.guard.enter()
        try:
            yield from self._responses(tensors, idle, coalesce, left)
        finally:
            self.guard.leave()

    def _responses(self, tensors, idle, coalesce, timeout):
        try:
            stream = self.client.stream("ModelStreamInfer", self.parts(tensors), timeout)
        except RpcError as exc:
            raise self.guard.failed(exc) from None
        try:
            while True:
                try:
                    raw = stream.next(idle)
                except StopIteration:
                    return
                if raw is None:
                    yield None
                    continue
                batch, ended = [raw], False
                if coalesce:   # what has already arrived goes out with it, so that a busy stream sends fewer writes
                    try:
                        while (more := stream.next(0)) is not None:
                            batch.append(more)
                    except StopIteration:
                        ended = True
                found = []
                for raw in batch:
                    message = service_pb2.ModelStreamInferResponse.FromString(raw)
                    if message.error_message:
                        if found:   # the responses before the error go out first
                            yield found
                        raise self.guard.failed_in_stream(message.error_message)
                    response = message.infer_response
                    if response.outputs and self.raw:
                        found.append({out.name: (out.datatype, data)
                                      for out, data in zip(response.outputs, response.raw_output_contents)})
                    elif response.outputs:
                        found.append({out.name: codecs.from_raw(data, out.datatype, out.shape)
                                      for out, data in zip(response.outputs, response.raw_output_contents)})
                if found:
                    yield found if coalesce else found[0]
                if ended:
                    return
                # After the final response (triton_final_response) Triton ends the stream, since the one request
                # was half-closed: the end of the loop is StopIteration, after the trailers.
        except RpcError as exc:
            raise self.guard.failed(exc) from None
        finally:
            stream.cancel()
