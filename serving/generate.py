"""Write a ModelArts config.json for a Triton model repository: one api per model, with only ModelArts' keys.

    python -m serving.generate [MODEL_REPOSITORY] [--algorithm NAME] [--examples] > config.json      (make config)

With --examples, a sample request for each api goes to stderr (a curl line, its body built from the model's
dims: zeros, "text", false; a file field names a file to send), so that the first call needs no guessing.

Each model's config.pbtxt decides its api; serving/binding.py binds it back by its tensor names at start-up:
- URL: the model's `modelarts_url` parameter, else `/<model name>`;
- request: one property per input, named as the input. An input listed in the `modelarts_file_inputs` parameter
  (comma-separated) is a multipart file upload, and the request is `multipart/form-data`; otherwise JSON.
  A BYTES input is a string; a numeric input is a number (integer types: integer) or nested arrays of its dims.
  Where a batched model's only inputs are single-element non-file items, the JSON properties are arrays: a list
  of N values is a batch of N (as `/embeddings` takes a list of texts), and every output is then one more array;
- response: one property per output, named as the output: a scalar for a single element, else arrays.
A repository with one LLM model (decoupled, text_input -> text_output, as Triton's vLLM and TensorRT-LLM models)
also gets OpenAI's /v1/chat/completions and /v1/completions, one with an embedding model /v1/embeddings, and either
GET /v1/models (serving/handlers/openai.py).
"""
import argparse
import json
import os
import sys

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from .modelarts import RESERVED

_JSON_TYPE = {"BOOL": "boolean", "STRING": "string", "FP16": "number", "FP32": "number", "FP64": "number",
            "BF16": "number"}

STREAMS = ("one response of the model; asked with Accept: text/event-stream or \"stream\": true, each response "
           "comes as a Server-Sent Event, else the responses come joined in one answer")
HEALTH = {"check_method": "HTTP", "url": "/health", "protocol": "http", "initial_delay_seconds": 30,
          "timeout_seconds": 5, "period_seconds": 10, "failure_threshold": 3}


def read_model(path):
    config = model_config_pb2.ModelConfig()
    with open(os.path.join(path, "config.pbtxt")) as f:
        text_format.Parse(f.read(), config)
    if not config.name:
        config.name = os.path.basename(path)
    return config


def _scalar(data_type):
    name = model_config_pb2.DataType.Name(data_type).removeprefix("TYPE_")
    return _JSON_TYPE.get(name, "integer")


def _schema(data_type, dims, extra_levels=0):
    """A tensor item's JSON schema: a scalar for one element, else one array level per dimension."""
    levels = extra_levels + (0 if list(dims) in ([], [1]) else len(dims))
    schema = {"type": _scalar(data_type)}
    for _ in range(levels):
        schema = {"type": "array", "items": schema}
    return schema


def _item_or_batch(schema, max_batch):
    """The schema of one item, or of a batch of items (one item in, one item out; a batch in, a batch out)."""
    note = f"one item, or a batch of up to {max_batch} items"
    if schema["type"] == "array":   # an array whose elements are the item's elements (one item) or items (a batch)
        return {"type": "array", "items": {"anyOf": [schema["items"], schema]}, "description": note}
    return {"type": [schema["type"], "array"], "items": schema, "description": note}


def _listed(config, files):
    """A list of N is a batch of N where every input is one element per item and none is a file."""
    return config.max_batch_size > 0 and not files and all(list(i.dims) == [1] for i in config.input)


def api(config):
    params = {k: v.string_value for k, v in config.parameters.items()}
    url = params.get("modelarts_url") or f"/{config.name}"
    files = {s.strip() for s in params.get("modelarts_file_inputs", "").split(",") if s.strip()}
    unknown = files - {i.name for i in config.input}
    if unknown:
        raise SystemExit(f"{config.name}: modelarts_file_inputs names no input: {sorted(unknown)}")
    listed = _listed(config, files)
    # Otherwise a batched model takes one item or a batch of them, and answers in the same shape.
    batches = config.max_batch_size > 0 and not files and not listed

    decoupled = config.model_transaction_policy.decoupled

    def schema(tensor):
        if decoupled and tensor.data_type == model_config_pb2.TYPE_STRING and list(tensor.dims) in ([-1], [1]):
            return {"type": "string"}   # each response of a decoupled model carries one piece of text
        item = _schema(tensor.data_type, tensor.dims, 1 if listed else 0)
        return _item_or_batch(item, config.max_batch_size) if batches else item

    request = {i.name: {"type": "file"} if i.name in files else schema(i) for i in config.input}
    response = {o.name: schema(o) for o in config.output}
    required = [i.name for i in config.input if not i.optional]
    return {
        "protocol": "http",
        "url": url,
        "method": "post",
        "request": {"Content-type": "multipart/form-data" if files else "application/json",
                    "data": {"type": "object", "properties": request, "required": required}},
        "response": {"Content-type": "application/json",
                     # An LLM's additional outputs come only when asked for (vLLM's return_* inputs).
                    "data": {"type": "object", "properties": response,
                             "required": ["text_output"] if is_llm(config) else list(response),
                              **({"description": STREAMS} if decoupled else {})}},
    }


_MESSAGE = {"type": "object", "properties": {"role": {"type": "string"}, "content": {"type": "string"}},
            "required": ["role", "content"]}
_SAMPLING = {"model": {"type": "string"}, "stream": {"type": "boolean"}, "max_tokens": {"type": "integer"},
             "temperature": {"type": "number"}, "top_p": {"type": "number"},
             "stop": {"type": ["string", "array"], "items": {"type": "string"}}, "seed": {"type": "integer"},
             "presence_penalty": {"type": "number"}, "frequency_penalty": {"type": "number"},
             "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}}}
_ANSWER = {"type": "object", "description": "OpenAI's answer; with \"stream\": true, Server-Sent Events of chunks, "
                                            "then data: [DONE]",
           "properties": {"id": {"type": "string"}, "object": {"type": "string"}, "created": {"type": "integer"},
                          "model": {"type": "string"}, "choices": {"type": "array", "items": {"type": "object"}},
                          "usage": {"type": "object"}},
           "required": ["id", "object", "created", "model", "choices"]}
_LIST = {"type": "object", "properties": {"object": {"type": "string"}, "data": {"type": "array", "items": {
    "type": "object", "properties": {"id": {"type": "string"}, "object": {"type": "string"},
                                     "created": {"type": "integer"}, "owned_by": {"type": "string"}}}}},
         "required": ["object", "data"]}
_EMBEDDINGS = {"type": "object", "properties": {"object": {"type": "string"}, "model": {"type": "string"},
                                                "data": {"type": "array", "items": {"type": "object"}},
                                                "usage": {"type": "object"}},
               "required": ["object", "data", "model", "usage"]}


def is_llm(config):
    """Triton's vLLM / TensorRT-LLM interface: decoupled, text_input in, text_output out."""
    return (config.model_transaction_policy.decoupled and any(i.name == "text_input" for i in config.input)
            and any(o.name == "text_output" for o in config.output))


def is_embedding(config):
    """One text input and one FP32 vector output, not decoupled (as serving/repository.py's is_embedding)."""
    vectors = [o for o in config.output if o.data_type == model_config_pb2.TYPE_FP32 and len(o.dims) == 1
               and o.dims[0] != 1]
    files = config.parameters["modelarts_file_inputs"].string_value if "modelarts_file_inputs" in config.parameters \
        else ""
    return (not config.model_transaction_policy.decoupled and len(config.input) == 1 and not files
            and config.input[0].data_type == model_config_pb2.TYPE_STRING and len(vectors) == 1)


def _api(url, request, response, method="post"):
    return {"protocol": "http", "url": url, "method": method,
            "request": {"Content-type": "application/json",
                        "data": {"type": "object", "properties": request, "required": [k for k in request
                                                                                       if k in ("messages",
                                                                                                "prompt", "input")]}},
            "response": {"Content-type": "application/json", "data": response}}


def openai_apis(llm=True, embeddings=True):
    """OpenAI's routes (serving/handlers/openai.py): /v1/chat/completions and /v1/completions for a repository with an LLM
    model, /v1/embeddings for one with an embedding model, /v1/models (GET) for either."""
    apis = []
    if llm:
        apis += [_api("/v1/chat/completions", {"messages": {"type": "array", "items": _MESSAGE}, **_SAMPLING,
                                               "logprobs": {"type": "boolean"}, "top_logprobs": {"type": "integer"}},
                      _ANSWER),
                 _api("/v1/completions", {"prompt": {"type": "string"}, **_SAMPLING, "echo": {"type": "boolean"},
                                          "logprobs": {"type": "integer"}}, _ANSWER)]
    if embeddings:
        apis.append(_api("/v1/embeddings", {"input": {"type": ["string", "array"], "items": {"type": "string"}},
                                            "model": {"type": "string"},
                                            "encoding_format": {"type": "string", "enum": ["float", "base64"]}},
                         _EMBEDDINGS))
    if llm or embeddings:
        apis.append(_api("/v1/models", {}, _LIST, method="get"))
    return apis


def generate(repository, algorithm="predict_analysis", protocol="http"):
    models = sorted(os.path.join(repository, d) for d in os.listdir(repository)
                    if os.path.isfile(os.path.join(repository, d, "config.pbtxt")))
    if not models:
        raise SystemExit(f"no model (a folder with config.pbtxt) in {repository}")
    configs = [read_model(m) for m in models]
    apis = [api(c) for c in configs]
    # With several LLM (or embedding) models, bind each OpenAI url with MODEL_BINDINGS.
    apis += openai_apis(sum(is_llm(c) for c in configs) == 1, sum(is_embedding(c) for c in configs) == 1)
    urls = [a["url"] for a in apis]
    if len(set(urls)) != len(urls):
        raise SystemExit(f"two models share a URL: {urls}; set modelarts_url in their config.pbtxt")
    taken = [u for u in urls if u in RESERVED or u == "/v2" or u.startswith("/v2/")]
    if taken:
        raise SystemExit(f"{taken}: the proxy serves /metrics, /openapi.json and /v2/... itself; set modelarts_url "
                         "in the model's config.pbtxt to another URL")
    for a in apis:   # one protocol for the container's port (serving/tls.py); the health block stays HTTP
        a["protocol"] = protocol
    return {"model_algorithm": algorithm, "model_type": "Image", "apis": apis, "health": HEALTH}


def _example_value(tensor, listed):
    """A sample JSON value for one input, from its config.pbtxt: zeros (or "text", false) of its item's shape."""
    name = model_config_pb2.DataType.Name(tensor.data_type).removeprefix("TYPE_")
    value = {"string": "text", "boolean": False, "number": 0.0}.get(_JSON_TYPE.get(name), 0)
    dims = [1 if d < 0 else int(d) for d in tensor.dims]
    if dims not in ([], [1]):
        for d in reversed(dims):
            value = [value] * d
    return [value] if listed else value


def examples(repository, config, host="127.0.0.1:8080"):
    """A curl line per api of `config` (as generate wrote it), for a service on `host`."""
    by_url = {}
    for path in sorted(os.listdir(repository)):
        if os.path.isfile(os.path.join(repository, path, "config.pbtxt")):
            c = read_model(os.path.join(repository, path))
            by_url[api(c)["url"]] = c
    lines = []
    for a in config["apis"]:
        url, scheme = a["url"], a.get("protocol", "http")
        target = f"{scheme}://{host}{url}" + (" -k" if scheme == "https" else "")
        props = a["request"]["data"]["properties"]
        if a["method"] == "get":
            lines.append(f"curl {target}")
        elif url.endswith("/v1/chat/completions"):
            lines.append(f"curl {target} -H 'Content-Type: application/json' -d "
                         """'{"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 16}'""")
        elif url.endswith("/v1/completions"):
            lines.append(f"curl {target} -H 'Content-Type: application/json' -d '{{\"prompt\": \"Hello\"}}'")
        elif url.endswith("/v1/embeddings"):
            lines.append(f"curl {target} -H 'Content-Type: application/json' -d '{{\"input\": \"Hello\"}}'")
        elif a["request"]["Content-type"] == "multipart/form-data":
            fields = " ".join(f"-F {n}=@/path/to/{n}" if props[n].get("type") == "file" else f"-F {n}=..."
                              for n in props)
            lines.append(f"curl -X POST {target} {fields}")
        else:
            c = by_url[url]
            doc = {i.name: _example_value(i, _listed(c, ())) for i in c.input if not i.optional}
            lines.append(f"curl -X POST {target} -H 'Content-Type: application/json' -d '{json.dumps(doc)}'")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("repository", nargs="?", default="model_repository")
    parser.add_argument("--algorithm", default="predict_analysis", help="config.json's model_algorithm")
    parser.add_argument("--protocol", choices=("http", "https"), default="http",
                        help="every api's protocol: the container's port speaks it (https: serving/tls.py)")
    parser.add_argument("--examples", action="store_true", help="a sample request per api, on stderr")
    args = parser.parse_args()
    config = generate(args.repository, args.algorithm, args.protocol)
    json.dump(config, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")
    if args.examples:
        sys.stderr.write("sample requests, once `make serve` runs on this config.json:\n")
        sys.stderr.writelines(f"  {line}\n" for line in examples(args.repository, config))


if __name__ == "__main__":
    main()
