"""run.sh's readiness probe (`python -m serving.probe`): exit 0 once Triton and every model that config.json binds
are ready, 1 while not yet, 2 when config.json cannot be served (waiting will not help)."""
import sys

from . import binding, modelarts
from .errors import ConfigError, ServingError
from .service import models_on_file
from .settings import Settings
from .triton import client, models
from .triton.readiness import Readiness


def main():
    """Exit 0 when ready, 1 when not yet, 2 when config.json cannot be served (waiting will not help)."""
    settings = Settings.from_env()
    try:
        config = modelarts.load(settings.modelarts_config)
        overrides = binding.parse_overrides(settings.model_bindings)
    except ConfigError as exc:
        print(f"config.json: {exc}")
        return 2
    c = client.connect(settings.triton_grpc_url)
    try:
        reason = Readiness(c, [], settings.health_timeout_s, 0).probe()
        if reason is None:
            try:
                on_file = models_on_file(settings)
                routes, _ = binding.bound_routes(c, config, overrides, settings.health_timeout_s, on_file)
            except ConfigError as exc:
                print(f"config.json: {exc}")
                return 2
            except ServingError as exc:
                reason = exc.message
            else:
                watched = (sorted({(r.model, r.version) for r in routes}) if on_file is None
                           else [(m, "") for m in settings.models_pinned])
                reason = Readiness(c, watched, settings.health_timeout_s, 0).probe()
                if reason is None:   # ready: say which models no api serves (a 404 the user would meet)
                    served = {r.model for r in routes}
                    known = on_file if on_file is not None else models.repository(c, settings.health_timeout_s)
                    for name in sorted(set(known) - served):
                        print(f"warning: model {name!r} is {'in the repository' if on_file else 'ready in Triton'} "
                              f"but no api of {settings.modelarts_config} "
                              f"serves it: add an api for it (make config writes one per model), or bind an "
                              f"api's url to it with MODEL_BINDINGS='/url={name}'")
    finally:
        client.close()
    if reason:
        print(f"not ready: {reason}")
    return 0 if reason is None else 1


if __name__ == "__main__":
    sys.exit(main())
