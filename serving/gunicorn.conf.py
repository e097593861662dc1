"""gunicorn settings for the proxy: config as code. Values come from serving.settings (the environment)."""
import os
import resource
import sys

from serving import logs
from serving.settings import Settings

_settings = Settings.from_env()

bind = f"0.0.0.0:{_settings.listen_port}"
workers = _settings.workers
worker_class = "serving.worker.GeventWorker"   # gunicorn's gevent worker; see serving/worker.py
worker_connections = 4096                      # idle keep-alive connections are cheap greenlets; see below
keepalive = 200
graceful_timeout = _settings.graceful_timeout_s  # in-flight requests get this long to finish on stop
timeout = 120                                  # a worker silent this long is restarted
limit_request_line = 8190
accesslog = "-" if _settings.access_log else None   # the line itself: serving/logs.py
logger_class = "serving.logs.Logger"
errorlog = "-"
capture_output = True
control_socket_disable = True                  # nothing here uses gunicornc; no socket under $HOME
logconfig_dict = logs.logconfig()              # every log line goes to stdout, as ModelArts collects it

# HTTPS when config.json's apis say https: run.sh has checked (or made) the pair with serving/tls.py.
if os.environ.get("SERVING_TLS_CERTFILE"):
    certfile = os.environ["SERVING_TLS_CERTFILE"]
    keyfile = os.environ["SERVING_TLS_KEYFILE"]

    def ssl_context(conf, default_ssl_context_factory):
        from serving import tls
        return tls.server_context(conf.certfile, conf.keyfile)   # TLS 1.2 or later, AEAD ciphers only


# Each connection is a file descriptor: lift the soft limit to the hard one (containers often start at 1024),
# so that thousands of idle keep-alive clients cannot starve new ones.
_soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
_want = 65536 if _hard == resource.RLIM_INFINITY else min(_hard, 65536)
if _soft != resource.RLIM_INFINITY and _soft < _want:
    resource.setrlimit(resource.RLIMIT_NOFILE, (_want, _hard))


def post_fork(server, worker):
    # Patch first, then create this worker's one Triton connection (serving/grpc_wire/: gevent-native, no
    # threads); a connection must not cross a fork.
    from gevent import monkey
    monkey.patch_all()
    from serving.triton import client
    client.connect(_settings.triton_grpc_url)


def worker_exit(server, worker):
    from serving import metrics
    from serving.triton import client
    metrics.flush()
    client.close()


def child_exit(server, worker):
    from serving import metrics
    metrics.worker_exit(worker.pid)


def on_exit(server):
    server.log.info("gunicorn stopped")
    sys.stdout.flush()
