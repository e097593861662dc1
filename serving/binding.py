"""Which Triton model serves each api of config.json. Decided once, at start-up; the first rule that decides wins:

1. explicit: MODEL_BINDINGS (`"/url=model[:version],..."`, outside config.json so the uploaded file keeps only
   ModelArts' keys), or an api's own `"x-triton"` key in configs written before these rules;
2. the URL's last path segment is the name of a model in Triton's repository (`/v1/mnist` -> `mnist`);
3. the one model whose inputs are exactly the request's properties and whose outputs include the response's; for an
   OpenAI route (serving/handlers/openai.py), the one LLM model (decoupled, with text_input and text_output) for
   /v1/chat/completions and /v1/completions, the one embedding model for /v1/embeddings, either for /v1/models.

Otherwise start-up stops with a message that names the candidates and the setting that decides.
"""
from dataclasses import replace

from .errors import ConfigError
from .handlers import openai
from .repository import is_embedding, is_llm
from .triton.models import model_info, repository


def parse_overrides(text):
    """MODEL_BINDINGS -> {url: (model, version)}."""
    overrides = {}
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        url, sep, target = item.partition("=")
        model, _, version = target.strip().partition(":")
        if not sep or not url.strip().startswith("/") or not model:
            raise ConfigError(f"MODEL_BINDINGS: {item!r} is not '/url=model' or '/url=model:version'")
        overrides[url.strip()] = (model, version)
    return overrides


def _matches(route, info):
    return ({f.name for f in route.inputs} == set(info.inputs)
            and {f.name for f in route.outputs} <= set(info.outputs))


def bind(routes, models, overrides=None):
    """apis (modelarts.Api), models {name: ModelInfo} of Triton's ready models -> routes with model set."""
    overrides = overrides or {}
    unknown = set(overrides) - {r.url for r in routes}
    if unknown:
        raise ConfigError(f"MODEL_BINDINGS names URLs that config.json does not serve: {sorted(unknown)}")
    bound = []
    for route in routes:
        where = f"{route.method} {route.url}"
        if route.url in overrides:
            model, version = overrides[route.url]
        elif route.model:
            model, version = route.model, route.version
        elif openai.kind(route.url):
            # An OpenAI route: the one LLM model of the repository (the one embedding model for /v1/embeddings;
            # the list of models has no model of its own: the first LLM or embedding model stands for it).
            which = openai.kind(route.url)
            test, what_kind = ((is_embedding, "embedding model (one text input, one FP32 vector output)")
                               if which == "embeddings" else
                               (is_llm, "LLM model (decoupled, text_input -> text_output)"))
            found = sorted(name for name, info in models.items() if test(info))
            if which == "models":
                found = (found or sorted(n for n, i in models.items() if is_embedding(i)))[:1]
                what_kind = "LLM or embedding model"
            if len(found) != 1:
                what = (f"several models are an {what_kind}: {found}" if found else
                        f"no model is an {what_kind}; Triton serves {sorted(models)}")
                raise ConfigError(f"{where}: cannot tell which model serves it: {what}. Bind it with "
                                  f"MODEL_BINDINGS='{route.url}=<model>'")
            model, version = found[0], ""
        else:
            segment = route.url.rstrip("/").rsplit("/", 1)[-1]
            if segment in models:
                model, version = segment, ""
            else:
                found = sorted(name for name, info in models.items() if _matches(route, info))
                if len(found) != 1:
                    wants = (f"inputs {sorted(f.name for f in route.inputs)} and outputs including "
                             f"{sorted(f.name for f in route.outputs)}")
                    what = (f"several models have {wants}: {found}" if found else
                            f"no model is named {segment!r} or has {wants}; Triton serves {sorted(models)}")
                    raise ConfigError(f"{where}: cannot tell which model serves it: {what}. Bind it with "
                                      f"MODEL_BINDINGS='{route.url}=<model>'")
                model, version = found[0], ""
        if model not in models:
            raise ConfigError(f"{where}: model {model!r} is not in Triton's repository {sorted(models)}")
        bound.append(replace(route, model=model, version=version))
    return tuple(bound)


def bound_routes(c, config, overrides, timeout=10.0, models=None):
    """config.json's routes bound to Triton's models, and the ModelInfo of each (model, version) they use.
    `models`: {name: ModelInfo} read from the repository's files (on-demand loading); else Triton's ready ones."""
    on_file = models is not None
    models = models if on_file else repository(c, timeout)
    routes = bind(config.apis, models, overrides)
    infos = {}
    for r in routes:
        if (r.model, r.version) not in infos:
            infos[(r.model, r.version)] = (models[r.model] if not r.version or on_file
                                           else model_info(c, r.model, r.version, timeout))
    return routes, infos
