"""What a model repository says without Triton: each model's tensors from its config.pbtxt (ModelInfo).

Triton's client (serving/triton/models.py) builds the same ModelInfo from Triton's answers; on-demand loading binds
routes from these files before anything is loaded (serving/loading/). What a model's interface makes it (an LLM, an
embedding model: the OpenAI routes' models) is decided here too, from its tensors alone.
"""
import os
from dataclasses import dataclass

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from .errors import ConfigError


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    inputs: dict        # name -> (datatype, shape); shape has -1 for the batch dimension when batched
    outputs: dict       # name -> (datatype, shape)
    batched: bool       # max_batch_size > 0
    max_batch_size: int = 0
    decoupled: bool = False   # a decoupled model: any number of responses per request (ModelStreamInfer)


# The vLLM backend's interface, which the OpenAI routes' LLM models have.
INTERFACE_IN, INTERFACE_OUT = "text_input", "text_output"


def is_llm(info):
    return info.decoupled and INTERFACE_IN in info.inputs and INTERFACE_OUT in info.outputs


def embedding_tensors(info):
    """(text input, vector output) of an embedding model: not decoupled, one text input, an FP32 vector output."""
    if info.decoupled or len(info.inputs) != 1:
        return None
    (name, (datatype, _)), = info.inputs.items()
    skip = 1 if info.batched else 0
    vectors = [n for n, (dt, shape) in info.outputs.items() if dt == "FP32" and len(shape) - skip == 1
               and shape[-1] != 1]
    return (name, vectors[0]) if datatype == "BYTES" and len(vectors) == 1 else None


def is_embedding(info):
    return embedding_tensors(info) is not None


def _datatype(data_type):
    name = model_config_pb2.DataType.Name(data_type).removeprefix("TYPE_")
    return "BYTES" if name == "STRING" else name


def read_repository(path):
    """{name: ModelInfo} of every model folder in the repository, read from its config.pbtxt: what binding and
    decoding need, with nothing loaded."""
    try:
        folders = sorted(d for d in os.listdir(path) if os.path.isfile(os.path.join(path, d, "config.pbtxt")))
    except OSError as exc:
        raise ConfigError(f"MODEL_LOADING=on-demand: cannot read the model repository {path}: {exc}") from None
    models = {}
    for folder in folders:
        config = model_config_pb2.ModelConfig()
        where = os.path.join(path, folder, "config.pbtxt")
        try:
            with open(where) as f:
                text_format.Parse(f.read(), config)
        except (OSError, text_format.ParseError) as exc:
            raise ConfigError(f"MODEL_LOADING=on-demand: {where} cannot be read: {exc}") from None
        name = config.name or folder
        if not config.input or not config.output:
            raise ConfigError(f"MODEL_LOADING=on-demand: {where} declares no inputs or no outputs; on-demand "
                              "loading binds routes from config.pbtxt before the model is loaded, so declare them")
        batch = [-1] if config.max_batch_size > 0 else []

        def tensors(items):
            return {t.name: (_datatype(t.data_type), batch + [int(d) for d in t.dims]) for t in items}

        models[name] = ModelInfo(name=name, version="", inputs=tensors(config.input), outputs=tensors(config.output),
                                 batched=config.max_batch_size > 0, max_batch_size=config.max_batch_size,
                                 decoupled=config.model_transaction_policy.decoupled)
    return models
