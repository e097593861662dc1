"""What Triton says of its models, as ModelInfo (the same shape serving/repository.py reads from config.pbtxt)."""
from tritonclient.grpc import service_pb2

from ..grpc_wire import RpcError
from ..repository import ModelInfo
from .status import translate


def model_info(c, name, version="", timeout=10.0):
    try:
        meta = c.call("ModelMetadata", service_pb2.ModelMetadataRequest(name=name, version=version), timeout)
        config = c.call("ModelConfig", service_pb2.ModelConfigRequest(name=name, version=version), timeout)
    except RpcError as exc:
        raise translate(exc, timeout) from None

    def tensors(items):
        return {t.name: (t.datatype, [int(d) for d in t.shape]) for t in items}

    return ModelInfo(name=name, version=version, inputs=tensors(meta.inputs), outputs=tensors(meta.outputs),
                     batched=config.config.max_batch_size > 0, max_batch_size=config.config.max_batch_size,
                     decoupled=config.config.model_transaction_policy.decoupled)


def repository(c, timeout=10.0):
    """{name: ModelInfo} of every ready model in Triton's repository (what serving/binding.py chooses from)."""
    try:
        index = c.call("RepositoryIndex", service_pb2.RepositoryIndexRequest(ready=True), timeout)
    except RpcError as exc:
        raise translate(exc, timeout) from None
    return {name: model_info(c, name, "", timeout) for name in sorted({m.name for m in index.models})}
