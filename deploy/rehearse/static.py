"""Phase 1: config.json against the specification, and the image's own settings, before anything runs."""
import json
import os
import re
import shutil
import subprocess

from . import platform as P


def load(path, report):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as exc:
        report.add("FAIL", "config.json", f"cannot read {path}: {exc.strerror}", P.NONCONFORMING,
                   "give the config with CONFIG=path, or put config.json in the model repository")
    except ValueError as exc:
        report.add("FAIL", "config.json", f"not JSON: {exc}", P.NONCONFORMING, "fix the JSON syntax")
    return None


def _unknown(report, where, block, allowed, fix_hint=""):
    extra = [k for k in block if k not in allowed]
    if extra:
        report.add("FAIL", f"{where}: fields", f"undocumented {', '.join(map(repr, extra))}", "keys",
                   f"remove them{fix_hint}; documented here: {', '.join(allowed)}")
    return not extra


def _schema_problem(data, empty=False):
    """What is wrong with a block's data schema, or "". `empty`: no property is fine (a GET api's request)."""
    if not isinstance(data, dict):
        return "data is not a JSON-schema object"
    if data.get("type") != "object":
        return 'data needs "type": "object"'
    props = data.get("properties")
    if not isinstance(props, dict) or not (props or empty):
        return "data needs properties, one per field"
    for name, schema in props.items():
        if not isinstance(schema, dict) or "type" not in schema:
            return f"property {name!r} needs a type"
    return ""


def protocol(doc):
    """The protocol every api says (http or https), "mixed", or http when there are no apis."""
    found = {str(a.get("protocol", "http")).lower() for a in doc.get("apis") or [] if isinstance(a, dict)}
    return "mixed" if len(found) > 1 else (found.pop() if found else "http")


def check_config(doc, report):
    """Every documented rule about config.json that can be checked without running it. Returns the apis that are
    well formed enough to call (the rest have FAIL findings)."""
    if not isinstance(doc, dict):
        report.add("FAIL", "config.json", "not a JSON object", P.NONCONFORMING)
        return []
    before = len(report.findings)
    ok = _check_top(doc, report)
    apis = doc.get("apis")
    if not isinstance(apis, list) or not apis:
        report.add("FAIL", "config.json: apis", "none declared", "content_type", "declare one api per predict URL")
        apis = []
    good, urls = [], {}
    for i, api in enumerate(apis):
        if _check_api(i, api, report):
            good.append(api)
        if isinstance(api, dict) and isinstance(api.get("url"), str):
            urls.setdefault(api["url"], []).append(i)
    for url, where in urls.items():
        if len(where) > 1:
            report.add("FAIL", f"url {url}", f"declared by apis {where}", "urls", "give each api its own url")
            good = [a for a in good if a.get("url") != url]
    _check_health(doc, urls, report)
    if ok and good and len(good) == len(apis) and not any(f.level == "FAIL" for f in report.findings[before:]):
        report.add("PASS", "config.json", f"{len(apis)} api(s), only documented fields", "keys")
    return good


def _check_top(doc, report):
    """The top-level keys, model_algorithm and model_type: True when they are right."""
    ok = _unknown(report, "config.json", doc, P.TOP_KEYS,
                  " (a binding to a Triton model goes in MODEL_BINDINGS, outside config.json)")
    for key in ("model_algorithm", "model_type"):
        if not isinstance(doc.get(key), str) or not doc[key]:
            ok = False
            report.add("FAIL", f"config.json: {key}", "missing", "required", f"add {key!r}")
    algorithm = doc.get("model_algorithm")
    if isinstance(algorithm, str) and algorithm and not re.fullmatch(r"[A-Za-z][^\u4e00-\u9fff&!'\"<>=]{0,35}",
                                                                     algorithm):
        ok = False
        report.add("FAIL", "config.json: model_algorithm", repr(algorithm), "algorithm",
                   "for example predict_analysis or image_classification")
    if doc.get("model_type") not in (None, "", "Image"):
        report.add("WARN", "config.json: model_type", repr(doc["model_type"]), "required",
                   'a custom image is model_type "Image"')
    return ok


def _check_api(i, api, report):
    """apis[i]: True when it is well formed enough to call."""
    where = f"apis[{i}]"
    if not isinstance(api, dict):
        report.add("FAIL", where, "not an object", P.NONCONFORMING)
        return False
    url, method = api.get("url"), str(api.get("method", "")).lower()
    if isinstance(url, str):
        where = f"apis[{i}] {method.upper() or '?'} {url}"
    fine = _unknown(report, where, api, P.API_KEYS)
    if not isinstance(url, str) or not url.startswith("/"):
        fine = False
        report.add("FAIL", f"{where}: url", repr(url), P.NONCONFORMING, "a path starting with /")
    if method not in P.METHODS:
        fine = False
        report.add("FAIL", f"{where}: method", repr(api.get("method")), P.NONCONFORMING,
                   f"one of {', '.join(P.METHODS)}")
    if str(api.get("protocol", "")).lower() not in ("http", "https"):
        fine = False
        report.add("FAIL", f"{where}: protocol", repr(api.get("protocol")), P.NONCONFORMING, '"http" or "https"')
    for side in ("request", "response"):
        fine = _check_block(f"{where}: {side}", side, api.get(side), report,
                            empty=side == "request" and method == "get") and fine
    return fine


def _check_block(where, side, block, report, empty=False):
    """An api's request or response block: True when it is right."""
    if not isinstance(block, dict):
        report.add("FAIL", where, "missing", "content_type", f'add "{side}": {{"Content-type": ..., "data": {{...}}}}')
        return False
    fine = _unknown(report, where, block, P.BLOCK_KEYS)
    ctype = block.get("Content-type")
    if ctype is None:
        fine = False
        spelled = [k for k in block if k.lower() == "content-type"]
        found = f"missing{' (spelled ' + repr(spelled[0]) + ')' if spelled else ''}"
        report.add("FAIL", f"{where}.Content-type", found, "content_type",
                   f'add "Content-type": "{P.CONTENT_TYPES[0 if side == "response" else 1]}" (this spelling)')
    elif ctype not in P.CONTENT_TYPES:
        fine = False
        report.add("FAIL", f"{where}.Content-type", repr(ctype), "content_type", " or ".join(P.CONTENT_TYPES))
    problem = _schema_problem(block.get("data"), empty)
    if problem:
        fine = False
        report.add("FAIL", f"{where}.data", problem, "content_type", '{"type": "object", "properties": {...}}')
    return fine


def _check_health(doc, urls, report):
    health = doc.get("health")
    if health is None:
        report.add("WARN", "health", "no health block", "health",
                   'add "health": {"url": "/health", "protocol": "http", "initial_delay_seconds": ..., '
                   '"timeout_seconds": ...}')
        return
    if not isinstance(health, dict):
        report.add("FAIL", "health", "not an object", P.NONCONFORMING)
        return
    _unknown(report, "health", health, P.HEALTH_KEYS)
    if health.get("url", "/health") != "/health":
        report.add("FAIL", "health.url", repr(health.get("url")), "health_url", 'set "url": "/health"')
    if str(health.get("protocol", "http")).lower() != "http":
        report.add("FAIL", "health.protocol", repr(health.get("protocol")), "health_url", 'set "protocol": "http"')
    elif protocol(doc) == "https":
        report.add("WARN", "health.protocol", '"http" while the apis say https', "health_https",
                   "create the model with the container API protocol HTTPS, and check after the deployment "
                   "that the platform's health check reaches /health (the service answers it over HTTPS)")
    for key in ("initial_delay_seconds", "timeout_seconds", "period_seconds", "failure_threshold"):
        value = health.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            report.add("FAIL", f"health.{key}", repr(value), P.NONCONFORMING, "a whole number of seconds")
    if "/health" in urls:
        report.add("FAIL", "url /health", "an api takes the health URL", "urls", "give the api another url")


def check_proxy(path, report):
    """What the proxy itself refuses at start-up (serving/modelarts.py), said before starting it."""
    from serving import modelarts
    from serving.errors import ConfigError
    try:
        config = modelarts.load(path)
    except ConfigError as exc:
        report.add("FAIL", "the proxy's reading of config.json", str(exc), "proxy", "see the message")
        return None
    report.add("PASS", "the proxy's reading of config.json", f"{len(config.apis)} route(s)", "proxy")
    return config


def batch_fitness(api, report):
    """Whether a batch service can use this api, file-mapped and CSV-mapped, and the mapping_rule CSV needs."""
    where = f"{str(api.get('method', '')).upper()} {api.get('url')}"
    props = api["request"]["data"]["properties"]
    files = [n for n, s in props.items() if s.get("type") == "file"]
    if len(props) == 1 and files:
        report.add("PASS", f"{where}: file-mapped batch", f"one file input, {files[0]!r}", "batch_file")
    else:
        why = (f"{len(props)} inputs ({', '.join(props)})" if len(props) != 1 else
               f"its one input {next(iter(props))!r} is not a file")
        report.add("INFO", f"{where}: file-mapped batch", f"cannot serve it: {why}", "batch_file")
    scalar = ("string", "number", "integer", "boolean")
    unfit = [n for n, s in props.items() if s.get("type") not in scalar]
    if unfit:
        report.add("INFO", f"{where}: CSV-mapped batch",
                   f"cannot serve it: {', '.join(repr(n) + ' is ' + str(props[n].get('type')) for n in unfit)} "
                   "(a CSV column holds one value)", "batch_csv")
    else:
        rule = {"type": "object", "properties": {n: {"type": s["type"], "index": i}
                                                 for i, (n, s) in enumerate(props.items())}}
        report.add("PASS", f"{where}: CSV-mapped batch", "mapping_rule: " + json.dumps(rule), "batch_csv")


def inspect_image(docker, image, report):
    """The image's user, entry, port and size, and what is inside it."""
    proc = subprocess.run([*docker, "image", "inspect", image], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        report.add("FAIL", f"image {image}", f"cannot inspect it: {proc.stderr.strip()[-300:]}", "",
                   "build it first (docker build, or deploy/build_and_push.sh --no-push)")
        return None
    info = json.loads(proc.stdout)[0]
    cfg = info.get("Config") or {}
    user = cfg.get("User") or "root"
    if user in ("ma-user", "1000", "1000:100", "ma-user:100"):
        report.add("PASS", "image: user", user, "user")
    else:
        report.add("WARN", "image: user", f"{user!r}; the platform overrides it with 1000:100", "user",
                   "USER ma-user (useradd -u 1000 -g 100 ma-user), so that what runs locally is what runs there")
    entry = (cfg.get("Entrypoint") or []) + (cfg.get("Cmd") or [])
    if entry[-2:] == P.ENTRY:
        report.add("PASS", "image: entry", json.dumps(entry), "entry")
    else:
        report.add("WARN", "image: entry", json.dumps(entry), "entry", 'CMD ["sh", "/home/run.sh"]')
    ports = cfg.get("ExposedPorts") or {}
    report.add("PASS" if f"{P.PORT}/tcp" in ports else "WARN", "image: port", ", ".join(ports) or "none exposed",
               "port", "" if f"{P.PORT}/tcp" in ports else f"EXPOSE {P.PORT}, and listen on it")
    gb = info.get("Size", 0) / 1e9
    if gb > P.IMAGE_MAX_GB:
        report.add("FAIL", "image: size", f"{gb:.2f} GB", "size", "make the image smaller (models on OBS)")
    elif gb > P.IMAGE_ECS_GB:
        report.add("WARN", "image: size", f"{gb:.2f} GB", "size", "build and push it with deploy/build_and_push.sh")
    else:
        report.add("PASS", "image: size", f"{gb:.2f} GB (limit {P.IMAGE_MAX_GB} GB)", "size")
    return gb


INSIDE = ('id -u; id -g; for d in %s %s; do if [ -d "$d" ] && [ -w "$d" ]; then echo "$d ok"; '
          'elif [ -d "$d" ]; then echo "$d read-only"; else echo "$d missing"; fi; done; '
          'for t in %s; do command -v "$t" >/dev/null && echo "$t ok" || echo "$t missing"; done'
          % (P.MODEL_DIR, P.OBS_MOUNT.rstrip("/"), " ".join(P.BATCH_TOOLS)))


def inside_image(docker, image, report):
    uid, gid = P.USER
    proc = subprocess.run([*docker, "run", "--rm", "--network", "none", "--user", f"{uid}:{gid}", "--entrypoint", "sh",
                           image, "-c", INSIDE],
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        report.add("FAIL", "image: as uid 1000", f"a shell does not run: {proc.stderr.strip()[-300:]}", "user")
        return
    lines = proc.stdout.split("\n")
    for line in lines[2:]:
        if not line.strip():
            continue
        thing, state = line.rsplit(" ", 1)
        if thing in P.BATCH_TOOLS:
            report.add("PASS" if state == "ok" else "WARN", f"image: {thing}", state, "tools",
                       "" if state == "ok" else f"install {thing} in the image")
        else:
            rule = "model_dir" if thing == P.MODEL_DIR else "obs"
            report.add("PASS" if state == "ok" else "FAIL", f"image: {thing}", f"{state} for uid {uid}", rule,
                       "" if state == "ok" else f"mkdir -p {thing} && chown {uid}:{gid} {thing}")


def engine():
    """docker where its engine answers, else podman (machines with only the docker client have no engine)."""
    if shutil.which("docker") and subprocess.run(["docker", "info"], capture_output=True, timeout=60).returncode == 0:
        return ["docker"]
    return ["podman"] if shutil.which("podman") else ["docker"]


def image_plus_model(gb, repository, report):
    """Custom engines on public resource pools: the image plus the model package, against the smaller limit."""
    model_gb = 0.0
    if repository:
        for top, _, files in os.walk(repository):
            model_gb += sum(os.path.getsize(os.path.join(top, f)) for f in files
                            if os.path.isfile(os.path.join(top, f))) / 1e9
    total = gb + model_gb
    what = f"{total:.2f} GB (image {gb:.2f} GB + model package {model_gb:.2f} GB)"
    if total > P.IMAGE_PLUS_MODEL_GB:
        report.add("WARN", "image + model", what, "size_pool",
                   "on a public resource pool, keep image and model under 30 GB (or use a dedicated pool)")
    else:
        report.add("PASS", "image + model", what + f"; public pools allow {P.IMAGE_PLUS_MODEL_GB} GB", "size_pool")
