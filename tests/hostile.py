"""The hostile-input corpus: raw HTTP requests, each with the 4xx JSON answer it must get.

Served by tests/data/config.hostile.json: MNIST as multipart on `/`, the embeddings as JSON on `/embeddings`, and
MNIST with a base64 image in JSON on `/v1/mnist/json`; the stack runs with MAX_BODY_MB=1. Each case is
(name, raw request, status, the error message or its start). Requests are raw bytes, so that malformed ones
reach the server as they are.
"""
import base64
import io
import json
import struct
import zlib

from PIL import Image

LIMIT_MB = 1
BOUNDARY = "hostileboundary"


def http(method, path, body=b"", headers=(), version="HTTP/1.1"):
    head = [f"{method} {path} {version}", "Host: test", "Connection: close"]
    head += [f"{k}: {v}" for k, v in headers]
    if (body or method in ("POST", "PUT")) and not any(k.lower() == "content-length" for k, _ in headers):
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


def post_json(path, body, ctype="application/json"):
    if not isinstance(body, bytes):
        body = json.dumps(body).encode()
    return http("POST", path, body, [("Content-Type", ctype)])


def part(name, data, filename=None):
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    ctype = "\r\nContent-Type: application/octet-stream" if filename else ""
    return f"--{BOUNDARY}\r\nContent-Disposition: {disposition}{ctype}\r\n\r\n".encode() + data + b"\r\n"


def multipart(*parts, end=True, path="/", boundary=True):
    body = b"".join(parts) + (f"--{BOUNDARY}--\r\n".encode() if end else b"")
    ctype = "multipart/form-data" + (f"; boundary={BOUNDARY}" if boundary else "")
    return http("POST", path, body, [("Content-Type", ctype)])


def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(side=30000):
    """A valid PNG of a few hundred bytes that declares side x side pixels (900 million at 30000)."""
    header = png_chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
    rows = zlib.compress(b"\0" * (1 + side // 8) * 64, 9)   # the first rows only; the decoder must refuse earlier
    return b"\x89PNG\r\n\x1a\n" + header + png_chunk(b"IDAT", rows) + png_chunk(b"IEND", b"")


def image(fmt, size=28):
    buf = io.BytesIO()
    Image.new("L", (size, size), 128).save(buf, format=fmt)
    return buf.getvalue()


NOT_IMAGE = "not an image file: expected JPEG, PNG, BMP, GIF, TIFF or WebP"
B64 = "/v1/mnist/json"

CASES = [
    # --- multipart, on MNIST's `/`
    ("multipart truncated (no closing boundary, part cut)",
     http("POST", "/", part("images", image("PNG"))[:60], [("Content-Type", f"multipart/form-data; boundary={BOUNDARY}")]),
     400, "missing file field 'images'"),
    ("multipart without a boundary", multipart(part("images", image("PNG"), "d.png"), boundary=False), 400,
     "missing file field 'images'"),
    ("multipart with 3000 parts", multipart(*[part(f"f{i}", b"x") for i in range(3000)]), 413,
     "too many parts in the multipart body (at most 1000)"),
    ("multipart zero-byte file", multipart(part("images", b"", "d.png")), 400, "file field 'images' is empty"),
    ("multipart text field where the file belongs", multipart(part("images", b"seven")), 400,
     "field 'images' must be a file upload, not a text field"),
    ("multipart the same file field twice",
     multipart(part("images", image("PNG"), "a.png"), part("images", image("PNG"), "b.png")), 400,
     "field 'images' is given 2 times; send it once"),
    ("multipart the field as a file and as text", multipart(part("images", image("PNG"), "a.png"), part("images", b"x")),
     400, "field 'images' is given 2 times; send it once"),
    ("multipart wrong field name", multipart(part("image", image("PNG"), "a.png")), 400,
     "missing file field 'images' (got image)"),
    # --- images
    ("image truncated PNG", multipart(part("images", image("PNG", 64)[:70], "d.png")), 400, "not a decodable image"),
    ("image truncated JPEG", multipart(part("images", image("JPEG", 64)[:200], "d.jpg")), 400, "not a decodable image"),
    ("image decompression bomb (PNG declaring 30000x30000)", multipart(part("images", bomb_png(), "bomb.png")), 400,
     "not a decodable image"),
    # PIL cannot even identify these (its GIF and TIFF readers give up on the garbage): "not an image file".
    ("image GIF header then garbage", multipart(part("images", b"GIF89a" + b"\xff" * 200, "d.gif")), 400, NOT_IMAGE),
    ("image TIFF header then garbage", multipart(part("images", b"II*\x00" + b"\x13" * 200, "d.tif")), 400, NOT_IMAGE),
    ("image plain text", multipart(part("images", b"hello, world\n" * 20, "notes.txt")), 400, NOT_IMAGE),
    ("image base64 bomb on the JSON route", post_json(B64, {"images": base64.b64encode(bomb_png()).decode()}), 400,
     "not a decodable image"),
    # --- JSON
    ("json invalid", post_json("/embeddings", b'{"texts": ["a",'), 400, "malformed JSON body"),
    ("json nested 100000 deep", post_json("/embeddings", b'{"texts": ' + b"[" * 100000 + b"]" * 100000 + b"}"), 400,
     "malformed JSON body: nested too deep"),
    ("json NaN", post_json("/embeddings", b'{"texts": NaN}'), 400, "malformed JSON body: NaN is not a JSON number"),
    ("json Infinity", post_json(B64, b'{"images": Infinity}'), 400, "malformed JSON body: Infinity is not a JSON number"),
    ("json numbers where strings belong", post_json("/embeddings", {"texts": [1, 2]}), 400,
     "field 'texts' must hold strings, got int"),
    ("json a string where the base64 image belongs is a number", post_json(B64, {"images": 7}), 400,
     "field 'images' must hold strings, got int"),
    ("json wrong shape (texts nested)", post_json("/embeddings", {"texts": [["a", "b"]]}), 400, "field 'texts'"),
    ("json over the batch limit (65 texts)", post_json("/embeddings", {"texts": ["a"] * 65}), 400, "field 'texts'"),
    ("json empty list", post_json("/embeddings", {"texts": []}), 400, "field 'texts'"),
    ("json non-UTF-8 bytes", post_json("/embeddings", b'{"texts": ["\xff\xfe\xfd"]}'), 400, "malformed JSON body"),
    ("json a top-level array", post_json("/embeddings", [1, 2]), 400, "JSON body must be an object of named fields"),
    ("json empty body", post_json("/embeddings", b""), 400, "empty request body: expected a JSON object"),
    ("json invalid base64", post_json(B64, {"images": "%%% not base64 %%%"}), 400, "field 'images' is not valid base64"),
    ("json wrong content type (text/plain)", post_json("/embeddings", {"texts": ["a"]}, "text/plain"), 415,
     "expected Content-Type application/json, got text/plain"),
    ("json sent to the multipart route", post_json("/", {"images": "aGk="}), 415,
     "expected Content-Type multipart/form-data, got application/json"),
    ("multipart sent to a JSON route", multipart(part("texts", b"a"), path="/embeddings"), 415,
     "expected Content-Type application/json, got multipart/form-data"),
    # --- size: refused from the head, before the body is read (the body is never sent)
    ("size multipart over the limit",
     http("POST", "/", b"", [("Content-Type", f"multipart/form-data; boundary={BOUNDARY}"),
                             ("Content-Length", str(LIMIT_MB * 1024 * 1024 + 1))]), 413, f"request body over {LIMIT_MB} MB"),
    ("size JSON over the limit",
     http("POST", "/embeddings", b"", [("Content-Type", "application/json"),
                                       ("Content-Length", str(50 * 1024 * 1024))]), 413, f"request body over {LIMIT_MB} MB"),
    ("size v2 infer over the limit",
     http("POST", "/v2/models/mnist/infer", b"", [("Content-Type", "application/json"),
                                                  ("Content-Length", str(50 * 1024 * 1024))]), 413,
     f"request body over {LIMIT_MB} MB"),
    # --- HTTP
    ("http wrong method", http("GET", "/"), 405, "method GET is not allowed on /"),
    ("http wrong method on /embeddings", http("PUT", "/embeddings", b"{}"), 405, "method PUT is not allowed on /embeddings"),
    ("http unknown path", http("POST", "/predict", b"{}"), 404, "no route for /predict"),
    ("http path traversal", http("GET", "/../../etc/passwd"), 404, "no route for"),
    ("http encoded path traversal", http("GET", "/%2e%2e/%2e%2e/etc/passwd"), 404, "no route for"),
    ("http v2 admin endpoint", http("POST", "/v2/repository/models/mnist/unload"), 403,
     "/v2/repository/models/mnist/unload: the model repository API"),
    ("http header over the limit", http("GET", "/health", headers=[("X-Big", "a" * 9000)]), 431,
     "Error parsing headers"),
    ("http too many headers", http("GET", "/health", headers=[(f"X-H{i}", "1") for i in range(150)]), 431,
     "Error parsing headers"),
    ("http request line over the limit", http("GET", "/" + "a" * 9000), 414, ""),
    ("http malformed request line", b"GARBAGE\r\n\r\n", 400, ""),
    ("http bad HTTP version", http("GET", "/health", version="HTTP/9.9"), 400, "Invalid HTTP Version"),
    ("http two Content-Length headers",
     http("POST", "/embeddings", b'{"texts": ["a"]}', [("Content-Type", "application/json"), ("Content-Length", "16"),
                                                       ("Content-Length", "3")]), 400, "Invalid HTTP Header"),
    ("http bad method token", b"G(T / HTTP/1.1\r\nHost: x\r\n\r\n", 400, ""),
]
