"""deploy/k8s/: every overlay renders (kubectl kustomize, offline) and validates strictly against the Kubernetes
versions that Huawei CCE offers; the pod it runs is the image as ModelArts runs it (CMD, 1000:100, port 8080,
probes on /health); Kubernetes waits for run.sh's whole stop; and every metric an autoscaler names is in a live
/metrics of the running stack, with the drain gauge turning 1 on SIGTERM."""
import json
import os
import re
import shutil
import signal
import subprocess

import pytest
import requests
import yaml

from conftest import ROOT, Stack, wait_for

K8S = os.path.join(ROOT, "deploy", "k8s")
OVERLAYS = ["base", "overlays/hpa", "overlays/keda", "overlays/kserve", "overlays/groups"]
CCE_VERSIONS = ["1.28", "1.29", "1.30", "1.31", "1.32"]
CUSTOM = {"ScaledObject", "InferenceService"}   # custom resources: checked by the invariants below


def render(overlay):
    if not shutil.which("kubectl"):
        pytest.skip("kubectl is not installed: it renders the Kustomize overlays (kubectl kustomize, offline)")
    out = subprocess.run(["kubectl", "kustomize", os.path.join(K8S, overlay)], check=True, capture_output=True,
                         text=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def run_sh_default(name):
    text = open(os.path.join(ROOT, "run.sh")).read()
    return int(re.search(rf"^{name}=\$\{{{name}:-(\d+)\}}", text, re.M).group(1))


def pod_specs(docs):
    """(where, pod spec) of every pod the overlay runs: Deployments' templates and InferenceService predictors."""
    for doc in docs:
        if doc["kind"] == "Deployment":
            yield doc["metadata"]["name"], doc["spec"]["template"]["spec"]
        elif doc["kind"] == "InferenceService":
            yield doc["metadata"]["name"], doc["spec"]["predictor"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_overlay_renders_and_validates_strictly_against_cce_s_kubernetes_versions(overlay):
    import kubernetes_validate
    docs = render(overlay)
    kinds = {d["kind"] for d in docs}
    assert kinds - CUSTOM or overlay == "overlays/kserve", kinds   # KServe makes the built-in objects itself
    for version in CCE_VERSIONS:
        for doc in docs:
            if doc["kind"] not in CUSTOM:
                kubernetes_validate.validate(doc, version, strict=True)   # raises on a misspelt or wrong field


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_pod_is_the_image_as_modelarts_runs_it_and_kubernetes_waits_for_its_whole_stop(overlay):
    docs = render(overlay)
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", open(os.path.join(ROOT, "Dockerfile")).read(), re.M).group(1))
    # run.sh's stop at worst: the grace period, gunicorn's drain (killed 15 s past it), Triton's exit (killed at 45)
    stop = run_sh_default("GRACE_PERIOD") + run_sh_default("GRACEFUL_TIMEOUT") + 15 + 45
    specs = list(pod_specs(docs))
    assert specs
    for where, spec in specs:
        assert spec["terminationGracePeriodSeconds"] >= stop, (where, stop)
        assert (spec["securityContext"]["runAsUser"], spec["securityContext"]["runAsGroup"]) == (1000, 100), where
        (container,) = spec["containers"]
        assert container["name"] == "kserve-container" and container["command"] == cmd, where
        ports = {p.get("name"): p["containerPort"] for p in container["ports"]}
        assert list(ports.values()) == [8080], where
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            get = container[probe]["httpGet"]
            assert get["path"] == "/health" and ports.get(get["port"], get["port"]) == 8080, (where, probe)
        # startup allows minutes of model loading; readiness leaves the endpoints at the drain's first 503
        startup = container["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 600, where
        assert container["readinessProbe"]["failureThreshold"] == 1, where
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1", where


def test_autoscalers_target_what_the_overlays_run():
    deployments = {d["metadata"]["name"] for d in render("overlays/hpa") if d["kind"] == "Deployment"}
    (hpa,) = [d for d in render("overlays/hpa") if d["kind"] == "HorizontalPodAutoscaler"]
    assert hpa["spec"]["scaleTargetRef"]["name"] in deployments
    (keda,) = [d for d in render("overlays/keda") if d["kind"] == "ScaledObject"]
    assert keda["spec"]["scaleTargetRef"]["name"] in deployments
    kserve = render("overlays/kserve")
    (isvc,) = [d for d in kserve if d["kind"] == "InferenceService"]
    (scaled,) = [d for d in kserve if d["kind"] == "ScaledObject"]
    # KServe names the predictor's Deployment <name>-predictor; its own HPA is off (external)
    assert scaled["spec"]["scaleTargetRef"]["name"] == isvc["metadata"]["name"] + "-predictor"
    assert isvc["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] == "external"
    groups = render("overlays/groups")
    services = {d["metadata"]["name"]: d["spec"]["selector"] for d in groups if d["kind"] == "Service"}
    assert len(services) == 2 and len({json.dumps(s, sort_keys=True) for s in services.values()}) == 2
    (ingress,) = [d for d in groups if d["kind"] == "Ingress"]
    backends = {p["path"]: p["backend"]["service"]["name"] for rule in ingress["spec"]["rules"]
                for p in rule["http"]["paths"]}
    assert set(backends.values()) == set(services) and backends["/"] == "triton-serving-vision"


def named_metrics():
    """Every metric the HPA, the adapter's rules and the ScaledObjects name."""
    names = set()
    hpa_docs = render("overlays/hpa")
    (rules,) = [d for d in hpa_docs if d["kind"] == "ConfigMap"]
    config = yaml.safe_load(rules["data"]["config.yaml"])
    exposed = {}
    for rule in config["rules"]:
        series = re.match(r"[a-z_]+", rule["seriesQuery"]).group(0)
        exposed[rule["name"]["as"]] = series
        names.add(series)
        names.update(re.findall(r"([a-z_]+)\{<<", rule["metricsQuery"]))
    (hpa,) = [d for d in hpa_docs if d["kind"] == "HorizontalPodAutoscaler"]
    for metric in hpa["spec"]["metrics"]:
        assert metric["pods"]["metric"]["name"] in exposed, metric   # every HPA metric has its adapter rule
    for overlay in ("overlays/keda", "overlays/kserve"):
        for doc in render(overlay):
            if doc["kind"] == "ScaledObject":
                for trigger in doc["spec"]["triggers"]:
                    names.update(re.findall(r"([a-z_]+)\{", trigger["metadata"]["query"]))
    return names


def scrape(stack):
    """{sample name: value} of a live /metrics, parsed with prometheus_client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families
    text = requests.get(stack.url + "/metrics", timeout=10).text
    seen = {}
    for family in text_string_to_metric_families(text):
        seen.setdefault(family.name, None)   # a counter's family drops the _total its samples carry, or add
        seen.update((s.name, s.value) for s in family.samples)
    return seen


def test_every_metric_an_autoscaler_names_is_in_a_live_scrape_and_draining_turns_1_on_sigterm(tmp_path):
    names = named_metrics()
    assert {"proxy_inflight_requests", "proxy_model_calls_queued", "nv_inference_queue_duration_us",
            "nv_inference_request_success"} <= names, names
    stack = Stack(tmp_path, GRACE_PERIOD="20").start()
    try:
        requests.post(stack.url + "/", files={"images": ("seven.jpg", open(os.path.join(ROOT, "tests", "data",
                                                                                     "seven.jpg"), "rb"))},
                      timeout=30).raise_for_status()
        seen = scrape(stack)
        assert names <= set(seen), sorted(names - set(seen))
        assert seen["proxy_draining"] == 0 and "proxy_model_calls_in_flight" in seen
        stack.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: requests.get(stack.url + "/health", timeout=5).status_code == 503, 10, "the drain's 503")
        assert scrape(stack)["proxy_draining"] == 1   # still scraped during the grace period
    finally:
        stack.kill()
