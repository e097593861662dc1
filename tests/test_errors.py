"""Bad input gets a clear 4xx JSON error, and the service stays healthy."""
import io

import pytest
import requests
from PIL import Image

from conftest import body, encode

NOT_IMAGE = "not an image file: expected JPEG, PNG, BMP, GIF, TIFF or WebP"


def _truncated_jpeg():
    buf = io.BytesIO()
    Image.new("L", (64, 64), 255).save(buf, format="JPEG")
    return buf.getvalue()[:200]


CASES = [
    # (name, request kwargs, status, exact JSON body)
    ("no body", dict(method="POST"), 415, {"error": "expected Content-Type multipart/form-data, got no Content-Type"}),
    ("JSON where multipart is expected",
     dict(method="POST", json={"images": "aGVsbG8="}), 415,
     {"error": "expected Content-Type multipart/form-data, got application/json"}),
    ("wrong field name", dict(method="POST", files={"image": ("d.png", b"x")}), 400,
     {"error": "missing file field 'images' (got image)"}),
    ("no file, only a text field", dict(method="POST", data={"images": "seven"},
                                        files={"other": ("a.txt", b"x")}), 400,
     {"error": "field 'images' must be a file upload, not a text field"}),
    ("empty file", dict(method="POST", files={"images": ("d.png", b"")}), 400,
     {"error": "file field 'images' is empty"}),
    ("a file that is not an image", dict(method="POST", files={"images": ("notes.txt", b"hello, world\n" * 10)}),
     400, {"error": NOT_IMAGE}),
    ("a truncated JPEG", dict(method="POST", files={"images": ("d.jpg", _truncated_jpeg())}), 400, None),
    ("multipart without a boundary", dict(method="POST", data=b"garbage",
                                          headers={"Content-Type": "multipart/form-data"}), 400,
     {"error": "missing file field 'images'"}),
    ("a body over the limit", dict(method="POST", files={"images": ("big.png", b"\0" * (2 * 1024 * 1024 + 1))}),
     413, {"error": "request body over 2 MB"}),
    ("unknown path", dict(method="POST", path="/predict", files={"images": ("d.png", b"x")}), 404,
     {"error": "no route for /predict"}),
    ("wrong method", dict(method="GET"), 405, {"error": "method GET is not allowed on /"}),
    ("wrong method on health", dict(method="POST", path="/health"), 405,
     {"error": "method POST is not allowed on /health"}),
]


@pytest.fixture(scope="module")
def small_limit_stack(new_stack_module):
    return new_stack_module(MAX_BODY_MB="2")


@pytest.mark.parametrize("name,kwargs,status,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_4xx_json(small_limit_stack, name, kwargs, status, expected):
    kwargs = dict(kwargs)
    method, path = kwargs.pop("method"), kwargs.pop("path", "/")
    resp = requests.request(method, small_limit_stack.url + path, timeout=30, **kwargs)
    assert resp.status_code == status, resp.text
    got = body(resp)
    if expected is None:
        assert set(got) == {"error"} and got["error"].startswith("not a decodable image"), got
    else:
        assert got == expected


def test_still_healthy_and_correct_after_bad_input(small_limit_stack, held_out):
    for _, kwargs, _, _ in CASES:
        kwargs = dict(kwargs)
        requests.request(kwargs.pop("method"), small_limit_stack.url + kwargs.pop("path", "/"), timeout=30, **kwargs)
    resp = requests.get(small_limit_stack.url + "/health", timeout=5)
    assert (resp.status_code, body(resp)) == (200, {"health": "true"})
    x, y = held_out
    resp = requests.post(small_limit_stack.url + "/", files={"images": ("d.png", encode(x[700]))}, timeout=30)
    assert (resp.status_code, body(resp)) == (200, {"mnist_result": int(y[700])})
    assert "Traceback" not in small_limit_stack.log()
