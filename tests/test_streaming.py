"""A decoupled model (tests/models/tokens, the vLLM-style interface) on a config.json url, against the real Triton:
Server-Sent Events in order with their final event, the joined JSON answer, failures and deadlines mid-stream,
heartbeats, a client that hangs up (the model sees the cancellation), and a stop with streams in flight."""
import json
import os
import shutil
import socket
import sys
import threading
import time

import pytest
import requests

from conftest import ROOT, Stack, body, generated_config, wait_for

TOKENS = os.path.join(ROOT, "tests", "models", "tokens")
SSE = {"Accept": "text/event-stream"}


def make_repository(root):
    repo = root / "repo"
    shutil.copytree(TOKENS, repo / "tokens", ignore=shutil.ignore_patterns("__pycache__"))
    generated_config(repo)
    return repo


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    d = tmp_path_factory.mktemp("streaming")
    s = Stack(d, MODEL_REPOSITORY=make_repository(d), REQUEST_TIMEOUT=4, STREAM_HEARTBEAT=0.3).start()
    yield s
    s.terminate()


def ask(text="hi", **params):
    return {"text_input": text, "sampling_parameters": json.dumps(params)}


def events(resp):
    """[(event name, data)] of an SSE answer, comments as ("comment", text)."""
    out, name, data = [], "message", None
    for line in resp.iter_lines(decode_unicode=True):
        if line.startswith(":"):
            out.append(("comment", line[1:].strip()))
        elif line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            data = json.loads(line[6:])
        elif line == "" and data is not None:
            out.append((name, data))
            name, data = "message", None
    return out


def test_tokens_arrive_in_order_with_the_final_event(stack):
    resp = requests.post(stack.url + "/tokens", json=ask(max_tokens=6), headers=SSE, stream=True, timeout=30)
    assert resp.status_code == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
    got = events(resp)
    assert got == [("message", {"text_output": f" tok{i}"}) for i in range(6)] + [("end", {"responses": 6})]


def test_stream_true_in_the_body_asks_for_a_stream_too(stack):
    resp = requests.post(stack.url + "/tokens", json=dict(ask(max_tokens=3), stream=True), stream=True, timeout=30)
    assert events(resp) == [("message", {"text_output": f" tok{i}"}) for i in range(3)] + [("end", {"responses": 3})]


def test_without_a_stream_the_answer_is_the_stream_joined(stack):
    streamed = events(requests.post(stack.url + "/tokens", json=ask(max_tokens=5), headers=SSE, stream=True,
                                    timeout=30))
    joined = "".join(data["text_output"] for name, data in streamed if name == "message")
    resp = requests.post(stack.url + "/tokens", json=ask(max_tokens=5), timeout=30)   # the model's stream = false
    assert (resp.status_code, body(resp)) == (200, {"text_output": joined})
    # A model asked to stream (its own "stream" input) by a client that wants one answer: the responses joined.
    resp = requests.post(stack.url + "/tokens", json=dict(ask(max_tokens=5), stream=False), timeout=30)
    assert body(resp) == {"text_output": joined}
    resp = requests.post(stack.url + "/tokens", json={**ask(max_tokens=4), "stream": True}, timeout=30,
                         headers={"Accept": "application/json"})
    assert resp.headers["Content-Type"].startswith("text/event-stream")   # "stream": true wins


def test_a_failure_at_response_k_gives_k_events_then_an_error_event(stack):
    resp = requests.post(stack.url + "/tokens", json=ask(max_tokens=8, fail_at=3), headers=SSE, stream=True,
                         timeout=30)
    got = events(resp)
    assert got[:3] == [("message", {"text_output": f" tok{i}"}) for i in range(3)]
    assert got[3:] == [("error", {"error": "inference failed: failed at response 3"})]


def test_a_failure_before_the_first_response_is_a_json_error(stack):
    resp = requests.post(stack.url + "/tokens", json=ask(max_tokens=8, fail_at=0), headers=SSE, timeout=30)
    assert (resp.status_code, body(resp)) == (500, {"error": "inference failed: failed at response 0"})


def test_a_deadline_mid_stream_ends_with_an_error_event_and_before_the_first_byte_is_504(stack):
    resp = requests.post(stack.url + "/tokens", json=ask(max_tokens=20, delay=0.5), headers=SSE, stream=True,
                         timeout=30)
    got = [e for e in events(resp) if e[0] != "comment"]
    assert 5 <= len(got) - 1 <= 8 and got[-1] == ("error", {"error": "inference did not finish within 4 s"}), got
    resp = requests.post(stack.url + "/tokens", json=ask(max_tokens=2, delay=5), headers=SSE, timeout=30)
    assert (resp.status_code, body(resp)) == (504, {"error": "inference did not finish within 4 s"})


def rss_kb(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return total


def test_a_slow_reader_holds_the_model_not_the_worker_and_others_are_unaffected(stack):
    """A client that reads a heavy stream (8 KB events, 64 MB in all, as fast as the model makes them) one small
    read a second: the worker takes only what it can pass on (the stream's window goes back to Triton as the
    client reads), so the workers' memory grows by far less than the stream; the stream ends at its deadline with
    an error event; another client meanwhile gets its answer at once."""
    workers = [p for p in stack.pids("gunicorn") if p != min(stack.pids("gunicorn"))]
    before = rss_kb(workers)
    payload = json.dumps(ask(max_tokens=8000, pad=8192)).encode()
    with socket.create_connection(("127.0.0.1", stack.port)) as slow:
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.sendall(b"POST /tokens HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n"
                     b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(payload) + payload)
        grown, others = [], []
        for _ in range(6):   # past the 4 s deadline
            slow.recv(64)
            grown.append(rss_kb(workers) - before)
            started = time.monotonic()
            r = requests.post(stack.url + "/tokens", json=ask(max_tokens=3), timeout=10)
            others.append((r.status_code, time.monotonic() - started))
            time.sleep(1)
        slow.settimeout(30)
        rest = b""
        while not rest.endswith(b"0\r\n\r\n"):   # the chunked answer's end
            chunk = slow.recv(1 << 20)
            if not chunk:
                break
            rest += chunk
    # the whole stream would be 64 MB; the worker holds at most about one stream window (16 MiB) and socket buffers
    assert max(grown) < 40_000, grown
    assert all(status == 200 and took < 2 for status, took in others), others
    tail = rest[-400:].decode(errors="replace")
    assert "event: error" in tail and "inference did not finish within 4 s" in tail, tail
    assert len(rest) < 48 << 20, len(rest)   # cut at the deadline, not the whole 64 MB


def test_a_comment_line_is_the_heartbeat_while_no_token_comes(stack):
    resp = requests.post(stack.url + "/tokens", json=ask(max_tokens=3, delay=1.0), headers=SSE, stream=True,
                         timeout=30)
    got = events(resp)
    assert [e for e in got if e[0] != "comment"] == [("message", {"text_output": f" tok{i}"}) for i in range(3)] + [
        ("end", {"responses": 3})]
    beats = [i for i, e in enumerate(got) if e == ("comment", "keep-alive")]
    assert len(beats) >= 4 and beats[-1] > 1   # between tokens, not only before the first


def test_a_client_that_hangs_up_cancels_the_request_in_the_model(stack):
    before = len(stack.log())
    sock = socket.create_connection(("127.0.0.1", stack.port), timeout=10)
    payload = json.dumps(ask("bye", max_tokens=40, delay=0.2)).encode()
    sock.sendall(b"POST /tokens HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\nContent-Type: application/json\r\n"
                 b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload)
    seen = b""
    while seen.count(b"data: ") < 3:
        seen += sock.recv(4096)
    sock.close()   # after 3 tokens
    wait_for(lambda: "tokens: request cancelled after" in stack.log()[before:], 15, "the model to see the cancellation")
    line = next(x for x in stack.log()[before:].splitlines() if "tokens: request cancelled after" in x)
    cancelled_at = int(line.split("cancelled after ")[1].split()[0])
    assert 3 <= cancelled_at <= 6, line   # the proxy cancels at once; Triton tells the model within a token or two
    assert "POST /tokens: the client hung up after 3 responses; cancelled" in stack.log()[before:]
    # Nothing is left in flight in the proxy.
    wait_for(lambda: "proxy_inflight_requests 0.0" in requests.get(stack.url + "/metrics", timeout=5).text, 10,
             "no request in flight")


def test_openapi_describes_the_stream(stack):
    spec = requests.get(stack.url + "/openapi.json", timeout=5).json()
    post = spec["paths"]["/tokens"]["post"]
    assert "text/event-stream" in post["responses"]["200"]["content"]
    assert "Server-Sent Events" in post["description"]


def test_sigterm_with_16_streams_in_flight_ends_each_with_a_final_event(tmp_path):
    stack = Stack(tmp_path, MODEL_REPOSITORY=make_repository(tmp_path), GRACE_PERIOD=1, GRACEFUL_TIMEOUT=9,
                  REQUEST_TIMEOUT=30).start()
    finals = []

    def one(i):
        resp = requests.post(stack.url + "/tokens", json=ask(str(i), max_tokens=30, delay=0.25), headers=SSE,
                             stream=True, timeout=60)
        got = [e for e in events(resp) if e[0] != "comment"]
        finals.append(got[-1][0] if got else "none")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    assert stack.terminate(timeout=120) == 0
    for t in threads:
        t.join(30)
    # Each stream lasts at most GRACEFUL_TIMEOUT - 5 = 4 s: it ends with its error event before the drain runs out.
    assert len(finals) == 16 and set(finals) <= {"end", "error"}, finals
    log = stack.log()
    marks = ["stop requested", "grace period over", "gunicorn stopped (exit 0)", "stopping Triton",
             "Triton stopped (exit 0)", "shutdown complete"]
    positions = [log.find(m) for m in marks]
    assert all(p >= 0 for p in positions) and positions == sorted(positions), dict(zip(marks, positions))


# The OpenAI-compatible routes, with the openai client (make config adds them for a repository with one LLM model).

@pytest.fixture(scope="module")
def client(stack):
    from openai import OpenAI
    return OpenAI(base_url=stack.url + "/v1", api_key="unused", max_retries=0, timeout=30)


def test_make_config_adds_the_openai_routes_for_an_llm_model(stack):
    doc = json.loads((pathlib_repo(stack) / "config.json").read_text())
    assert [a["url"] for a in doc["apis"]] == ["/tokens", "/v1/chat/completions", "/v1/completions", "/v1/models"]
    assert "route POST /v1/chat/completions: OpenAI chat for model 'tokens' (chat template: the model's tokenizer)" \
        in stack.log()


def pathlib_repo(stack):
    import pathlib
    return pathlib.Path(stack.env["MODEL_REPOSITORY"])


def test_chat_completions_with_the_openai_client(client):
    answer = client.chat.completions.create(model="tokens", messages=[{"role": "user", "content": "hello"}],
                                            max_tokens=4)
    assert answer.object == "chat.completion" and answer.model == "tokens" and answer.id.startswith("chatcmpl-")
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content == " tok0 tok1 tok2 tok3"
    assert answer.choices[0].finish_reason == "length"   # max_tokens responses
    assert answer.usage is None or answer.usage.completion_tokens == 4


def test_chat_completions_streamed_with_the_openai_client(client):
    chunks = list(client.chat.completions.create(model="tokens", messages=[{"role": "user", "content": "hi"}],
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "".join(f" tok{i}" for i in range(8))   # the model's default: 8 tokens
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 8
    assert all(c.object == "chat.completion.chunk" for c in chunks)


def test_completions_streamed_and_not(client):
    answer = client.completions.create(model="tokens", prompt="once", max_tokens=3)
    assert (answer.object, answer.choices[0].text, answer.choices[0].finish_reason) == (
        "text_completion", " tok0 tok1 tok2", "length")
    text = "".join(c.choices[0].text for c in client.completions.create(model="tokens", prompt="once", max_tokens=3,
                                                                          stream=True) if c.choices)
    assert text == " tok0 tok1 tok2"


def test_openai_errors_are_openai_shaped(stack, client):
    import openai
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert err.value.body["code"] == "model_not_found"
    resp = requests.post(stack.url + "/v1/chat/completions", json={"model": "tokens", "messages": []}, timeout=10)
    assert resp.status_code == 400
    assert body(resp) == {"error": {"message": "'messages' must be a non-empty list of {role, content} objects",
                                    "type": "invalid_request_error", "param": "messages", "code": None}}
    resp = requests.post(stack.url + "/v1/completions", data="{", headers={"Content-Type": "application/json"},
                         timeout=10)
    assert resp.status_code == 400 and body(resp)["error"]["type"] == "invalid_request_error"


def test_the_chat_template_comes_from_the_model_s_tokenizer_config():
    sys.path.insert(0, ROOT)
    from serving.handlers.openai import Template
    rendered = Template(TOKENS).render([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}])
    assert rendered == "<s><|system|>be brief</s><|user|>hi</s><|assistant|>"
    plain = Template(None).render([{"role": "user", "content": "hi"}])
    assert plain == "user: hi\nassistant:"


def test_streams_take_the_model_s_slots(tmp_path):
    """STREAMS_PER_MODEL holds for decoupled models as INFLIGHT_PER_MODEL does for unary calls: a stream holds its
    slot until it ends, and the next one waits for it (within its deadline) instead of piling onto Triton."""
    stack = Stack(tmp_path, MODEL_REPOSITORY=make_repository(tmp_path), WORKERS=1, STREAMS_PER_MODEL=1,
                  REQUEST_TIMEOUT=10).start()
    try:
        first = requests.post(stack.url + "/tokens", json=ask(max_tokens=5, delay=0.3), headers=SSE, stream=True,
                              timeout=30)
        started = time.monotonic()
        second = requests.post(stack.url + "/tokens", json=ask(max_tokens=1), headers=SSE, stream=True, timeout=30)
        waited = time.monotonic() - started   # the headers come with its first token
        assert events(second) == [("message", {"text_output": " tok0"}), ("end", {"responses": 1})]
        assert [e[0] for e in events(first)] == ["message"] * 5 + ["end"]
        assert 1.0 < waited < 3, waited   # it waited for the first stream's slot (five tokens 0.3 s apart)
    finally:
        stack.terminate()

