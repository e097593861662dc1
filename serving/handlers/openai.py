"""An OpenAI-compatible API for Triton models: `/v1/chat/completions`, `/v1/completions`, `/v1/models` (and
`/v1/models/{id}`) and `/v1/embeddings`, streaming or not.

The routes are config.json apis like any other (`make config` writes them, GET for the model list). Generation is
served over the tensor interface of Triton's vLLM backend: `text_input` (the prompt), `stream`,
`sampling_parameters` (JSON, vLLM's SamplingParams names), `exclude_input_in_output`, `text_output`, and the
additional outputs where the model has them (`return_finish_reason` -> `finish_reason`, `return_logprobs` ->
`logprobs`, `return_num_input_tokens` / `return_num_output_tokens` -> the token counts). Embeddings are served by
any model with one text input and one FP32 vector output (the shipped MiniLM), its `num_input_tokens` output giving
the usage. A request's `model` may name any such model of the repository; the api's own binding is the default.

Behaviour follows OpenAI's wire format and Triton's own OpenAI frontend (`python/openai` in Triton's server
repository):
- chat messages go through the chat template of the model's tokenizer (`chat_template` in a tokenizer_config.json,
  or a chat_template.jinja, in the model's folder), rendered with Jinja2 as transformers does;
- temperature, top_p, max_tokens (max_completion_tokens), stop, seed, presence_penalty, frequency_penalty and
  logprobs go into sampling_parameters, and so do vLLM's extensions (top_k, min_p, min_tokens, repetition_penalty,
  ignore_eos, stop_token_ids); what is not given takes the model's default (vLLM's: max_tokens 16);
- `usage` (prompt, completion and total tokens) comes from the model's counts, the same streamed
  (`stream_options.include_usage`: one last chunk with empty `choices`) as not;
- `finish_reason` is the model's ("stop" or "length"); stop strings never reach the output (the model holds them
  back); `echo` puts the prompt before a completion's text;
- logprobs: `logprobs` (completions: how many top tokens) and `logprobs` + `top_logprobs` (chat) in OpenAI's shapes,
  the chosen token being the first of each of the model's entries (as vLLM orders them);
- errors are OpenAI's shape, {"error": {"message", "type", "param", "code"}}, for every path under /v1/ (an unknown
  path is a 404 of that shape); `top_logprobs` without `logprobs`, `stream_options` without `stream`, and `tools`
  (tool calling is not implemented) are 400s;
- the model is always asked to stream: a non-streaming answer is the stream joined, so that both count alike.
"""
import base64
import json
import logging
import os
import time
import uuid

import numpy as np

from .. import codecs, modelarts
from ..errors import ServingError
from ..http import error_answer, json_answer, media_type, read_body
from ..repository import embedding_tensors
from . import stream

log = logging.getLogger("serving.openai")

SUFFIXES = {"/v1/chat/completions": "chat", "/v1/completions": "completion", "/v1/models": "models",
            "/v1/embeddings": "embeddings"}
COUNTS = ("num_input_tokens", "num_output_tokens")
DEFAULT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                    "{% if add_generation_prompt %}assistant:{% endif %}")
SAMPLING = {"temperature": "temperature", "top_p": "top_p", "max_tokens": "max_tokens",
            "max_completion_tokens": "max_tokens", "stop": "stop", "seed": "seed",
            "presence_penalty": "presence_penalty", "frequency_penalty": "frequency_penalty",
            # vLLM's extensions of the OpenAI request, which its own server and Triton's frontend take too.
            "top_k": "top_k", "min_p": "min_p", "min_tokens": "min_tokens", "repetition_penalty": "repetition_penalty",
            "ignore_eos": "ignore_eos", "stop_token_ids": "stop_token_ids"}
INTEGERS = ("seed", "max_tokens", "max_completion_tokens", "top_k", "min_tokens")
OWNER = "Triton Inference Server"


def kind(url):
    """"chat", "completion", "models" or "embeddings" for an OpenAI route's url, else None."""
    for suffix, k in SUFFIXES.items():
        if url.endswith(suffix):
            return k
    return None


class OpenAIError(ServingError):
    def __init__(self, message, status=400, type_="invalid_request_error", param=None, code=None):
        super().__init__(message)
        self.status, self.type, self.param, self.code = status, type_, param, code

    def body(self):
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def error_body(exc):
    if isinstance(exc, OpenAIError):
        return exc.body()
    kinds = {400: "invalid_request_error", 404: "invalid_request_error", 413: "invalid_request_error",
             415: "invalid_request_error", 503: "service_unavailable", 504: "timeout"}
    return {"error": {"message": exc.message, "type": kinds.get(exc.status, "server_error"), "param": None,
                      "code": None}}


def no_model(name):
    return OpenAIError(f"The model `{name}` does not exist", status=404, param="model", code="model_not_found")


def chat_template(model_dir):
    """The model's chat template, from a tokenizer_config.json or chat_template.jinja in its folder (the first
    found), and the tokenizer config -> (template or None, config)."""
    for top, _, files in sorted(os.walk(model_dir)):
        config = {}
        if "tokenizer_config.json" in files:
            try:
                with open(os.path.join(top, "tokenizer_config.json")) as f:
                    config = json.load(f)
            except (OSError, ValueError):
                config = {}
        template = config.get("chat_template")
        if isinstance(template, list):   # named templates: the default one
            template = next((t.get("template") for t in template if t.get("name") == "default"), None)
        if not isinstance(template, str) and "chat_template.jinja" in files:
            with open(os.path.join(top, "chat_template.jinja")) as f:
                template = f.read()
        if isinstance(template, str):
            return template, config
    return None, {}


class Template:
    """A chat template rendered as transformers' apply_chat_template does."""

    def __init__(self, model_dir):
        from jinja2.exceptions import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment
        text, config = chat_template(model_dir) if model_dir else (None, {})
        self.source = "the model's tokenizer" if text else "a plain role: content template"
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


def _integer(value):
    return isinstance(value, int) and not isinstance(value, bool)


class Ask:
    """An OpenAI generation request, checked: what to send the model and how to answer."""

    def __init__(self, doc, which):
        if not isinstance(doc, dict):
            raise OpenAIError("the body must be a JSON object")
        self.which = which
        if doc.get("n", 1) != 1:
            raise OpenAIError("only n = 1 is supported", param="n")
        if doc.get("tools") or doc.get("tool_choice") not in (None, "none") or doc.get("functions"):
            raise OpenAIError("tool calling is not supported by this service: send the request without 'tools', "
                              "'tool_choice' and 'functions'", param="tools")
        if doc.get("model") is not None and not isinstance(doc["model"], str):
            raise OpenAIError("'model' must be a string", param="model")
        self.model = doc.get("model")
        self.source = self._messages(doc) if which == "chat" else self._prompt(doc)
        self.sampling = self._sampling(doc)
        self.stream = doc.get("stream") is True
        options = doc.get("stream_options")
        if options is not None and not self.stream:
            raise OpenAIError("`stream_options` can only be used when `stream` is True", param="stream_options")
        if options is not None and not isinstance(options, dict):
            raise OpenAIError("'stream_options' must be an object", param="stream_options")
        self.include_usage = bool(options and options.get("include_usage"))
        self.echo = doc.get("echo") is True and which == "completion"
        self.top_logprobs = self._logprobs(doc)
        if self.top_logprobs is not None:
            self.sampling["logprobs"] = self.top_logprobs

    @staticmethod
    def _messages(doc):
        messages = doc.get("messages")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) and "role" in m
                                                                      for m in messages):
            raise OpenAIError("'messages' must be a non-empty list of {role, content} objects", param="messages")
        return [{"role": m["role"], "content": _content(m)} for m in messages]

    @staticmethod
    def _prompt(doc):
        prompt = doc.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise OpenAIError("'prompt' must be a string (or a list of one string)", param="prompt")
        if not prompt:
            raise OpenAIError("'prompt' must not be empty", param="prompt")
        if doc.get("suffix"):
            raise OpenAIError("'suffix' is not supported", param="suffix")
        return prompt

    @staticmethod
    def _sampling(doc):
        sampling = {}
        for key, name in SAMPLING.items():
            value = doc.get(key)
            if value is None:
                continue
            if key == "stop":
                ok = isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))
            elif key in INTEGERS:
                ok = _integer(value)
            elif key == "ignore_eos":
                ok = isinstance(value, bool)
            elif key == "stop_token_ids":
                ok = isinstance(value, list) and all(_integer(v) for v in value)
            else:
                ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not ok:
                raise OpenAIError(f"'{key}' has the wrong type: {type(value).__name__}", param=key)
            sampling[name] = value
        if "max_tokens" in sampling and sampling["max_tokens"] < 1:
            raise OpenAIError("'max_tokens' must be a positive integer", param="max_tokens")
        return sampling

    def _logprobs(self, doc):
        """How many top tokens to report beside each chosen one (0: the chosen one only), or None for none."""
        logprobs, top = doc.get("logprobs"), doc.get("top_logprobs")
        if self.which == "chat":
            if logprobs is not None and not isinstance(logprobs, bool):
                raise OpenAIError("'logprobs' must be a boolean", param="logprobs")
            if top is not None and not logprobs:
                raise OpenAIError("`top_logprobs` can only be used when `logprobs` is True", param="top_logprobs")
            if top is not None and (not _integer(top) or not 0 <= top <= 20):
                raise OpenAIError("'top_logprobs' must be an integer from 0 to 20", param="top_logprobs")
            return (top or 0) if logprobs else None
        if logprobs is not None and (not _integer(logprobs) or not 0 <= logprobs <= 5):
            raise OpenAIError("'logprobs' must be an integer from 0 to 5", param="logprobs")
        return logprobs


class Generator:
    """One LLM model as the OpenAI routes use it: its stream call, chat template, and which of the vLLM
    interface's optional tensors it has."""

    def __init__(self, call, template):
        self.call, self.template, self.info = call, template, call.info

    def tensors(self, prompt, sampling, logprobs):
        """The model's inputs for one prompt: those it has of the vLLM interface."""
        inputs = self.info.inputs
        tensors = {"text_input": np.array([prompt.encode()], dtype=object)}
        flags = {"stream": True,   # always: a non-streaming answer is the stream joined, its tokens counted
                 "exclude_input_in_output": True, "return_finish_reason": True, "return_num_input_tokens": True,
                 "return_num_output_tokens": True, "return_logprobs": logprobs}
        for name, value in flags.items():
            if name in inputs and value:
                tensors[name] = np.array([True], dtype=bool)
        if "sampling_parameters" in inputs:
            tensors["sampling_parameters"] = np.array([json.dumps(sampling).encode()], dtype=object)
        return tensors

    def start(self, ask, name):
        prompt = self.template.render(ask.source) if ask.which == "chat" else ask.source
        responses = self.call.responses(self.tensors(prompt, ask.sampling, ask.top_logprobs is not None), None,
                                        coalesce=True)
        return Completion(ask, name, responses, prompt if ask.echo else "")


class Completion:
    """One completion, as Triton's responses come: its pieces of text, token counts, logprobs and finish reason, and
    the JSON answer or the SSE chunks that carry them. `responses` is closed once it is done with."""

    def __init__(self, ask, name, responses, echo=""):
        self.ask, self.which, self.responses, self.echo = ask, ask.which, responses, echo
        self.n, self.prompt_tokens, self.completion_tokens, self.finish = 0, None, 0, None
        self.offset = len(echo)   # the completions' logprobs text_offset
        chat = self.which == "chat"
        self.obj, self.chunk_obj = ("chat.completion", "chat.completion.chunk") if chat else ("text_completion",) * 2
        self.head = {"id": ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex, "object": self.obj,
                     "created": int(time.time()), "model": name}

    def groups(self):
        """Per group of responses that arrived together: (text, logprob entries)."""
        for group in self.responses:
            if group is None:
                continue
            texts, entries = [], []
            for outputs in group:   # {name: (datatype, raw bytes)}: triton.StreamCall(raw=True)
                self.n += 1
                if "num_input_tokens" in outputs:
                    self.prompt_tokens = _count(outputs["num_input_tokens"])
                if "num_output_tokens" in outputs:
                    self.completion_tokens += _count(outputs["num_output_tokens"])
                else:
                    self.completion_tokens += 1   # a model without counts: one token per response
                if "finish_reason" in outputs:
                    reason = _text(outputs["finish_reason"])
                    if reason not in ("", "None", "none", "null"):
                        self.finish = reason
                if "text_output" in outputs:
                    texts.append(_text(outputs["text_output"]))
                if "logprobs" in outputs:
                    parsed = json.loads(_text(outputs["logprobs"]) or "null")
                    entries += [e for e in parsed or [] if e]
            yield "".join(texts), entries

    def finish_reason(self):
        if self.finish:
            return self.finish
        limit = self.ask.sampling.get("max_tokens")
        return "length" if limit is not None and self.completion_tokens >= limit else "stop"

    def usage(self):
        usage = {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens}
        if self.prompt_tokens is None:   # a model that does not count its prompt
            return {"completion_tokens": self.completion_tokens}
        return dict(usage, total_tokens=self.prompt_tokens + self.completion_tokens)

    def logprobs(self, entries):
        """The model's entries for some tokens -> OpenAI's logprobs of the chat or completions kind, or None."""
        if self.ask.top_logprobs is None:
            return None
        top = self.ask.top_logprobs
        chosen = [next(iter(e.values())) for e in entries]   # the first entry is the chosen token (vLLM's order)
        ranked = [sorted(e.values(), key=lambda v: v.get("rank", 1 << 30))[:top] for e in entries]
        if self.which == "chat":
            def item(v):
                t = v["decoded_token"]
                return {"token": t, "logprob": v["logprob"], "bytes": list(t.encode())}
            return {"content": [dict(item(c), top_logprobs=[item(v) for v in r]) for c, r in zip(chosen, ranked)]}
        offsets = []
        for c in chosen:
            offsets.append(self.offset)
            self.offset += len(c["decoded_token"])
        return {"tokens": [c["decoded_token"] for c in chosen], "token_logprobs": [c["logprob"] for c in chosen],
                "top_logprobs": [{v["decoded_token"]: v["logprob"] for v in r} for r in ranked],
                "text_offset": offsets}

    def answer(self):
        texts, entries = [self.echo], []
        try:
            for text, got in self.groups():
                texts.append(text)
                entries += got
        finally:
            self.responses.close()
        text, logprobs = "".join(texts), self.logprobs(entries)
        choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": logprobs,
                   "finish_reason": self.finish_reason()} if self.which == "chat" else
                  {"index": 0, "text": text, "logprobs": logprobs, "finish_reason": self.finish_reason()})
        return dict(self.head, choices=[choice], usage=self.usage())

    def stream(self):
        """The SSE chunks. The first group comes before the first byte: an error then is an HTTP error."""
        gen = self.groups()
        try:
            first = next(gen, None)
        except BaseException:
            self.responses.close()
            raise
        return self._events([first] if first is not None else [], gen)

    def _chunk(self, text=None, finish_reason=None, logprobs=None, role=False):
        if self.which == "chat":
            delta = {"role": "assistant", "content": ""} if role else {} if text is None else {"content": text}
            choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
        else:
            choice = {"index": 0, "text": text or "", "logprobs": logprobs, "finish_reason": finish_reason}
        return b"data: " + codecs.dumps(dict(self.head, object=self.chunk_obj, choices=[choice])) + b"\n\n"

    def _events(self, first, rest):
        try:
            if self.which == "chat":
                yield self._chunk(role=True)
            elif self.echo:
                yield self._chunk(self.echo)
            for text, entries in _chain(first, rest):
                if text or entries:
                    yield self._chunk(text, logprobs=self.logprobs(entries))
            yield self._chunk(finish_reason=self.finish_reason())
            if self.ask.include_usage:
                usage = dict(self.head, object=self.chunk_obj, choices=[], usage=self.usage())
                yield b"data: " + codecs.dumps(usage) + b"\n\n"
            yield b"data: [DONE]\n\n"
        except ServingError as exc:
            log.warning("%s: stream ended after %d responses: %s", self.obj, self.n, exc.message)
            yield b"data: " + codecs.dumps(error_body(exc)) + b"\n\n"
        finally:
            self.responses.close()


def _text(output):
    """A BYTES output's elements, joined: (datatype, raw bytes) as Triton writes them (4-byte length, bytes)."""
    datatype, raw = output
    if datatype != "BYTES":
        return " ".join(str(v) for v in codecs.from_raw(raw, datatype, [-1]).tolist())
    if len(raw) >= 4 and int.from_bytes(raw[:4], "little") == len(raw) - 4:   # one element: most responses
        return raw[4:].decode("utf-8", "replace")
    return "".join(v.decode("utf-8", "replace") for v in codecs.from_raw(raw, datatype, [-1]))


def _count(output):
    """An integer output's elements, summed."""
    datatype, raw = output
    if datatype in ("UINT32", "INT32") and len(raw) == 4:
        return int.from_bytes(raw, "little", signed=datatype == "INT32")
    return int(codecs.from_raw(raw, datatype, [-1]).sum())


def _chain(first, rest):
    yield from first
    yield from rest


class Handler:
    """What every OpenAI route shares: the JSON body, and every error in OpenAI's shape."""
    limit = 16 * 1024 * 1024

    def answer(self, environ):
        try:
            streams, answer = self.handle(environ)
        except Exception as exc:   # noqa: BLE001 (error_answer: a ServingError's status, else a logged 500)
            return error_answer(environ, exc, shape=error_body)
        if not streams:
            return json_answer(answer)
        return "200 OK", stream.STREAM_HEADERS, _events(environ, answer)

    def body(self, environ):
        ctype = media_type(environ)
        if ctype != modelarts.JSON:
            raise OpenAIError(f"expected Content-Type application/json, got {ctype or 'none'}", status=415)
        return codecs.parse_json_body(read_body(environ, self.limit))


def _events(environ, answer):
    try:
        for chunk in answer:
            if stream.hung_up(environ):
                return
            yield chunk
    finally:
        answer.close()


class Generation(Handler):
    """/v1/chat/completions or /v1/completions: its LLM models (name -> Generator) and the default one."""

    def __init__(self, which, default, models, max_body_bytes=16 * 1024 * 1024):
        self.which, self.default, self.models, self.limit = which, default, models, max_body_bytes

    def handle(self, environ):
        return self.reply(self.body(environ))

    def reply(self, doc):
        """A request's JSON -> (streams, answer): the JSON answer, or the SSE chunks of a stream."""
        ask = Ask(doc, self.which)
        name = ask.model or self.default
        if name not in self.models:
            raise no_model(name)
        completion = self.models[name].start(ask, name)
        return (True, completion.stream()) if ask.stream else (False, completion.answer())


class Embeddings(Handler):
    """/v1/embeddings over the embedding models (name -> triton.InferCall)."""

    def __init__(self, default, models, max_body_bytes=16 * 1024 * 1024):
        self.default, self.models, self.limit = default, models, max_body_bytes

    def handle(self, environ):
        doc = self.body(environ)
        if not isinstance(doc, dict):
            raise OpenAIError("the body must be a JSON object")
        texts = doc.get("input")
        texts = [texts] if isinstance(texts, str) else texts
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t for t in texts):
            raise OpenAIError("'input' must be a non-empty string or a non-empty list of non-empty strings (token "
                              "ids are not supported)", param="input")
        fmt = doc.get("encoding_format") or "float"
        if fmt not in ("float", "base64"):
            raise OpenAIError("'encoding_format' must be \"float\" or \"base64\"", param="encoding_format")
        name = doc.get("model") or self.default
        if not isinstance(name, str) or name not in self.models:
            raise no_model(name)
        call = self.models[name]
        text_in, vector_out = embedding_tensors(call.info)
        dims = doc.get("dimensions")
        width = call.info.outputs[vector_out][1][-1]
        if dims is not None and dims != width:
            raise OpenAIError(f"'dimensions': the model `{name}` gives vectors of {width}", param="dimensions")
        step = call.info.max_batch_size if call.info.batched else 1
        vectors, tokens = [], 0
        for at in range(0, len(texts), step):   # a batch the model takes, then the next
            part = texts[at:at + step]
            arr = np.array([t.encode() for t in part], dtype=object)
            out = call({text_in: arr.reshape(-1, 1) if call.info.batched else arr})
            vectors += list(np.asarray(out[vector_out], dtype=np.float32).reshape(len(part), -1))
            if "num_input_tokens" in out:
                tokens += int(np.asarray(out["num_input_tokens"]).sum())
        data = [{"object": "embedding", "index": i,
                 "embedding": base64.b64encode(v.astype("<f4").tobytes()).decode() if fmt == "base64" else v}
                for i, v in enumerate(vectors)]
        return False, {"object": "list", "data": data, "model": name,
                       "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


class Models(Handler):
    """GET /v1/models and /v1/models/{id}: the repository's LLM and embedding models, OpenAI's list shape."""

    def __init__(self, names):
        created = int(time.time())
        self.models = {n: {"id": n, "object": "model", "created": created, "owned_by": OWNER} for n in sorted(names)}

    def handle(self, environ):
        path = environ.get("PATH_INFO", "")
        if path.endswith("/v1/models"):
            return False, {"object": "list", "data": list(self.models.values())}
        name = path.rsplit("/v1/models/", 1)[1]
        if name not in self.models:
            raise no_model(name)
        return False, self.models[name]


class Elsewhere(Handler):
    """Every other path under an OpenAI route's /v1/: /v1/models/{id}, and 404 and 405 in OpenAI's shape (also the
    405 of the routes' own paths: serving/front.py's table answers their HEAD and OPTIONS)."""

    def __init__(self, handlers):
        self.handlers = handlers   # (method, url) -> handler, of the OpenAI routes
        self.models = next((h for (m, u), h in handlers.items() if isinstance(h, Models)), None)
        self.prefixes = sorted({u[:u.index("/v1/") + 4] for (_, u) in handlers})

    def claims(self, path):
        return any(path.startswith(p) for p in self.prefixes)

    def handle(self, environ):
        method, path = environ.get("REQUEST_METHOD", ""), environ.get("PATH_INFO", "")
        if self.models is not None and "/v1/models/" in path and path.rsplit("/v1/models/", 1)[1]:
            if method in ("GET", "HEAD"):
                return self.models.handle(environ)
            raise OpenAIError(f"method {method} is not allowed on {path}", status=405)
        allowed = sorted(m for (m, u) in self.handlers if u == path)
        if allowed:
            raise OpenAIError(f"method {method} is not allowed on {path} (allowed: {', '.join(allowed)})",
                              status=405)
        raise OpenAIError(f"no route for {path}", status=404, code="not_found")
