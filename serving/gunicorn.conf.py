"""gunicorn settings for the proxy: config as code. Values come from serving.settings (the environment)."""
import sys

from serving.settings import Settings

_settings = Settings.from_env()

bind = f"0.0.0.0:{_settings.listen_port}"
workers = _settings.workers
worker_class = "serving.worker.GeventWorker"   # gunicorn's gevent worker; see serving/worker.py
worker_connections = 1000
keepalive = 200
graceful_timeout = _settings.graceful_timeout_s  # in-flight requests get this long to finish on stop
timeout = 120                                  # a worker silent this long is restarted
limit_request_line = 8190
accesslog = "-" if _settings.access_log else None
access_log_format = '%(h)s "%(r)s" %(s)s %(B)s %(M)sms'
errorlog = "-"
capture_output = True
control_socket_disable = True                  # nothing here uses gunicornc; no socket under $HOME

# Every log line goes to stdout, as ModelArts collects it.
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s [%(process)d] [%(levelname)s] %(name)s: %(message)s"}},
    "handlers": {"stdout": {"class": "logging.StreamHandler", "stream": "ext://sys.stdout", "formatter": "plain"}},
    "root": {"level": "INFO", "handlers": ["stdout"]},
    "loggers": {
        "gunicorn.error": {"level": "INFO", "handlers": ["stdout"], "propagate": False},
        "gunicorn.access": {"level": "INFO", "handlers": ["stdout"], "propagate": False},
    },
}


def post_fork(server, worker):
    # grpcio must run on gevent's hub, or its calls block the worker (grpc/grpc#15071). Patch first,
    # then hand grpc to gevent, then create this worker's one Triton client.
    from gevent import monkey
    monkey.patch_all()
    import grpc.experimental.gevent as grpc_gevent
    grpc_gevent.init_gevent()
    from serving import triton
    triton.connect(_settings.triton_grpc_url)


def worker_exit(server, worker):
    from serving import triton
    triton.close()


def on_exit(server):
    server.log.info("gunicorn stopped")
    sys.stdout.flush()
