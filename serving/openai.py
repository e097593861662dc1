"""An OpenAI-compatible API for Triton LLM models: `/v1/chat/completions` and `/v1/completions`, streaming or not.

The routes are config.json apis like any other (`make config` writes them for a repository with an LLM model). An
api whose url ends with /v1/chat/completions or /v1/completions is served here, over the tensor interface that
Triton's vLLM and TensorRT-LLM models share: `text_input` (the prompt), `stream`, `sampling_parameters` (JSON),
`exclude_input_in_output`, and `text_output`. It is bound to an LLM model by the usual explicit binding
(MODEL_BINDINGS), else to the one decoupled model with that interface; a request's `model` may name any model of the
repository with that interface.

Behaviour follows OpenAI's wire format, and Triton's own OpenAI frontend (`python/openai` in Triton's server
repository) where it is sensible:
- chat messages go through the chat template of the model's tokenizer (`chat_template` in a tokenizer_config.json
  in the model's folder), rendered with Jinja2 as transformers does (a sandbox, `add_generation_prompt`); a model
  without one gets a plain "role: content" template;
- temperature, top_p, max_tokens (max_completion_tokens), stop, seed, presence_penalty and frequency_penalty go into
  sampling_parameters as vLLM's SamplingParams names them;
- a stream is `data:` chunks (`chat.completion.chunk` / `text_completion`): the role first, then one content delta
  per response, then a chunk with `finish_reason`, a usage chunk when `stream_options.include_usage`, then
  `data: [DONE]`;
- the model is always asked to stream (its `stream` input): a non-streaming answer is the stream joined, so that
  tokens are counted the same way in both;
- `finish_reason` is "length" when the model sent max_tokens responses (one token each, as Triton's LLM backends
  stream), else "stop"; `usage` is given when the model reports token counts (outputs num_input_tokens and
  num_output_tokens, which the vLLM backend can return); otherwise it is counted from the streamed responses for
  completion tokens only, and prompt_tokens is left out. (Triton's frontend counts with the tokenizer; this proxy
  ships none.)
- errors are OpenAI's shape: {"error": {"message", "type", "param", "code"}}, with the HTTP status.
Where it differs from Triton's frontend: no tokenizer (so no token-based usage of its own), n = 1 only, no logprobs,
no tools.
"""
import json
import logging
import os
import time
import uuid

from . import codecs, modelarts, sse
from .errors import ServingError
from .predict import JSON_HEADERS, media_type, read_body, status_line

log = logging.getLogger("serving.app")

SUFFIXES = {"/v1/chat/completions": "chat", "/v1/completions": "completion"}
INTERFACE_IN, INTERFACE_OUT = "text_input", "text_output"
DEFAULT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                    "{% if add_generation_prompt %}assistant:{% endif %}")
SAMPLING = {"temperature": "temperature", "top_p": "top_p", "max_tokens": "max_tokens",
            "max_completion_tokens": "max_tokens", "stop": "stop", "seed": "seed",
            "presence_penalty": "presence_penalty", "frequency_penalty": "frequency_penalty"}


def kind(url):
    """"chat" or "completion" for an OpenAI route's url, else None."""
    for suffix, k in SUFFIXES.items():
        if url.endswith(suffix):
            return k
    return None


def is_llm(info):
    return info.decoupled and INTERFACE_IN in info.inputs and INTERFACE_OUT in info.outputs


class OpenAIError(ServingError):
    def __init__(self, message, status=400, type_="invalid_request_error", param=None, code=None):
        super().__init__(message)
        self.status, self.type, self.param, self.code = status, type_, param, code

    def body(self):
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def error_body(exc):
    if isinstance(exc, OpenAIError):
        return exc.body()
    kinds = {400: "invalid_request_error", 404: "invalid_request_error", 503: "service_unavailable",
             504: "timeout"}
    return {"error": {"message": exc.message, "type": kinds.get(exc.status, "server_error"), "param": None,
                      "code": None}}


def chat_template(model_dir):
    """The model's chat template from a tokenizer_config.json in its folder (the first found), else None."""
    for top, _, files in sorted(os.walk(model_dir)):
        if "tokenizer_config.json" in files:
            try:
                with open(os.path.join(top, "tokenizer_config.json")) as f:
                    config = json.load(f)
            except (OSError, ValueError):
                continue
            template = config.get("chat_template")
            if isinstance(template, list):   # named templates: the default one
                template = next((t.get("template") for t in template if t.get("name") == "default"), None)
            if isinstance(template, str):
                return template, config
    return None, {}


class Template:
    """A chat template rendered as transformers' apply_chat_template does."""

    def __init__(self, model_dir):
        from jinja2.exceptions import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment
        text, config = chat_template(model_dir) if model_dir else (None, {})
        self.source = "tokenizer_config.json" if text else "a plain role: content template"
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

        def raise_exception(message):
            raise TemplateError(message)

        env.globals["raise_exception"] = raise_exception
        self.template = env.from_string(text or DEFAULT_TEMPLATE)
        token = lambda key: (config.get(key) or {}).get("content", "") if isinstance(config.get(key), dict) \
            else (config.get(key) or "")   # noqa: E731
        self.specials = {"bos_token": token("bos_token"), "eos_token": token("eos_token")}

    def render(self, messages):
        from jinja2.exceptions import TemplateError
        try:
            return self.template.render(messages=messages, add_generation_prompt=True, **self.specials)
        except TemplateError as exc:
            raise OpenAIError(f"the chat template refused the messages: {exc}", param="messages") from None


def _content(message):
    content = message.get("content")
    if isinstance(content, list):   # [{"type": "text", "text": ...}, ...]
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content if isinstance(content, str) else ""


def parse(doc, which):
    """An OpenAI request body -> (model, prompt or messages, stream, sampling, include_usage)."""
    if not isinstance(doc, dict):
        raise OpenAIError("the body must be a JSON object")
    if doc.get("n", 1) != 1:
        raise OpenAIError("only n = 1 is supported", param="n")
    if which == "chat":
        messages = doc.get("messages")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) and "role" in m
                                                                      for m in messages):
            raise OpenAIError("'messages' must be a non-empty list of {role, content} objects", param="messages")
        source = [{"role": m["role"], "content": _content(m)} for m in messages]
    else:
        prompt = doc.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise OpenAIError("'prompt' must be a string", param="prompt")
        source = prompt
    if doc.get("model") is not None and not isinstance(doc["model"], str):
        raise OpenAIError("'model' must be a string", param="model")
    sampling = {}
    for key, name in SAMPLING.items():
        value = doc.get(key)
        if value is None:
            continue
        if key == "stop":
            ok = isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))
        elif key in ("seed", "max_tokens", "max_completion_tokens"):
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok:
            raise OpenAIError(f"'{key}' has the wrong type: {type(value).__name__}", param=key)
        sampling[name] = value
    if "max_tokens" in sampling and (not isinstance(sampling["max_tokens"], int) or sampling["max_tokens"] < 1):
        raise OpenAIError("'max_tokens' must be a positive integer", param="max_tokens")
    stream = doc.get("stream") is True
    options = doc.get("stream_options") or {}
    return doc.get("model"), source, stream, sampling, bool(isinstance(options, dict) and options.get("include_usage"))


class Route:
    """One OpenAI route as plain WSGI (answered by serving/front.py, before Flask): its LLM models
    (name -> (StreamCall, Template)) and the default one."""

    def __init__(self, which, default, models, max_body_bytes=16 * 1024 * 1024):
        self.which, self.default, self.models, self.limit = which, default, models, max_body_bytes

    def __call__(self, environ, start_response):
        try:
            ctype = media_type(environ)
            if ctype != modelarts.JSON:
                raise OpenAIError(f"expected Content-Type application/json, got {ctype or 'none'}", status=415)
            streams, answer = self.handle(codecs.parse_json_body(read_body(environ, self.limit)), log)
        except ServingError as exc:
            if exc.status >= 500:
                log.warning("%s %s -> %d: %s", environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"), exc.status,
                            exc.message)
            return self._json(start_response, error_body(exc), exc.status)
        except Exception:
            log.exception("unhandled error on %s %s", environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"))
            return self._json(start_response, error_body(OpenAIError("internal error", status=500,
                                                                     type_="server_error")), 500)
        if not streams:
            return self._json(start_response, answer, 200)
        start_response("200 OK", sse.STREAM_HEADERS)
        return self._events(environ, answer)

    @staticmethod
    def _json(start_response, doc, status):
        body = codecs.dumps(doc)
        start_response(status_line(status), [JSON_HEADERS, ("Content-Length", str(len(body)))])
        return [body]

    @staticmethod
    def _events(environ, answer):
        try:
            for chunk in answer:
                if sse.hung_up(environ):
                    return
                yield chunk
        finally:
            answer.close()

    def handle(self, doc, log=log):
        """A request's JSON -> (streams, answer): the JSON answer, or the SSE chunks of a stream."""
        model, source, stream, sampling, include_usage = parse(doc, self.which)
        name = model or self.default
        if name not in self.models:
            raise OpenAIError(f"The model `{name}` does not exist", status=404, param="model",
                              code="model_not_found")
        call, template = self.models[name]
        prompt = template.render(source) if self.which == "chat" else source
        responses = call.responses(request_tensors(call.info.inputs, prompt, sampling), None)
        completion = Completion(self.which, name, responses, sampling, include_usage)
        return (True, completion.stream()) if stream else (False, completion.answer())


def request_tensors(inputs, prompt, sampling):
    """The LLM model's inputs for one prompt (the inputs it has of text_input, stream, sampling_parameters and
    exclude_input_in_output)."""
    import numpy as np
    tensors = {"text_input": np.array([prompt.encode()], dtype=object)}
    if "stream" in inputs:   # always: a non-streaming answer is the stream joined, its tokens counted
        tensors["stream"] = np.array([True], dtype=bool)
    if "sampling_parameters" in inputs:
        tensors["sampling_parameters"] = np.array([json.dumps(sampling).encode()], dtype=object)
    if "exclude_input_in_output" in inputs:
        tensors["exclude_input_in_output"] = np.array([True], dtype=bool)
    return tensors


class Completion:
    """One completion, as Triton's responses come: its pieces of text, its token counts and finish reason, and the
    JSON answer or the SSE chunks that carry them. `responses` is closed once it is done with."""

    def __init__(self, which, name, responses, sampling, include_usage):
        self.which, self.responses, self.sampling, self.include_usage = which, responses, sampling, include_usage
        self.n, self.counts = 0, {}
        chat = which == "chat"
        self.obj, self.chunk_obj = ("chat.completion", "chat.completion.chunk") if chat else ("text_completion",) * 2
        self.head = {"id": ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex, "object": self.obj,
                     "created": int(time.time()), "model": name}

    def pieces(self):
        import numpy as np
        for outputs in self.responses:
            if outputs is None:
                continue
            self.n += 1
            for key in ("num_input_tokens", "num_output_tokens"):
                if key in outputs:
                    self.counts[key] = int(np.asarray(outputs[key]).reshape(-1)[0])
            if "text_output" in outputs:
                text = outputs["text_output"]
                yield "".join(codecs.output_value(text, "string", False, 0) if text.size == 1 else
                              [str(v) for v in codecs.output_value(text, "array", False, 1)])

    def finish_reason(self):
        limit = self.sampling.get("max_tokens")
        produced = self.counts.get("num_output_tokens", self.n)
        return "length" if limit is not None and produced >= limit else "stop"

    def usage(self):
        completion = self.counts.get("num_output_tokens", self.n)
        if "num_input_tokens" in self.counts:
            prompt = self.counts["num_input_tokens"]
            return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
        return {"completion_tokens": completion}

    def answer(self):
        try:
            text = "".join(self.pieces())
        finally:
            self.responses.close()
        choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": self.finish_reason()}
                  if self.which == "chat" else
                  {"index": 0, "text": text, "finish_reason": self.finish_reason(), "logprobs": None})
        return dict(self.head, choices=[choice], usage=self.usage())

    def stream(self):
        """The SSE chunks. The first piece comes before the first byte: an error then is an HTTP error."""
        gen = self.pieces()
        try:
            first = next(gen, None)
        except BaseException:
            self.responses.close()
            raise
        return self._events([first] if first is not None else [], gen)

    def _chunk(self, delta=None, text=None, finish_reason=None):
        if self.which == "chat":
            choice = {"index": 0, "delta": delta if delta is not None else {}, "finish_reason": finish_reason}
        else:
            choice = {"index": 0, "text": text or "", "finish_reason": finish_reason, "logprobs": None}
        return b"data: " + codecs.dumps(dict(self.head, object=self.chunk_obj, choices=[choice])) + b"\n\n"

    def _events(self, first, rest):
        try:
            if self.which == "chat":
                yield self._chunk({"role": "assistant", "content": ""})
            for piece in _chain(first, rest):
                yield self._chunk({"content": piece}) if self.which == "chat" else self._chunk(text=piece)
            yield self._chunk(finish_reason=self.finish_reason())
            if self.include_usage:
                usage = dict(self.head, object=self.chunk_obj, choices=[], usage=self.usage())
                yield b"data: " + codecs.dumps(usage) + b"\n\n"
            yield b"data: [DONE]\n\n"
        except ServingError as exc:
            log.warning("%s: stream ended after %d responses: %s", self.obj, self.n, exc.message)
            yield b"data: " + codecs.dumps(error_body(exc)) + b"\n\n"
        finally:
            self.responses.close()


def _chain(first, rest):
    yield from first
    yield from rest
