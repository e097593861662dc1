"""config.json's predict routes as plain WSGI: the body read once, decoded, one Triton call, the answer encoded.

serving/front.py hands a predict request here before Flask: Flask's request context, werkzeug's Request and
Response, its URL map and error handlers cost more per request than the rest of the proxy together (issue 21's
profile). The answers are Flask's to the byte: the same JSON errors with the same status codes and messages, the
same headers; what the route's method does not match (405, OPTIONS, HEAD) still goes on to Flask.

`decode`, `read_body`, `media_type` and `error_answer` are shared with the streaming and OpenAI routes
(serving/sse.py, serving/openai.py), which front.py hands their requests directly too; `error_answer` makes every
JSON error answer of the service (with Retry-After where the error carries one).
"""
import json
import logging

from . import codecs, modelarts, multipart
from .errors import BadRequest, PayloadTooLarge, ServingError, UnsupportedMediaType

log = logging.getLogger("serving.predict")

JSON_HEADERS = ("Content-Type", "application/json")
_REASONS = {200: "OK", 400: "BAD REQUEST", 403: "FORBIDDEN", 404: "NOT FOUND", 405: "METHOD NOT ALLOWED",
            413: "REQUEST ENTITY TOO LARGE", 415: "UNSUPPORTED MEDIA TYPE", 500: "INTERNAL SERVER ERROR",
            503: "SERVICE UNAVAILABLE", 504: "GATEWAY TIMEOUT"}


def status_line(code):
    return f"{code} {_REASONS.get(code, '')}".rstrip()


def read_body(environ, limit):
    """The whole request body, refused (413) past `limit` bytes: from its Content-Length before anything is read,
    or while reading a chunked one."""
    limit_text = f"request body over {limit / (1024 * 1024):g} MB"
    length = environ.get("CONTENT_LENGTH")
    stream = environ["wsgi.input"]
    if length:
        n = int(length)   # gunicorn has checked it is a number
        if n > limit:
            raise PayloadTooLarge(limit_text)
        return stream.read(n) if n else b""
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise PayloadTooLarge(limit_text)
    return data


def media_type(environ):
    """What request.mimetype gives, without werkzeug's full option parsing."""
    return environ.get("CONTENT_TYPE", "").partition(";")[0].strip().lower()


def decode(route, info, environ, body):
    """The request body -> ({input name: tensor}, whether it is a batch, the JSON document or None), following the
    route's request schema."""
    ctype = media_type(environ)
    if ctype != route.content_type:
        raise UnsupportedMediaType(f"expected Content-Type {route.content_type}, got {ctype or 'no Content-Type'}")
    tensors, batch = {}, False
    if ctype == modelarts.MULTIPART:
        files, form = multipart.parse(body, environ.get("CONTENT_TYPE", ""))
        for f in route.inputs:
            datatype, shape = info.inputs[f.name]
            given = len(files.get(f.name, ())) + len(form.get(f.name, ()))
            if given > 1:   # refuse rather than pick one of them
                raise BadRequest(f"field {f.name!r} is given {given} times; send it once")
            if f.type == "file":
                upload = files.get(f.name)
                if upload is None:
                    if not f.required:
                        continue
                    if f.name in form:
                        raise BadRequest(f"field {f.name!r} must be a file upload, not a text field")
                    got = sorted({k for k in (*files, *form) if k})   # a nameless part is None
                    hint = f" (got {', '.join(repr(k)[1:-1][:40] for k in got[:10])}{', ...' if len(got) > 10 else ''})" \
                        if got else ""
                    raise BadRequest(f"missing file field {f.name!r}{hint}")
                tensors[f.name] = codecs.file_tensor(f.name, upload[0], shape, info.batched)
            else:
                if f.name not in form:
                    if f.required:
                        raise BadRequest(f"missing form field {f.name!r}")
                    continue
                raw = form[f.name][0]
                try:
                    value = raw if datatype == "BYTES" else json.loads(raw)
                except ValueError:
                    raise BadRequest(f"form field {f.name!r} must hold {datatype} values") from None
                tensors[f.name], is_batch = codecs.json_batch(f.name, value, datatype, shape, info.batched,
                                                              f.encoding == "base64", info.max_batch_size)
                batch = batch or is_batch
        doc = None
    else:
        doc = codecs.parse_json_body(body)
        for f in route.inputs:
            if f.name not in doc:
                if f.required:
                    raise BadRequest(f"missing field {f.name!r}")
                continue
            datatype, shape = info.inputs[f.name]
            tensors[f.name], is_batch = codecs.json_batch(f.name, doc[f.name], datatype, shape, info.batched,
                                                          f.encoding == "base64", info.max_batch_size)
            batch = batch or is_batch
    if not tensors:
        raise BadRequest("the request carries none of the fields " + ", ".join(f.name for f in route.inputs))
    return tensors, batch, doc


def error_answer(environ, exc, logged=False):
    """A ServingError -> (status, headers, body), logged when it is the server's (5xx) and not `logged` already."""
    if exc.status >= 500 and not logged:
        log.warning("%s %s -> %d: %s", environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"), exc.status,
                    exc.message)
    body = codecs.dumps({"error": exc.message})
    headers = [JSON_HEADERS, ("Content-Length", str(len(body)))]
    if getattr(exc, "retry_after", None):
        headers.append(("Retry-After", str(exc.retry_after)))
    return status_line(exc.status), headers, body


class Predict:
    """One predict route: decode, the route's prebuilt Triton call (triton.InferCall), encode."""

    def __init__(self, route, info, call, max_body_bytes):
        self.route, self.info, self.call, self.limit = route, info, call, max_body_bytes
        self.names = [f.name for f in route.outputs]
        self.types = {f.name: (f.type, f.depth) for f in route.outputs}

    def answer(self, environ):
        """(status line, headers, body) for one request; never raises."""
        try:
            tensors, batch, _ = decode(self.route, self.info, environ, read_body(environ, self.limit))
            outputs = self.call(tensors)
            info, types = self.info, self.types
            body = codecs.dumps({n: codecs.output_value(outputs[n], types[n][0], info.batched, types[n][1], batch)
                                 for n in self.names})
        except ServingError as exc:
            return error_answer(environ, exc)
        except Exception:
            log.exception("unhandled error on %s %s", environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"))
            return error_answer(environ, ServingError("internal error"), logged=True)
        return "200 OK", [JSON_HEADERS, ("Content-Length", str(len(body)))], body

    def __call__(self, environ, start_response):
        status, headers, body = self.answer(environ)
        start_response(status, headers)
        return [body]
