"""What every handler shares to speak HTTP over WSGI, and the one door by which an error becomes an answer.

A handler (serving/handlers/) answers `answer(environ) -> (status line, headers, body iterable)`; serving/front.py
sends it. `error_answer` is the only place where a ServingError, or an exception nobody expected, becomes a JSON
answer: its status, `{"error": ...}` (or the shape a route kind chooses: OpenAI's), Retry-After where the error
carries one, and a log line for the server's own failures (5xx).
"""
import logging

from . import codecs
from .errors import PayloadTooLarge, ServingError

log = logging.getLogger("serving.http")

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
    """The Content-Type without its parameters, lower case."""
    return environ.get("CONTENT_TYPE", "").partition(";")[0].strip().lower()


def json_answer(doc, status=200, retry_after=None):
    """(status line, headers, body) of a JSON answer."""
    body = codecs.dumps(doc)
    headers = [JSON_HEADERS, ("Content-Length", str(len(body)))]
    if retry_after:
        headers.append(("Retry-After", str(retry_after)))
    return status_line(status), headers, [body]


def plain(exc):
    """The body of every error answer but the OpenAI routes'."""
    return {"error": exc.message}


def error_answer(environ, exc, shape=plain, logged=False):
    """An error -> (status line, headers, body): a ServingError with its status; anything else is a 500 whose
    traceback goes to the log. `shape` makes the body from the ServingError. The server's own failures (5xx) are
    logged once (`logged`: the caller has said it already)."""
    if not isinstance(exc, ServingError):
        log.error("unhandled error on %s %s", environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"), exc_info=exc)
        exc, logged = ServingError("internal error"), True
    if exc.status >= 500 and not logged:
        log.warning("%s %s -> %d: %s", environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"), exc.status,
                    exc.message)
    return json_answer(shape(exc), exc.status, getattr(exc, "retry_after", None))
