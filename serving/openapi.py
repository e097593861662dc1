"""An OpenAPI 3.1 document of the service, generated at start-up from config.json: GET /openapi.json.

Every api with its request body (multipart/form-data or JSON, from its request schema) and its response
(from its response schema), the JSON errors each can answer, /health, and /metrics when it is on. ModelArts'
`"type": "file"` becomes a binary string part. The KServe v2 endpoints on the same port are Triton's own and are
described by the KServe v2 protocol, not here.
"""
import copy

from . import modelarts

ERROR = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}
HEALTH_OK = {"type": "object", "properties": {"health": {"const": "true"}}, "required": ["health"]}
HEALTH_DOWN = {"type": "object", "properties": {"health": {"const": "false"}, "reason": {"type": "string"}},
               "required": ["health", "reason"]}
ERRORS = {
    "400": "The body does not match the request schema, or the model refused the values",
    "404": "No such path",
    "405": "Method not allowed on this path",
    "413": "Request body over the size limit (MAX_BODY_MB)",
    "415": "Wrong Content-Type",
    "503": "The inference server or the model is not available",
    "504": "The inference did not finish within REQUEST_TIMEOUT",
}


def _schema(schema):
    """A ModelArts data schema -> JSON Schema 2020-12 (what OpenAPI 3.1 uses): "file" becomes binary."""
    if isinstance(schema, dict):
        if schema.get("type") == "file":
            return {"type": "string", "format": "binary", "contentMediaType": "application/octet-stream"}
        return {k: _schema(v) for k, v in schema.items()}
    if isinstance(schema, list):
        return [_schema(v) for v in schema]
    return copy.deepcopy(schema)


def _errors(codes):
    return {code: {"description": ERRORS[code], "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
            for code in codes}


def document(config, routes=None, title="", metrics=True, streaming=()):
    """config: modelarts.ModelArtsConfig; routes: the bound routes (default: config's own); streaming: the urls of
    decoupled models, which also answer as Server-Sent Events."""
    paths = {}
    for route in routes or config.apis:
        operation = {
            "operationId": f"{route.method.lower()}_{route.url.strip('/').replace('/', '_') or 'root'}",
            "summary": f"Inference on model {route.model!r}" if route.model else "Inference",
            **({"x-triton-model": {"name": route.model, "version": route.version}} if route.model else {}),
            **({} if route.method == "GET" else {"requestBody": {
                "required": True, "content": {route.content_type: {"schema": _schema(route.request_schema)}}}}),
            "responses": {
                "200": {"description": "The model's answer",
                        "content": {modelarts.JSON: {"schema": _schema(route.response_schema)}}},
                **_errors(["400", "404", "405", "413", "415", "503", "504"]),
            },
        }
        if route.url.endswith(("/v1/models", "/v1/embeddings")):   # OpenAI's, whatever model stands for them
            operation["description"] = "OpenAI-compatible; errors are OpenAI's error object."
            if route.url.endswith("/v1/models"):
                operation["summary"] = "The models, in OpenAI's list shape"
                operation.pop("x-triton-model", None)
        elif route.url in streaming and route.url.endswith(("/v1/chat/completions", "/v1/completions")):
            operation["description"] = ("OpenAI-compatible: with `\"stream\": true` the answer is OpenAI's chunks as "
                                        "Server-Sent Events, then `data: [DONE]`; errors are OpenAI's error object.")
            operation["responses"]["200"]["content"]["text/event-stream"] = {"schema": {"type": "string"}}
        elif route.url in streaming:
            operation["description"] = ("The model is decoupled: with `Accept: text/event-stream` or `\"stream\": "
                                        "true` the answer is Server-Sent Events, one `data:` event per response "
                                        "(this schema), then `event: end` or `event: error`.")
            operation["responses"]["200"]["content"]["text/event-stream"] = {"schema": {"type": "string"}}
        paths.setdefault(route.url, {})[route.method.lower()] = operation
    paths.setdefault(config.health_url, {})["get"] = {
        "operationId": "health",
        "summary": "Ready when the inference server and every model that an api uses are ready",
        "responses": {
            "200": {"description": "Ready", "content": {modelarts.JSON: {"schema": HEALTH_OK}}},
            "503": {"description": "Not ready, or shutting down", "content": {modelarts.JSON: {"schema": HEALTH_DOWN}}},
        },
    }
    if metrics:
        paths["/metrics"] = {"get": {
            "operationId": "metrics",
            "summary": "Prometheus text format: the proxy's series, then the inference server's",
            "responses": {"200": {"description": "Metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}},
        }}
    return {
        "openapi": "3.1.0",
        "info": {"title": title or "Inference service", "version": "1"},
        "paths": paths,
        "components": {"schemas": {"Error": ERROR}},
    }
