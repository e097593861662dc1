"""Logging for gunicorn: every line on stdout, and an access line that costs little.

gunicorn's own access log builds a dict of a dozen atoms and goes through the logging module for every
request, and it stays on whenever logging is configured from a dict, even with `accesslog = None`. This
logger writes one preformatted line (the same shape as every other line on stdout) or, when ACCESS_LOG is
off, nothing at all.
"""
import os
import sys
import time

from gunicorn import glogging

FORMAT = "%(asctime)s [%(process)d] [%(levelname)s] %(name)s: %(message)s"


def logconfig(level="INFO"):
    """logging.config dict: the root logger and gunicorn's error log on stdout, as ModelArts collects it."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": FORMAT}},
        "handlers": {"stdout": {"class": "logging.StreamHandler", "stream": "ext://sys.stdout", "formatter": "plain"}},
        "root": {"level": level, "handlers": ["stdout"]},
        "loggers": {"gunicorn.error": {"level": level, "handlers": ["stdout"], "propagate": False}},
    }


class Logger(glogging.Logger):
    """gunicorn's logger with a cheap access line: `<time> [pid] [INFO] access: ip "METHOD path HTTP/1.1" status bytes ms`."""

    def setup(self, cfg):
        super().setup(cfg)
        self.enabled = bool(cfg.accesslog)
        self.second, self.prefix = -1, ""

    def access(self, resp, req, environ, request_time):
        if not self.enabled:
            return
        now = time.time()
        second = int(now)
        if second != self.second:   # the date is formatted once per second, not per request
            self.second, self.prefix = second, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        query = f"?{req.query}" if req.query else ""
        ms = request_time.seconds * 1000 + request_time.microseconds // 1000
        sys.stdout.write(
            f'{self.prefix},{int(now * 1000) % 1000:03d} [{os.getpid()}] [INFO] access: {environ.get("REMOTE_ADDR", "-")} '
            f'"{req.method} {req.path}{query} HTTP/{req.version[0]}.{req.version[1]}" {str(resp.status)[:3]} '
            f'{resp.sent} {ms}ms\n')
