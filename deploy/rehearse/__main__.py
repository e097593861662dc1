"""make rehearse: run a service the way ModelArts will, and say what would fail there.

    python -m deploy.rehearse [--config PATH] [--model-repository DIR] [--image NAME[:TAG]] [--samples "f=path ..."]

1. static checks: config.json against the specification (and the image's user, entry, port, size, folders);
2. start: the local stack as `make serve` runs it, or the image as the platform runs it, probed on config.json's
   health schedule (the console's defaults where it says nothing): time to ready against what the probes allow;
3. calls: every api, with a request built from its schema, checked for status, response schema, latency (40 s
   through APIG, 60 s in all), body sizes (12 MB, 8 MB) and a 4xx JSON answer to a malformed body;
4. rolling upgrade: load on every api, then SIGTERM: /health 503 within a probe period, every request answered,
   the stop within the grace period + 90 s, exit status 0.

The report goes to stdout and to build/rehearsal/report.md and report.json; the exit status is 1 if anything FAILs.
"""
import argparse
import os
import shlex
import sys

import urllib3

from . import payloads, platform as P, static
from .calls import calls_phase
from .report import Report
from .service import ROOT, Image, Local
from .start import start_phase
from .upgrade import upgrade_phase

urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)   # https: the service's self-signed pair


def config_path(args):
    if args.config:
        return args.config
    if args.model_repository and os.path.isfile(os.path.join(args.model_repository, "config.json")):
        return os.path.join(args.model_repository, "config.json")
    return os.path.join(ROOT, "config.json")


def arguments(argv=None):
    parser = argparse.ArgumentParser(prog="make rehearse", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    env = os.environ.get
    parser.add_argument("--config", default=env("CONFIG") or None)
    parser.add_argument("--model-repository", default=env("MODEL_REPOSITORY") or None)
    parser.add_argument("--image", default=env("IMAGE") or None)
    parser.add_argument("--samples", default=env("SAMPLES", ""), help='"field=path ..." for file fields')
    parser.add_argument("--grace", type=int, default=int(env("REHEARSE_GRACE") or P.GRACE_S),
                        help="the grace period after SIGTERM (GRACE_PERIOD); the platform's is 60 s")
    parser.add_argument("--docker", default=env("DOCKER") or None, help="the docker or podman command")
    parser.add_argument("--network", default=env("REHEARSE_NETWORK", ""), help='"host": the image on the host network')
    parser.add_argument("--out", default=os.path.join(ROOT, "build", "rehearsal"))
    parser.add_argument("--static-only", action="store_true", help="phase 1 only")
    parser.add_argument("--startup-wait", type=float, default=float(env("REHEARSE_STARTUP_WAIT") or 600),
                        help="how long to wait for the first 200 from /health")
    return parser.parse_args(argv)


def _live(service, doc, apis, samples, args, report):
    """The phases that run the service: start and probes, calls, the rolling upgrade."""
    report.phase("start and probes")
    report.add("INFO", "service", service.where)
    if args.grace != P.GRACE_S:
        report.add("INFO", "grace period", f"{args.grace} s (REHEARSE_GRACE), where the platform gives "
                   f"{P.GRACE_S} s: the rolling upgrade below is rehearsed with {args.grace} s")
    probes = start_phase(service, doc, report, args.startup_wait)
    if probes is not None:
        report.phase("calls")
        answered = calls_phase(service, apis, samples, report)
        report.phase("rolling upgrade")
        if answered:
            upgrade_phase(service, answered, probes, report)
        else:
            report.add("FAIL", "rolling upgrade", "not rehearsed: no api passed its call", "drain_serve",
                       "fix the calls above")


def main(argv=None):
    args = arguments(argv)
    os.makedirs(args.out, exist_ok=True)
    path = config_path(args)
    target = (f"config {path}; model repository {args.model_repository or 'model_repository/ (shipped)'}; "
              + (f"image {args.image}" if args.image else "local stack"))
    report = Report()
    report.phase("static checks")
    report.add("INFO", "rehearsing", target)
    doc = static.load(path, report)
    apis = static.check_config(doc, report) if doc is not None else []
    proxy = static.check_proxy(path, report) if doc is not None else None
    for api in apis:
        static.batch_fitness(api, report)
    docker = shlex.split(args.docker) if args.docker else None
    if args.image:
        docker = docker or static.engine()
        gb = static.inspect_image(docker, args.image, report)
        if gb is not None:
            static.inside_image(docker, args.image, report)
            static.image_plus_model(gb, args.model_repository, report)
    if args.static_only or doc is None or proxy is None or not apis:
        if not args.static_only:
            report.add("FAIL", "start", "not started: config.json has errors the service would stop on", "proxy",
                       "fix the findings above")
        return 1 if report.finish(args.out, target)["verdict"] == "FAIL" else 0
    log_path = os.path.join(args.out, "service.log")
    if args.image:
        service = Image(docker, args.image, log_path, args.grace, args.model_repository,
                        args.config, args.network)
    else:
        service = Local(log_path, args.grace, args.model_repository, path)
    if static.protocol(doc) == "https":   # the platform calls the container in its apis' protocol
        service.url = service.url.replace("http://", "https://", 1)
    try:
        _live(service, doc, apis, payloads.parse_samples(args.samples), args, report)
    finally:
        service.close()
    return 1 if report.finish(args.out, target)["verdict"] == "FAIL" else 0


if __name__ == "__main__":
    sys.exit(main())
