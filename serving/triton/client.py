"""This worker's one connection to Triton's gRPC port, made after fork (gunicorn's post_fork), shared by all its
greenlets: serving/grpc_wire/ (gevent-native HTTP/2) carrying tritonclient's generated KServe v2 messages."""
from tritonclient.grpc import service_pb2

from .. import grpc_wire

SERVICE = "/inference.GRPCInferenceService/"

_client = None


class Client:
    """This worker's connection to Triton's gRPC port (serving/grpc_wire/), shared by all its greenlets.

    `call("ModelInfer", request, timeout)` makes one unary call of GRPCInferenceService with tritonclient's
    generated messages and returns the response message, or raises grpc_wire.RpcError.
    """

    def __init__(self, url):
        self.url = url
        host, _, port = url.rpartition(":")
        self.channel = grpc_wire.Channel(host, int(port))
        self.paths = {}

    def call(self, method, request, timeout):
        path = self.paths.get(method)
        if path is None:
            path = self.paths[method] = (SERVICE + method, getattr(service_pb2, method + "Response"))
        return self.channel.call(path[0], request, path[1], timeout)

    def stream(self, method, request, timeout):
        """A server-streaming call (grpc_wire.ResponseStream of the answers' bytes)."""
        return self.channel.stream(SERVICE + method, request, timeout)

    def close(self):
        self.channel.close()


def connect(url):
    """Create this process's client. Call it after fork (gunicorn's post_fork), never before."""
    global _client
    _client = Client(url)
    return _client


def close():
    global _client
    if _client is not None:
        _client.close()
        _client = None


def client(url):
    """This process's client for `url`: the one connect() made, or a new one (a process that did not fork)."""
    if _client is None or _client.url != url:
        return connect(url)
    return _client
