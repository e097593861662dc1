"""A gRPC status from Triton -> the ServingError (and so the HTTP status) a caller sees."""
from .. import grpc_wire
from ..errors import BadRequest, DeadlineExceeded, ServingError, Unavailable

# gRPC status -> the HTTP error the caller sees.
_STATUS = {
    grpc_wire.INVALID_ARGUMENT: BadRequest,
    grpc_wire.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc_wire.UNAVAILABLE: Unavailable,
    grpc_wire.NOT_FOUND: Unavailable,
    grpc_wire.RESOURCE_EXHAUSTED: Unavailable,
    grpc_wire.CANCELLED: Unavailable,
}


KIND = {grpc_wire.DEADLINE_EXCEEDED: "deadline", grpc_wire.UNAVAILABLE: "unavailable",
         grpc_wire.CANCELLED: "unavailable"}


def crashed(exc):
    """True when the model's Python process died (a segfault, an OOM kill). Triton 2.51 keeps such a model READY
    and fails each of its requests after about a second, for good: it does not start the process again."""
    details = exc.details or ""
    return exc.code == grpc_wire.INTERNAL and "Stub process" in details and "not healthy" in details


def translate(exc, timeout):
    """A grpc_wire.RpcError -> the ServingError the caller sees."""
    code = exc.code
    kind = _STATUS.get(code)
    if kind is DeadlineExceeded:
        return DeadlineExceeded(f"inference did not finish within {timeout:g} s")
    if code in (grpc_wire.UNAVAILABLE, grpc_wire.CANCELLED):
        return Unavailable("inference server is not reachable")
    if kind is not None:
        return kind(exc.details)
    return ServingError(f"inference failed: {exc.details}")
