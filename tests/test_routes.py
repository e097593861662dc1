"""config.json with several apis: each URL its own route, a JSON route beside the multipart one, and a config
that does not match its model refused at start-up."""
import base64
import os

import pytest
import requests

from conftest import ROOT, body, encode

DATA = os.path.join(ROOT, "tests", "data")


@pytest.fixture(scope="module")
def multi(new_stack_module):
    return new_stack_module(MODELARTS_CONFIG=os.path.join(DATA, "config.multi.json"))


def test_json_route_takes_base64_images(multi, held_out):
    x, y = held_out
    for i in (5, 150, 250, 640, 930):
        resp = requests.post(multi.url + "/v1/mnist/json", timeout=30,
                             json={"images": base64.b64encode(encode(x[i], "JPEG")).decode()})
        # The schema says "array" for this route's output, so the one digit comes as a list.
        assert (resp.status_code, body(resp)) == (200, {"mnist_result": [int(y[i])]}), i


def test_multipart_route_is_served_beside_it(multi, held_out):
    x, y = held_out
    resp = requests.post(multi.url + "/", files={"images": ("d.png", encode(x[5]))}, timeout=30)
    assert (resp.status_code, body(resp)) == (200, {"mnist_result": int(y[5])})


@pytest.mark.parametrize("kwargs,status,expected", [
    (dict(json={"images": "%%% not base64 %%%"}), 400, {"error": "field 'images' is not valid base64"}),
    (dict(json={"images": ""}), 400, {"error": "field 'images' is empty"}),
    (dict(json={"images": 7}), 400, {"error": "field 'images' must hold strings, got int"}),
    (dict(json={"image": "aGk="}), 400, {"error": "missing field 'images'"}),
    (dict(json=[1, 2]), 400, {"error": "JSON body must be an object of named fields"}),
    (dict(data=b"{oops", headers={"Content-Type": "application/json"}), 400, None),
    (dict(data=b"", headers={"Content-Type": "application/json"}), 400,
     {"error": "empty request body: expected a JSON object"}),
    (dict(json={"images": base64.b64encode(b"plain text").decode()}), 400,
     {"error": "not an image file: expected JPEG, PNG, BMP, GIF, TIFF or WebP"}),
    (dict(files={"images": ("d.png", b"x")}), 415, None),
])
def test_json_route_errors(multi, kwargs, status, expected):
    resp = requests.post(multi.url + "/v1/mnist/json", timeout=30, **kwargs)
    got = body(resp)
    assert resp.status_code == status, got
    if expected is not None:
        assert got == expected
    else:
        assert list(got) == ["error"]


def test_a_config_that_does_not_match_its_model_is_refused_at_start(new_stack):
    with pytest.raises(RuntimeError) as err:
        new_stack(MODELARTS_CONFIG=os.path.join(DATA, "config.unbound.json"))
    message = str(err.value)
    assert "run.sh exited 1" in message
    assert "response property 'digit' is not a model output ['mnist_result']" in message
    assert "gunicorn exited on its own" in message


def test_an_unreadable_config_stops_run_sh_before_gunicorn(new_stack, tmp_path):
    broken = tmp_path / "config.json"
    broken.write_text('{"model_type": "Image", "apis": ')
    with pytest.raises(RuntimeError) as err:
        new_stack(MODELARTS_CONFIG=str(broken))
    message = str(err.value)
    assert "run.sh exited 1" in message and "is not valid JSON" in message
    assert "starting gunicorn" not in message
