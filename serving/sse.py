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
import socket

import numpy as np

from . import codecs

CONTENT_TYPE = "text/event-stream"
HEARTBEAT = b": keep-alive\n\n"


def event(data, name=None):
    head = b"event: " + name.encode() + b"\n" if name else b""
    return head + b"data: " + codecs.dumps(data) + b"\n\n"


def wants_stream(environ, doc):
    if CONTENT_TYPE in environ.get("HTTP_ACCEPT", ""):
        return True
    return isinstance(doc, dict) and doc.get("stream") is True


def join(answers, outputs):
    """The responses of one request as one answer: strings joined, anything else listed in order."""
    joined = {}
    for name, (kind, _) in outputs.items():
        values = [a[name] for a in answers if name in a]
        if kind == "string" and all(isinstance(v, str) for v in values):
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
    sock = getattr(environ.get("gunicorn.socket"), "_sock", None)   # gevent's wrapped, non-blocking socket
    if sock is None:
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
