"""Load and check the ModelArts config.json; turn each `apis[]` entry into an Api.

- request property names are Triton input names, response property names are Triton output names;
- `"type": "file"` properties arrive as multipart file uploads and go to Triton as BYTES;
- which model serves a route is decided at start-up by serving/binding.py. Configs written before that may still
  name it in an api's `"x-triton": {"model": ..., "version": ...}` key, which is honoured as an explicit binding.
"""
import json
from dataclasses import dataclass, field

from .errors import ConfigError

EXTENSION = "x-triton"
MULTIPART = "multipart/form-data"
JSON = "application/json"
METHODS = ("GET", "POST", "PUT")
# The proxy's own paths, which no api may take: /metrics, /openapi.json and the KServe v2 pass-through.
RESERVED = ("/metrics", "/openapi.json")


@dataclass(frozen=True)
class Field:
    name: str
    type: str          # the JSON-schema type: file, string, integer, number, boolean, array, object
    required: bool
    encoding: str = "" # "base64": a JSON string carrying binary data (an image in a JSON body), sent decoded
    depth: int = 0     # how many arrays deep the schema nests: 0 a scalar, 1 an array, 2 an array of arrays


@dataclass(frozen=True)
class Api:
    """One `apis[]` entry of config.json: its url and method, the model bound to it, its request and response."""
    url: str
    method: str
    model: str                       # "" until serving/binding.py binds it (unless the api names it)
    version: str
    content_type: str                # what the request body must be
    inputs: tuple                    # Field per request property = Triton input
    outputs: tuple                   # Field per response property = Triton output
    request_schema: dict = field(default=None, compare=False)    # the api's request.data, as written
    response_schema: dict = field(default=None, compare=False)   # the api's response.data, as written


@dataclass(frozen=True)
class ModelArtsConfig:
    health_url: str
    apis: tuple
    model_algorithm: str = ""
    protocol: str = "http"   # what every api speaks, and so the container's port: http or https (serving/tls.py)


def _properties(block, where, empty=False):
    """The schema's properties as Fields; `empty`: none is allowed (the request of a GET api has no body)."""
    data = block.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("properties"), dict) or not (data["properties"] or empty):
        raise ConfigError(f"{where}: needs data.properties with at least one property")
    required = data.get("required")
    props = []
    for name, schema in data["properties"].items():
        kind = schema.get("type") if isinstance(schema, dict) else None
        if isinstance(kind, list) and kind and all(isinstance(k, str) for k in kind):
            # e.g. ["integer", "array"]: one item's value, or a batch's list of them; the item's type decides.
            kind = next((k for k in kind if k != "array"), "array")
        if not isinstance(kind, str):
            raise ConfigError(f"{where}: property {name!r} needs a 'type' (a string, or a list of strings)")
        encoding = schema.get("contentEncoding", "")
        if encoding not in ("", "base64"):
            raise ConfigError(f"{where}: property {name!r}: contentEncoding {encoding!r} is not supported (base64 is)")
        # Without a `required` list every property is required, as every non-optional Triton input is.
        props.append(Field(name, kind, required is None or name in required, encoding, _depth(schema)))
    return tuple(props)


def _depth(schema):
    depth = 0
    while isinstance(schema, dict) and schema.get("type") == "array":
        depth, schema = depth + 1, schema.get("items")
    return depth


def _content_type(block, where):
    ctype = block.get("Content-type") or block.get("Content-Type")
    if ctype not in (MULTIPART, JSON):
        raise ConfigError(f"{where}: Content-type must be {MULTIPART!r} or {JSON!r}, not {ctype!r}")
    return ctype


def parse(doc):
    """A config.json document (dict) -> ModelArtsConfig, or ConfigError naming the first problem."""
    if not isinstance(doc, dict):
        raise ConfigError("config.json must hold a JSON object")
    for key in ("model_algorithm", "model_type"):
        if not isinstance(doc.get(key), str) or not doc[key]:
            raise ConfigError(f"config.json: {key!r} is required")
    health = doc.get("health") or {}
    health_url = health.get("url", "/health")
    entries = doc.get("apis")
    if not isinstance(entries, list) or not entries:
        raise ConfigError("config.json: 'apis' must be a non-empty list")
    apis, seen, protocols = [], set(), {}
    for i, api in enumerate(entries):
        where = f"apis[{i}]"
        protocol = str(api.get("protocol", "http")).lower() if isinstance(api, dict) else ""
        if protocol not in ("http", "https"):
            raise ConfigError(f"{where}: protocol must be \"http\" or \"https\", not {api.get('protocol')!r}")
        protocols.setdefault(protocol, where)
        url, method = api.get("url"), str(api.get("method", "post")).upper()
        if not isinstance(url, str) or not url.startswith("/"):
            raise ConfigError(f"{where}: 'url' must be a path starting with '/'")
        if url in RESERVED or url == "/v2" or url.startswith("/v2/"):
            raise ConfigError(f"{where}: url {url} is the proxy's own (/metrics, /openapi.json, /v2/...)")
        if method not in METHODS:
            raise ConfigError(f"{where}: method {method!r} is not one of {METHODS}")
        if (url, method) in seen or url == health_url:
            raise ConfigError(f"{where}: {method} {url} is declared twice or clashes with the health URL")
        seen.add((url, method))
        binding = api.get(EXTENSION, {})
        if not isinstance(binding, dict) or not isinstance(binding.get("model", ""), str):
            raise ConfigError(f'{where}: "{EXTENSION}" must be {{"model": "<triton model name>", "version": "..."}}')
        request, response = api.get("request") or {}, api.get("response") or {}
        content_type = _content_type(request, f"{where}.request")
        inputs = _properties(request, f"{where}.request", empty=method == "GET")
        if content_type == JSON and any(f.type == "file" for f in inputs):
            raise ConfigError(f"{where}.request: 'file' properties need {MULTIPART!r}")
        if _content_type(response, f"{where}.response") != JSON:
            raise ConfigError(f"{where}.response: only {JSON!r} responses are supported")
        apis.append(Api(url=url, method=method, model=binding.get("model", ""), version=str(binding.get("version", "")),
                            content_type=content_type, inputs=inputs, outputs=_properties(response, f"{where}.response"),
                            request_schema=request["data"], response_schema=response["data"]))
    if len(protocols) > 1:
        raise ConfigError(f"config.json: {protocols['http']} says http and {protocols['https']} says https; the "
                          "container serves one protocol on its port (the model's container API protocol), so give "
                          "every api the same")
    return ModelArtsConfig(health_url=health_url, apis=tuple(apis), model_algorithm=doc["model_algorithm"],
                           protocol=next(iter(protocols)))


def load(path):
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc} (say which config.json to serve: CONFIG=path for make serve and "
                          "make rehearse, MODELARTS_CONFIG=path for run.sh; make config MODEL_REPOSITORY=dir writes "
                          "dir/config.json)") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from None
    return parse(doc)


if __name__ == "__main__":   # run.sh, before Triton starts: a config.json that cannot be served stops it at once
    import sys
    try:
        load(sys.argv[1])
    except ConfigError as exc:
        print(f"config.json: {exc}")
        sys.exit(2)
