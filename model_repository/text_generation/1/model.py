"""A word-level trigram model of Python's documentation (pydoc_data.topics), trained at load time, streaming one
word per response. sampling_parameters (JSON, vLLM's names): max_tokens (default 32, at most 256), temperature
(0: the most likely next word; default 0.8), seed (default 0: the same prompt gives the same text), stop (a string
or a list). Values it cannot use are ignored. Each request runs in its own thread; a cancelled request stops."""
import collections
import json
import random
import re
import threading

import numpy as np
import triton_python_backend_utils as pb_utils

WORD = re.compile(r"[A-Za-z][A-Za-z'-]*[A-Za-z]|[A-Za-z]|[.,;:]")
PUNCT = set(".,;:")


def train():
    from pydoc_data import topics
    text = " ".join(topics.topics[k] for k in sorted(topics.topics)).replace("\u2019", "'")
    # Prose only: lines of code and tables (indented, or with many symbols) are left out.
    prose = [line for line in text.splitlines()
             if line[:1] not in (" ", "\t", ">", "|", "+", "=") and sum(c in "()[]{}=_<>*/" for c in line) < 3]
    words = WORD.findall(" ".join(prose))
    follow = collections.defaultdict(collections.Counter)
    for a, b, c in zip(words, words[1:], words[2:]):
        follow[(a.lower(), b.lower())][c] += 1
    starts = collections.Counter((a.lower(), b.lower()) for a, b in zip(words, words[1:]) if a[0].isupper())
    return {k: (list(v), np.array(list(v.values()), dtype=np.float64)) for k, v in follow.items()}, starts, words


def _number(params, key, default, kind=float):
    try:
        return kind(params.get(key, default))
    except (TypeError, ValueError):
        return default


class TritonPythonModel:
    def initialize(self, args):
        self.follow, self.starts, words = train()
        self.common = [k for k, _ in self.starts.most_common(50)]
        self.threads = []
        pb_utils.Logger.log_info(f"text_generation: trigram model of {len(words)} words of Python's documentation, "
                                 f"{len(self.follow)} contexts")

    def execute(self, requests):
        for request in requests:
            t = threading.Thread(target=self.generate, args=(request,), daemon=True)
            t.start()
            self.threads.append(t)
        self.threads = [t for t in self.threads if t.is_alive()]
        return None

    @staticmethod
    def _input(request, name, default):
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        if tensor is None:
            return default
        value = tensor.as_numpy().reshape(-1)[0]
        return value.decode("utf-8", "replace") if isinstance(value, bytes) else value

    def generate(self, request):
        sender = request.get_response_sender()
        final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        try:
            prompt = self._input(request, "text_input", "")
            stream = bool(self._input(request, "stream", True))
            exclude = bool(self._input(request, "exclude_input_in_output", True))
            try:
                params = json.loads(self._input(request, "sampling_parameters", "") or "{}")
            except ValueError:
                params = {}
            params = params if isinstance(params, dict) else {}
            n = max(1, min(256, _number(params, "max_tokens", 32, int)))
            temperature = max(0.0, _number(params, "temperature", 0.8))
            rnd = random.Random(_number(params, "seed", 0, int))
            stop = params.get("stop") or []
            stop = [stop] if isinstance(stop, str) else [s for s in stop if isinstance(s, str)]
            pieces, sent = [], 0
            for piece in self.words(prompt, n, temperature, rnd):
                if request.is_cancelled():
                    pb_utils.Logger.log_info(f"text_generation: request cancelled after {len(pieces)} words")
                    sender.send(flags=final)
                    return
                text = "".join(pieces) + piece
                cut = min((text.index(s) for s in stop if s in text), default=None)
                if cut is not None:   # a stop string: the text ends before it
                    piece = text[:cut][len(text) - len(piece):] if cut > len(text) - len(piece) else ""
                pieces.append(piece)
                if stream and piece:
                    sender.send(pb_utils.InferenceResponse([self.text(piece if exclude or sent else prompt + piece)]))
                    sent += 1
                if cut is not None:
                    break
            if not stream:
                whole = "".join(pieces)
                sender.send(pb_utils.InferenceResponse([self.text(whole if exclude else prompt + whole)]))
            sender.send(flags=final)
        except Exception as exc:   # a bug here must not leave the client waiting
            sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"text_generation: {exc}")),
                        flags=final)

    @staticmethod
    def text(t):
        return pb_utils.Tensor("text_output", np.array([t.encode()], dtype=object))

    def words(self, prompt, n, temperature, rnd):
        """n words (and punctuation) after the prompt's last two known words, or after a common opening."""
        known = [w.lower() for w in WORD.findall(prompt.replace("\u2019", "'"))]
        context = next(((known[i], known[i + 1]) for i in range(len(known) - 2, -1, -1)
                        if (known[i], known[i + 1]) in self.follow), None)
        if context is None:
            context = self.common[rnd.randrange(len(self.common))]
            yield " " + context[0].capitalize() + (context[1] if context[1] in PUNCT else " " + context[1])
            n -= 1
        for _ in range(n):
            options = self.follow.get(context)
            if options is None:   # a dead end: start again from a common opening
                context = self.common[rnd.randrange(len(self.common))]
                options = self.follow[context]
            choices, counts = options
            if temperature == 0:
                word = choices[int(np.argmax(counts))]
            else:
                word = choices[rnd.choices(range(len(choices)), weights=counts ** (1.0 / temperature))[0]]
            yield word if word in PUNCT else " " + word
            context = (context[1], word.lower())
