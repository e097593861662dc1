"""Which model serves each api (serving/binding.py) and config.json from a model repository (serving/generate.py):
pure functions, no Triton needed."""
import json
import os

import pytest

from conftest import ROOT
from serving import binding, generate, modelarts
from serving.errors import ConfigError
from serving.repository import ModelInfo


def info(name, inputs, outputs):
    return ModelInfo(name, "", {i: ("BYTES", [-1, 1]) for i in inputs}, {o: ("FP32", [-1, 4]) for o in outputs},
                     True, 8)


MODELS = {
    "mnist": info("mnist", ["images"], ["mnist_result"]),
    "text_embedding": info("text_embedding", ["texts"], ["embeddings"]),
    "resnet_a": info("resnet_a", ["INPUT0"], ["OUTPUT0"]),
    "resnet_b": info("resnet_b", ["INPUT0"], ["OUTPUT0"]),
}


def routes(*apis):
    doc = {"model_algorithm": "x", "model_type": "Image", "apis": [
        {"url": url, "method": "post", **extra,
         "request": {"Content-type": "application/json",
                     "data": {"type": "object", "properties": {i: {"type": "string"} for i in ins}}},
         "response": {"Content-type": "application/json",
                      "data": {"type": "object", "properties": {o: {"type": "array"} for o in outs}}}}
        for url, ins, outs, extra in apis]}
    return modelarts.parse(doc).apis


def bound(*apis, overrides=None):
    return [(r.url, r.model, r.version) for r in binding.bind(routes(*apis), MODELS, overrides)]


def test_rule_2_the_last_path_segment_names_the_model():
    # Its tensors would also match text_embedding: the name decides first.
    assert bound(("/v1/mnist", ["images"], ["mnist_result"], {})) == [("/v1/mnist", "mnist", "")]


def test_rule_3_the_one_model_whose_tensors_match():
    assert bound(("/", ["images"], ["mnist_result"], {}), ("/embeddings", ["texts"], ["embeddings"], {})) == [
        ("/", "mnist", ""), ("/embeddings", "text_embedding", "")]


def test_two_models_with_the_same_tensors_stop_start_up_naming_them():
    with pytest.raises(ConfigError) as err:
        bound(("/classify", ["INPUT0"], ["OUTPUT0"], {}))
    assert str(err.value) == (
        "POST /classify: cannot tell which model serves it: several models have inputs ['INPUT0'] and outputs "
        "including ['OUTPUT0']: ['resnet_a', 'resnet_b']. Bind it with MODEL_BINDINGS='/classify=<model>'")


def test_no_candidate_stops_start_up_listing_the_models():
    with pytest.raises(ConfigError, match=r"no model is named 'predict' or has inputs \['x'\] .* Triton serves "
                                          r"\['mnist', 'resnet_a', 'resnet_b', 'text_embedding'\]"):
        bound(("/predict", ["x"], ["y"], {}))


def test_rule_1_model_bindings_decide_the_ambiguous_case():
    overrides = binding.parse_overrides("/classify=resnet_b:2, /=mnist")
    assert overrides == {"/classify": ("resnet_b", "2"), "/": ("mnist", "")}
    assert bound(("/classify", ["INPUT0"], ["OUTPUT0"], {}), overrides={"/classify": ("resnet_b", "2")}) == [
        ("/classify", "resnet_b", "2")]


def test_rule_1_x_triton_of_older_configs_is_an_explicit_binding():
    assert bound(("/classify", ["INPUT0"], ["OUTPUT0"], {"x-triton": {"model": "resnet_a"}})) == [
        ("/classify", "resnet_a", "")]


@pytest.mark.parametrize("text,message", [
    ("classify=resnet_a", "is not '/url=model'"),
    ("/classify", "is not '/url=model'"),
    ("/classify=", "is not '/url=model'"),
])
def test_bad_model_bindings_are_refused(text, message):
    with pytest.raises(ConfigError, match=message):
        binding.parse_overrides(text)


def test_a_binding_to_an_absent_model_or_url_is_refused():
    with pytest.raises(ConfigError, match=r"model 'resnet_c' is not in Triton's repository"):
        bound(("/classify", ["INPUT0"], ["OUTPUT0"], {}), overrides={"/classify": ("resnet_c", "")})
    with pytest.raises(ConfigError, match=r"URLs that config.json does not serve: \['/nope'\]"):
        bound(("/", ["images"], ["mnist_result"], {}), overrides={"/nope": ("mnist", "")})


def write_model(repo, name, pbtxt):
    os.makedirs(repo / name, exist_ok=True)
    (repo / name / "config.pbtxt").write_text(pbtxt)


def test_generator_on_a_file_input_model(tmp_path):
    write_model(tmp_path, "ocr", '''
        name: "ocr" backend: "python" max_batch_size: 8
        input [ { name: "scan" data_type: TYPE_STRING dims: [ 1 ] } ]
        output [ { name: "text" data_type: TYPE_STRING dims: [ 1 ] }, { name: "score" data_type: TYPE_FP32 dims: [ 1 ] } ]
        parameters: { key: "modelarts_file_inputs" value: { string_value: "scan" } }''')
    (api,) = generate.generate(str(tmp_path))["apis"]
    assert api["url"] == "/ocr"
    assert api["request"] == {"Content-type": "multipart/form-data", "data": {
        "type": "object", "properties": {"scan": {"type": "file"}}, "required": ["scan"]}}
    assert api["response"]["data"]["properties"] == {"text": {"type": "string"}, "score": {"type": "number"}}


def test_generator_on_a_numeric_model(tmp_path):
    write_model(tmp_path, "tabular", '''
        name: "tabular" backend: "python" max_batch_size: 0
        input [ { name: "features" data_type: TYPE_FP32 dims: [ 1, 12 ] }, { name: "hour" data_type: TYPE_INT32 dims: [ 1 ] } ]
        output [ { name: "risk" data_type: TYPE_FP64 dims: [ 1, 3 ] } ]
        parameters: { key: "modelarts_url" value: { string_value: "/v1/risk" } }''')
    (api,) = generate.generate(str(tmp_path), "predict_analysis")["apis"]
    assert api["url"] == "/v1/risk"
    assert api["request"]["Content-type"] == "application/json"
    assert api["request"]["data"]["properties"] == {
        "features": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
        "hour": {"type": "integer"}}
    assert api["response"]["data"]["properties"] == {
        "risk": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}}}
    # What it writes, the proxy reads.
    assert [r.url for r in modelarts.parse(generate.generate(str(tmp_path))).apis] == ["/v1/risk"]


def test_generator_refuses_two_models_on_one_url(tmp_path):
    for name in ("a", "b"):
        write_model(tmp_path, name, f'''name: "{name}" backend: "python"
            input [ {{ name: "x" data_type: TYPE_FP32 dims: [ 1 ] }} ] output [ {{ name: "y" data_type: TYPE_FP32 dims: [ 1 ] }} ]
            parameters: {{ key: "modelarts_url" value: {{ string_value: "/" }} }}''')
    with pytest.raises(SystemExit, match="two models share a URL"):
        generate.generate(str(tmp_path))


def test_generator_refuses_the_proxys_own_urls(tmp_path):
    write_model(tmp_path, "metrics", '''name: "metrics" backend: "python"
        input [ { name: "x" data_type: TYPE_FP32 dims: [ 1 ] } ] output [ { name: "y" data_type: TYPE_FP32 dims: [ 1 ] } ]''')
    with pytest.raises(SystemExit, match=r"\['/metrics'\]: the proxy serves /metrics, /openapi.json and /v2/"):
        generate.generate(str(tmp_path))


def test_shipped_config_json_matches_the_generator_byte_for_byte():
    with open(os.path.join(ROOT, "config.json")) as f:
        text = f.read()
    assert text == json.dumps(generate.generate(os.path.join(ROOT, "model_repository")), indent=2) + "\n"
