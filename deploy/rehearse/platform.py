"""The ModelArts rules a rehearsal checks, each with the words it is quoted by in a finding.

Sources: Huawei Cloud's ModelArts user guide ("Specifications for Editing a Model Configuration File", "Creating a
Custom Image and Using It to Create an AI Application", "Real-Time Service Health Check", batch services) and its
API reference (error codes). The figures are the documented ones; a service created with its own
`request_timeout` or `request_size_limit` may have others.
"""

# config.json (model package root)
TOP_KEYS = ("model_algorithm", "model_type", "runtime", "swr_location", "metrics", "apis", "dependencies", "health")
API_KEYS = ("protocol", "url", "method", "request", "response")
BLOCK_KEYS = ("Content-type", "data")
# The health block: url, protocol, initial_delay_seconds and timeout_seconds; the newer probes add the method,
# a command (EXEC probes), the period and the failure threshold.
HEALTH_KEYS = ("check_method", "command", "url", "protocol", "initial_delay_seconds", "timeout_seconds",
               "period_seconds", "failure_threshold")
CONTENT_TYPES = ("application/json", "multipart/form-data")
METHODS = ("get", "post", "put", "delete")
ALGORITHM_MAX = 36
UNSUPPORTED = ('ModelArts.3016 "Failed to parse config json file because of unsupported fields, types, or formats": '
               "model creation fails on any field the specification does not document")
NONCONFORMING = 'ModelArts.3015 "The config.json file does not conform to the specification"'

# The container
USER = (1000, 100)          # ma-user, and its group
PORT = 8080
MODEL_DIR = "/home/mind/model"
OBS_MOUNT = "/obs-mount/"
ENTRY = ["sh", "/home/run.sh"]
IMAGE_MAX_GB = 50           # 10^9 bytes, as the registry counts
IMAGE_ECS_GB = 35           # over this, build on an ECS host and push to SWR
IMAGE_PLUS_MODEL_GB = 30    # custom engines on public resource pools: image plus model
BATCH_TOOLS = ("python3", "java", "zip")

# Probes. The console's defaults, where config.json's health block leaves a setting out.
PROBE_DEFAULTS = {"initial_delay_seconds": 12, "period_seconds": 5, "timeout_seconds": 5, "failure_threshold": 12}
PROBE_OK = range(200, 400)
DEPLOY_TIMEOUT_S = 20 * 60  # deploy plus start, by default

# The gateway (APIG)
APIG_BODY_MB = 12
CONSOLE_BODY_MB = 8
APIG_TIMEOUT_S = 40
SYNC_TIMEOUT_S = 60

def request_mode():
    """The mode the service runs in (REQUEST_MODE, as the image is given it): "sync" or "async"."""
    import os
    return os.environ.get("REQUEST_MODE", "").strip().lower() or "sync"


def async_deadline():
    """A call's deadline in the asynchronous request mode: REQUEST_TIMEOUT, else the service's own default."""
    import os
    from serving.settings import ASYNC_TIMEOUT_S
    return float(os.environ.get("REQUEST_TIMEOUT") or ASYNC_TIMEOUT_S)


# Rolling upgrade: on SIGTERM the instance keeps serving about 60 s, then finishes what is in flight within 90 s.
GRACE_S = 60
DRAIN_S = 90
KEEP_ALIVE_S = 200

RULES = {
    "keys": UNSUPPORTED,
    "required": "config.json needs model_algorithm and model_type (Image for a custom image); " + NONCONFORMING,
    "algorithm": f"model_algorithm starts with a letter, at most {ALGORITHM_MAX} characters, no Chinese characters "
                 "and none of &!'\\\"<>=",
    "content_type": "request and response each need a Content-type, application/json or multipart/form-data, and a "
                    "JSON-schema data (batch services require both)",
    "urls": "each api has its own url (model_type Image allows several apis with different paths)",
    "health_url": "the health check is an HTTP GET of /health on port 8080",
    "health": "rolling upgrades without interruption need the health block, which ModelArts calls",
    "health_https": 'the specification documents the health block\'s protocol as "HTTP" only, while the apis say '
                    "https: the container answers only HTTPS on 8080",
    "protocol": "the container must speak the protocol of the model's container API (config.json's apis' protocol), "
                "HTTP or HTTPS; a mismatch fails every call with ModelArts.4503",
    "proxy": "the service must start: an api the proxy cannot serve stops it at start-up",
    "user": "the platform starts the container as uid 1000, gid 100 (ma-user)",
    "entry": 'batch services start the image with "sh /home/run.sh"',
    "port": "the platform sends every request to port 8080",
    "model_dir": f"the model package is downloaded to {MODEL_DIR} and given to ma-user",
    "obs": f"an OBS bucket is mounted at a dedicated folder such as {OBS_MOUNT}",
    "size": f"an image is at most {IMAGE_MAX_GB} GB; over {IMAGE_ECS_GB} GB build it on an ECS host and push it to "
            "SWR",
    "size_pool": f"custom engines on public resource pools: image plus model at most {IMAGE_PLUS_MODEL_GB} GB",
    "tools": "batch services need python, a JRE and zip in the image",
    "startup": "a startup probe that fails failure_threshold times restarts the instance: the service is ready by "
               "initial_delay_seconds + period_seconds x failure_threshold, or restarts in a loop",
    "probe_timeout": "a probe that takes longer than timeout_seconds fails",
    "probe_status": "a probe succeeds on status 200-399",
    "status": "a prediction answers 200 with the api's response",
    "schema": "the answer validates against the api's response schema (config.json's response.data)",
    "apig_time": f"APIG fails a prediction after {APIG_TIMEOUT_S} s (ModelArts.4503)",
    "sync_time": f"a synchronous request fails after {SYNC_TIMEOUT_S} s",
    "async_time": "a model created in the asynchronous request mode (over about 60 s) is called through the "
                  "platform's task queue; the task's timeout, not the gateway's, is its limit",
    "body_apig": f"APIG refuses bodies over {APIG_BODY_MB} MB (APIG.0201)",
    "body_console": f"the console's Prediction tab takes bodies up to {CONSOLE_BODY_MB} MB",
    "bad_input": "bad input gets a 4xx answer with a JSON body, and the service stays healthy",
    "sample": "a file field needs a file, as the console's Prediction tab uploads one",
    "drain_health": "on SIGTERM /health must answer non-2xx within one probe period, so the instance leaves the "
                    "load balancer before it stops",
    "drain_serve": f"after SIGTERM the instance keeps serving about {GRACE_S} s; every request in flight or sent "
                   "then gets its answer",
    "drain_time": f"in-flight requests finish within {DRAIN_S} s of the grace period's end",
    "exit": "the container exits 0 after a clean stop",
    "batch_file": "a file-mapped batch service calls the api once per file: exactly one input, of type file",
    "batch_csv": "a CSV-mapped batch service calls the api once per row, through a mapping_rule that indexes the "
                 "request schema's string, number, integer and boolean fields",
}
