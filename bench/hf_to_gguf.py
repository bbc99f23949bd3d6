#!/usr/bin/env python3
"""hf_to_gguf.py: writes a seeded Mistral/Llama-shaped mrank checkpoint as a llama.cpp GGUF
(arch "llama", F32 or BF16 matrices, F32 norms), for bench/run_cpu.sh's llama.cpp baseline.

llama.cpp's own convert_hf_to_gguf.py needs the transformers package, which Debian does not
ship; this does the same mapping for the tensors a llama decoder has, with gguf-py from the
llama.cpp source tree (PYTHONPATH=third_party/llama.cpp/gguf-py) and numpy only: q/k rows
permuted as llama.cpp expects, lm_head as output.weight, the vocabulary from tokenizer.json
(SentencePiece "llama" model). mrank's exit heads are not written (llama.cpp computes logits
of the last token instead). Q8_0 comes from llama-quantize on the F32 file.
Usage: hf_to_gguf.py CKPT_DIR OUT.gguf f32|bf16
"""
import json
import struct
import sys

import numpy as np
import gguf


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        base = 8 + n
        data = np.memmap(path, dtype=np.uint8, mode="r")
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        a, b = t["data_offsets"]
        raw = data[base + a: base + b]
        if t["dtype"] == "BF16":
            u = raw.view(np.uint16).astype(np.uint32) << 16
            arr = u.view(np.float32)
        elif t["dtype"] == "F32":
            arr = raw.view(np.float32)
        elif t["dtype"] == "F16":
            arr = raw.view(np.float16).astype(np.float32)
        else:
            raise SystemExit("unsupported dtype %s" % t["dtype"])
        out[name] = arr.reshape(t["shape"])
    return out


def to_bf16(a):
    """Round-to-nearest-even f32 -> bf16 bits (uint16)."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def permute(w, n_head):
    """HF rotate-half q/k rows -> llama.cpp's interleaved RoPE layout."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def main():
    src, dst, kind = sys.argv[1], sys.argv[2], sys.argv[3]
    cfg = json.load(open(src + "/config.json"))
    tok = json.load(open(src + "/tokenizer.json"))
    t = read_safetensors(src + "/model.safetensors")
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    w = gguf.GGUFWriter(dst, "llama")
    w.add_context_length(cfg.get("max_position_embeddings", 4096))
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_rope_dimension_count(cfg.get("head_dim") or cfg["hidden_size"] // nh)
    w.add_head_count(nh)
    w.add_head_count_kv(nkv)
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_rope_freq_base(cfg.get("rope_theta", 10000.0))
    w.add_file_type(gguf.LlamaFileType.ALL_F32 if kind == "f32" else gguf.LlamaFileType.MOSTLY_BF16)
    vocab = tok["model"]["vocab"]
    tokens = [b""] * cfg["vocab_size"]
    for s, i in vocab.items():
        if i < len(tokens):
            tokens[i] = s.encode("utf-8")
    types = [gguf.TokenType.NORMAL] * len(tokens)
    for a in tok.get("added_tokens", []):
        if a["id"] < len(tokens):
            tokens[a["id"]] = a["content"].encode("utf-8")
            types[a["id"]] = gguf.TokenType.CONTROL
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * len(tokens))
    w.add_token_types(types)
    w.add_bos_token_id(cfg.get("bos_token_id", 1))
    w.add_eos_token_id(2)

    def mat(name, a):
        if kind == "bf16":
            w.add_tensor(name, to_bf16(a), raw_shape=a.shape, raw_dtype=gguf.GGMLQuantizationType.BF16)
        else:
            w.add_tensor(name, np.ascontiguousarray(a, dtype=np.float32))

    def vec(name, a):
        w.add_tensor(name, np.ascontiguousarray(a, dtype=np.float32))

    mat("token_embd.weight", t["model.embed_tokens.weight"])
    vec("output_norm.weight", t["model.norm.weight"])
    if "lm_head.weight" in t:
        mat("output.weight", t["lm_head.weight"])
    for i in range(cfg["num_hidden_layers"]):
        p = "model.layers.%d." % i
        b = "blk.%d." % i
        vec(b + "attn_norm.weight", t[p + "input_layernorm.weight"])
        mat(b + "attn_q.weight", permute(t[p + "self_attn.q_proj.weight"], nh))
        mat(b + "attn_k.weight", permute(t[p + "self_attn.k_proj.weight"], nkv))
        mat(b + "attn_v.weight", t[p + "self_attn.v_proj.weight"])
        mat(b + "attn_output.weight", t[p + "self_attn.o_proj.weight"])
        vec(b + "ffn_norm.weight", t[p + "post_attention_layernorm.weight"])
        mat(b + "ffn_gate.weight", t[p + "mlp.gate_proj.weight"])
        mat(b + "ffn_up.weight", t[p + "mlp.up_proj.weight"])
        mat(b + "ffn_down.weight", t[p + "mlp.down_proj.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main()
