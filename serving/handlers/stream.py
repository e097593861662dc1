"""Decoupled models (any number of responses per request) on config.json urls: Server-Sent Events, or one JSON answer.

A client asks for a stream with `Accept: text/event-stream`, or `"stream": true` in its JSON body (which also goes to
the model when it has a `stream` input, as Triton's vLLM and TensorRT-LLM models do; when the model has one and the
body does not set it, it is set to what the client asked for). Then:
- each of Triton's responses is one `data:` event holding the api's response schema;
- the end is an explicit `event: end` with `{"responses": n}`;
- an error mid-stream (the model's, or the deadline) is a final `event: error` with `{"error": ...}`; before the
  first response it is the usual JSON error with its status (504 for the deadline);
- a comment line (`: keep-alive`) goes out when no response has come for HEARTBEAT_S seconds;
- a client that hangs up cancels the request in Triton (the gRPC stream is reset; the model sees is_cancelled()).
Otherwise the answer is one JSON object: each string output joined over the responses, other outputs as the list of
their values in order.

A stream lasts at most REQUEST_TIMEOUT, and never past GRACEFUL_TIMEOUT - 5 s, so a stream in flight at a stop ends
with its final event or an error event before gunicorn's drain runs out: it is never cut without one.
"""
import logging
import socket

import numpy as np

from .. import codecs
from ..errors import ServingError
from ..http import JSON_HEADERS, error_answer, read_body
from .schema import Outputs, decode

log = logging.getLogger("serving.stream")

CONTENT_TYPE = "text/event-stream"
HEARTBEAT = b": keep-alive\n\n"
STREAM_HEADERS = [("Content-Type", CONTENT_TYPE + "; charset=utf-8"), ("Cache-Control", "no-cache"),
                  ("X-Accel-Buffering", "no")]


def event(data, name=None):
    head = b"event: " + name.encode() + b"\n" if name else b""
    return head + b"data: " + codecs.dumps(data) + b"\n\n"


def wants_stream(environ, doc):
    if CONTENT_TYPE in environ.get("HTTP_ACCEPT", ""):
        return True
    return isinstance(doc, dict) and doc.get("stream") is True


# The vLLM backend's additional outputs (sent when the request asks for them) mean, over a whole stream: the last
# response's value (the finish reason, the cumulative logprob, the prompt's tokens), or the sum (new tokens).
LAST, SUM = {"finish_reason", "cumulative_logprob", "num_input_tokens"}, {"num_output_tokens"}


def join(answers, outputs):
    """The responses of one request as one answer: strings joined, anything else listed in order (the vLLM
    backend's additional outputs as LAST and SUM say); an output that no response carried is left out."""
    joined = {}
    for name, (kind, _) in outputs.items():
        values = [a[name] for a in answers if name in a]
        if not values and kind != "string":
            continue
        if name in LAST and values:
            joined[name] = values[-1]
        elif name in SUM and all(isinstance(v, (int, float, np.integer)) for v in values):
            joined[name] = int(sum(values))
        elif kind == "string" and all(isinstance(v, str) for v in values):
            joined[name] = "".join(values)
        else:
            joined[name] = values
    return joined


def stream_flag(info, tensors, asked):
    """Give a model's optional `stream` input what the client asked for, when the request leaves it out."""
    spec = info.inputs.get("stream")
    if spec is not None and spec[0] == "BOOL" and "stream" not in tensors:
        tensors["stream"] = np.array([asked], dtype=bool)
    return tensors


def hung_up(environ):
    """True once the client has closed its connection: checked between events, so that a stream is cancelled
    within one token or heartbeat of a hang-up, not only when a write fails (which takes a few more)."""
    # gevent's wrapped, non-blocking socket: a private attribute (on a gevent or gunicorn upgrade, check it is there;
    # without it a client that hung up is noticed at the next write instead)
    sock = getattr(environ.get("gunicorn.socket"), "_sock", None)
    if sock is None:
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


class Stream:
    """A config.json api on a decoupled model: its responses as Server-Sent Events when the client asks for a
    stream, else one joined JSON answer. Before the first response an error is the usual JSON answer with its
    status; after it, an `error` event."""

    def __init__(self, api, info, call, max_body_bytes, heartbeat_s):
        self.api, self.info, self.call = api, info, call   # call: serving.triton.calls.StreamCall
        self.limit, self.heartbeat = max_body_bytes, heartbeat_s
        self.outputs = Outputs(api, info)

    def answer(self, environ):
        try:
            tensors, batch, doc = decode(self.api, self.info, environ, read_body(environ, self.limit))
            asked = wants_stream(environ, doc)
            responses = self.call.responses(stream_flag(self.info, tensors, asked), self.heartbeat if asked else None,
                                            coalesce=True)
            try:   # the first response before the first byte
                first = next((r for r in responses if r is not None), None)
                if not asked:
                    body = self.joined(first, responses, batch)
            except BaseException:
                responses.close()
                raise
        except Exception as exc:   # noqa: BLE001 (error_answer: a ServingError's status, else a logged 500)
            return error_answer(environ, exc)
        if not asked:
            return "200 OK", [JSON_HEADERS, ("Content-Length", str(len(body)))], [body]
        return "200 OK", STREAM_HEADERS, self.events(environ, first, responses, batch)

    def joined(self, first, responses, batch):
        answers = [] if first is None else [self.outputs.encode(r, batch) for r in first]
        try:
            answers += [self.outputs.encode(r, batch) for group in responses if group is not None for r in group]
        finally:
            responses.close()
        return codecs.dumps(join(answers, self.outputs.types))

    def events(self, environ, first, responses, batch):
        n = 0
        try:
            if first is not None:
                n += len(first)
                yield b"".join(event(self.outputs.encode(r, batch)) for r in first)
            for group in responses:
                if hung_up(environ):
                    log.info("%s %s: the client hung up after %d responses; cancelled", self.api.method,
                             self.api.url, n)
                    return
                if group is None:
                    yield HEARTBEAT
                    continue
                n += len(group)   # the responses that arrived together: one write
                yield b"".join(event(self.outputs.encode(r, batch)) for r in group)
            yield event({"responses": n}, "end")
        except ServingError as exc:
            log.warning("%s %s: stream ended after %d responses: %s", self.api.method, self.api.url, n,
                        exc.message)
            yield event({"error": exc.message}, "error")
        finally:
            responses.close()   # a client that hung up: the request is cancelled in Triton
