"""HTTPS on the proxy's port when config.json's apis say https (serving/tls.py), with real TLS clients (Python's ssl
through requests, curl, and raw ssl sockets): every kind of route over TLS, plain HTTP refused, TLS 1.0 and 1.1
refused, the certificate checked at start-up, a self-signed pair when none is given, and a stop under TLS load."""
import datetime
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time

import pytest
import requests

from conftest import ROOT, Stack, body, generated_config, wait_for
from serving import modelarts, tls
from serving.errors import ConfigError

SEVEN = os.path.join(ROOT, "tests", "data", "seven.jpg")


def make_repository(root):
    repo = root / "repo"
    repo.mkdir()
    (repo / "mnist").symlink_to(os.path.join(ROOT, "model_repository", "mnist"))
    shutil.copytree(os.path.join(ROOT, "tests", "models", "named"), repo / "named",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(os.path.join(ROOT, "tests", "models", "tokens"), repo / "tokens",
                    ignore=shutil.ignore_patterns("__pycache__"))
    generated_config(repo, "--protocol", "https")
    return repo


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return make_repository(tmp_path_factory.mktemp("tls-repo"))


@pytest.fixture(scope="module")
def tls_stack(tmp_path_factory, repo):
    d = tmp_path_factory.mktemp("tls")
    cert, key = tls.self_signed(str(d / "pair"))   # the user's own pair, mounted
    stack = Stack(d, scheme="https", verify=cert, MODEL_REPOSITORY=repo, TLS_CERT=cert, TLS_KEY=key).start()
    stack.cert = cert
    yield stack
    stack.terminate()


def test_make_config_writes_https_on_every_api_and_leaves_health_http(repo):
    doc = json.loads((repo / "config.json").read_text())
    assert {a["protocol"] for a in doc["apis"]} == {"https"}
    assert doc["health"]["protocol"] == "http"
    assert modelarts.parse(doc).protocol == "https"


def test_mixed_protocols_are_refused_with_the_reason(repo):
    doc = json.loads((repo / "config.json").read_text())
    doc["apis"][1]["protocol"] = "http"
    with pytest.raises(ConfigError, match=r"apis\[1\] says http and apis\[0\] says https; the container serves one "
                                          r"protocol on its port"):
        modelarts.parse(doc)


def test_every_route_over_tls(tls_stack):
    url, verify = tls_stack.url, tls_stack.cert
    with open(SEVEN, "rb") as f:
        resp = requests.post(url + "/", files={"images": ("seven.jpg", f.read())}, verify=verify, timeout=30)
    assert (resp.status_code, body(resp)) == (200, {"mnist_result": 7})
    assert requests.get(url + "/health", verify=verify, timeout=10).json() == {"health": "true"}
    assert requests.post(url + "/named", json={"sleep": 0}, verify=verify, timeout=10).json() == {"model": "named"}
    sse = requests.post(url + "/tokens", json={"text_input": "hi", "sampling_parameters": '{"max_tokens": 3}'},
                        headers={"Accept": "text/event-stream"}, verify=verify, timeout=30)
    events = [json.loads(line[6:]) for line in sse.text.splitlines() if line.startswith("data: ")]
    assert [e.get("text_output") for e in events] == [" tok0", " tok1", " tok2", None] and events[-1] == {"responses": 3}
    chat = requests.post(url + "/v1/chat/completions", verify=verify, timeout=30,
                         json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert chat.json()["choices"][0]["message"]["content"] == " tok0 tok1"
    assert requests.get(url + "/v2/models/mnist", verify=verify, timeout=10).json()["name"] == "mnist"
    assert "proxy_requests_total" in requests.get(url + "/metrics", verify=verify, timeout=10).text
    assert requests.get(url + "/openapi.json", verify=verify, timeout=10).json()["openapi"].startswith("3.1")


def test_curl_over_tls_with_the_certificate(tls_stack):
    out = subprocess.run(["curl", "-sS", "--cacert", tls_stack.cert, "-X", "POST", tls_stack.url + "/",
                          "-F", f"images=@{SEVEN}"], capture_output=True, text=True, timeout=60)
    assert (out.returncode, json.loads(out.stdout)) == (0, {"mnist_result": 7}), out.stderr
    out = subprocess.run(["curl", "-sS", "--tlsv1.1", "--tls-max", "1.1", "--cacert", tls_stack.cert,
                          tls_stack.url + "/health"], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and out.stdout == "", out   # TLS 1.1 refused


def test_plain_http_on_the_tls_port_is_refused(tls_stack):
    with socket.create_connection(("127.0.0.1", tls_stack.port), timeout=10) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = b""
        try:
            while chunk := s.recv(4096):
                answer += chunk
        except ConnectionResetError:   # the TLS handshake failed: the server closed the connection
            pass
    assert not answer.startswith(b"HTTP/"), answer[:100]
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{tls_stack.port}/health", timeout=10)
    assert requests.get(tls_stack.url + "/health", verify=tls_stack.cert, timeout=10).status_code == 200
    log = tls_stack.log()
    assert "TLS handshake with 127.0.0.1 failed: HTTP_REQUEST (plain HTTP on the HTTPS port)" in log
    assert "Traceback" not in log


def handshake(port, cafile, version):
    context = ssl.create_default_context(cafile=cafile)
    context.minimum_version = context.maximum_version = version
    if version < ssl.TLSVersion.TLSv1_2:
        context.set_ciphers("ALL:@SECLEVEL=0")   # let the client offer them: the server must refuse
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as s:
            return s.version(), s.cipher()[0]


def test_tls_1_2_and_1_3_are_served_with_aead_ciphers_and_1_0_and_1_1_refused(tls_stack):
    assert handshake(tls_stack.port, tls_stack.cert, ssl.TLSVersion.TLSv1_3)[0] == "TLSv1.3"
    version, cipher = handshake(tls_stack.port, tls_stack.cert, ssl.TLSVersion.TLSv1_2)
    assert version == "TLSv1.2" and cipher.startswith("ECDHE-") and ("GCM" in cipher or "CHACHA20" in cipher), cipher
    for old in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
        with pytest.raises(ssl.SSLError, match="TLSV1_ALERT_PROTOCOL_VERSION"):
            handshake(tls_stack.port, tls_stack.cert, old)
    assert requests.get(tls_stack.url + "/health", verify=tls_stack.cert, timeout=10).status_code == 200


def _expired_pair(folder):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    then = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(then).not_valid_after(then + datetime.timedelta(days=30))
            .sign(key, hashes.SHA256()))
    os.makedirs(folder)
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    return str(folder / "cert.pem"), str(folder / "key.pem")


@pytest.mark.parametrize("case", ["expired", "unreadable", "mismatched", "only one"])
def test_a_certificate_that_cannot_be_served_stops_the_start_with_the_reason(tmp_path, repo, case):
    cert, key = _expired_pair(tmp_path / "old")
    good_cert, good_key = tls.self_signed(str(tmp_path / "good"))
    env, reason = {
        "expired": ({"TLS_CERT": cert, "TLS_KEY": key}, f"TLS certificate {cert} expired on 2024-01-31 00:00 UTC"),
        "unreadable": ({"TLS_CERT": str(tmp_path / "missing.pem"), "TLS_KEY": good_key},
                       f"TLS certificate {tmp_path / 'missing.pem'} cannot be read"),
        "mismatched": ({"TLS_CERT": good_cert, "TLS_KEY": key}, "cannot be used together"),
        "only one": ({"TLS_CERT": good_cert}, "TLS_CERT and TLS_KEY go together"),
    }[case]
    stack = Stack(tmp_path, scheme="https", verify=False, MODEL_REPOSITORY=repo, **env)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="run.sh exited 1") as failed:
        stack.start()
    assert reason in str(failed.value)
    assert "starting Triton" not in str(failed.value)   # refused before Triton loads anything
    assert time.monotonic() - started < 30


def test_without_a_pair_a_self_signed_one_is_made_and_said(tmp_path, repo):
    stack = Stack(tmp_path, scheme="https", verify=False, MODEL_REPOSITORY=repo, GRACE_PERIOD="3").start()
    try:
        line = [ln for ln in stack.log().splitlines() if "self-signed certificate made for this run" in ln]
        assert len(line) == 1, stack.log()[-2000:]
        folder = line[0].split(" in ", 1)[1].split(" (no TLS_CERT")[0]
        assert os.stat(folder).st_mode & 0o777 == 0o700 and os.stat(folder + "/key.pem").st_mode & 0o777 == 0o600
        resp = requests.post(stack.url + "/named", json={"sleep": 0}, verify=folder + "/cert.pem", timeout=10)
        assert resp.json() == {"model": "named"}

        # SIGTERM under TLS load: every request sent before gunicorn's stop is answered right.
        records, stop = [], threading.Event()

        def client():
            with requests.Session() as s:
                while not stop.is_set():
                    sent = time.time()
                    try:
                        r = s.post(stack.url + "/named", json={"sleep": 0.05}, verify=False, timeout=30)
                        records.append((sent, r.status_code if r.json() == {"model": "named"} else "wrong"))
                    except requests.RequestException as exc:
                        records.append((sent, type(exc).__name__))
                        time.sleep(0.05)

        threads = [threading.Thread(target=client) for _ in range(8)]
        for t in threads:
            t.start()
        time.sleep(1.5)
        stack.proc.send_signal(signal.SIGTERM)
        rc = stack.proc.wait(120)
        stop.set()
        for t in threads:
            t.join(30)
        log = stack.log()
        assert rc == 0, log[-3000:]
        from test_faults import log_time
        gunicorn_stop = log_time(log, "Handling signal: term")
        before = [o for sent, o in records if sent < gunicorn_stop]
        assert len(before) > 50 and set(before) == {200}, {o: before.count(o) for o in set(before)}
        assert all(o in (200, "ConnectionError", "SSLError") for sent, o in records if sent >= gunicorn_stop)
        marks = ["grace period over", "gunicorn stopped (exit 0)", "stopping Triton", "Triton stopped (exit 0)"]
        positions = [log.find(m) for m in marks]
        assert all(p >= 0 for p in positions) and positions == sorted(positions), dict(zip(marks, positions))
        wait_for(lambda: not stack.pids(""), 10, "no process of the stack left")
    finally:
        if stack.proc.poll() is None:
            stack.kill()
