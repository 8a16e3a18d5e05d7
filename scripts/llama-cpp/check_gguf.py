"""Validates a GGUF written by `btx export --format gguf` against the Hugging Face checkpoint it
came from, with llama.cpp's own Python package (`gguf`, which llama.cpp's converter uses) and
not with btx's reader: llama.cpp's name map (`gguf.get_tensor_name_map`) decides each tensor's
GGUF name, llama.cpp's converter rules decide its layout (Q/K rows permuted for the llama
architecture, experts stacked per layer), and every tensor's type, shape and dequantised values
are compared. Metadata is compared with config.json and tokenizer.json.

usage: check_gguf.py FILE.gguf MODEL_DIR [--dtype f32|f16|bf16|q8_0]
exit 0 and "ok: ..." when everything agrees; exit 1 with the differences otherwise.
"""

import importlib.metadata
import json
import sys
from pathlib import Path

import gguf
import numpy as np
from gguf.quants import dequantize
from safetensors.numpy import load_file

ARCHES = {
    ("LlamaForCausalLM", "llama"): gguf.MODEL_ARCH.LLAMA,
    ("MistralForCausalLM", "llama"): gguf.MODEL_ARCH.LLAMA,
    ("MixtralForCausalLM", "llama"): gguf.MODEL_ARCH.LLAMA,
    ("Qwen2ForCausalLM", "qwen2"): gguf.MODEL_ARCH.QWEN2,
    ("Qwen3ForCausalLM", "qwen3"): gguf.MODEL_ARCH.QWEN3,
    ("Qwen3MoeForCausalLM", "qwen3moe"): gguf.MODEL_ARCH.QWEN3MOE,
}

Q = gguf.GGMLQuantizationType


def permute(w, n_head):
    """llama.cpp's convert_hf_to_gguf.py LlamaModel.permute: each head's rows [first half;
    second half] interleaved, for its RoPE on adjacent pairs."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def load_checkpoint(model: Path):
    single = model / "model.safetensors"
    if single.exists():
        files = [single]
    else:
        index = json.loads((model / "model.safetensors.index.json").read_text())
        files = sorted({model / f for f in index["weight_map"].values()})
    out = {}
    for f in files:
        for k, v in load_file(f).items():
            out[k] = v.astype(np.float32)
    return out


def expected(cfg, tensors, arch):
    """GGUF name -> (float32 values, is_matrix_like) as llama.cpp's converter would write them."""
    n_layers = cfg["num_hidden_layers"]
    names = gguf.get_tensor_name_map(arch, n_layers)
    heads, kv_heads = cfg["num_attention_heads"], cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
    out = {}
    stacks = {}
    for hf, w in tensors.items():
        parts = hf.split(".")
        # One expert of a MoE: stacked with its siblings under the name without the index.
        if "experts" in parts and parts[parts.index("experts") + 1].isdigit():
            i = parts.index("experts")
            e = int(parts[i + 1])
            key = ".".join(parts[: i + 1] + parts[i + 2 :])
            stacks.setdefault(key, {})[e] = w
            continue
        if arch == gguf.MODEL_ARCH.LLAMA and hf.endswith("self_attn.q_proj.weight"):
            w = permute(w, heads)
        if arch == gguf.MODEL_ARCH.LLAMA and hf.endswith("self_attn.k_proj.weight"):
            w = permute(w, kv_heads)
        name = names.get_name(hf, try_suffixes=(".weight", ".bias"))
        if name is None:
            # Qwen2-MoE's shared expert of size 0 is not a tensor llama.cpp's qwen3moe has.
            raise SystemExit(f"llama.cpp's name map has no name for {hf}")
        out[name] = w
    for key, experts in stacks.items():
        name = names.get_name(key, try_suffixes=(".weight",))
        if name is None:
            raise SystemExit(f"llama.cpp's name map has no name for {key}")
        out[name] = np.stack([experts[e] for e in sorted(experts)])
    return out


def want_type(name, w, dtype):
    """llama.cpp's converter: 1-D tensors and the router stay f32; matrices take the asked type,
    q8_0 only for rows of whole 32-value blocks (else f16)."""
    if w.ndim == 1 or name.endswith("ffn_gate_inp.weight") or name == "rope_freqs.weight":
        return Q.F32
    t = {"f32": Q.F32, "f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0}[dtype]
    if t == Q.Q8_0 and w.shape[-1] % 32 != 0:
        return Q.F16
    return t


def field(r, key):
    f = r.fields.get(key)
    return None if f is None else f.contents()


def main():
    args = sys.argv[1:]
    dtype = "f32"
    if "--dtype" in args:
        i = args.index("--dtype")
        dtype = args[i + 1]
        del args[i : i + 2]
    path, model = Path(args[0]), Path(args[1])
    cfg = json.loads((model / "config.json").read_text())
    r = gguf.GGUFReader(path)
    arch_name = field(r, "general.architecture")
    arch = ARCHES.get((cfg["architectures"][0], arch_name))
    if arch is None:
        raise SystemExit(f"{cfg['architectures'][0]} exported as {arch_name!r}: not what llama.cpp's converter writes")
    problems = []

    def same(what, got, want):
        if got != want:
            problems.append(f"{what}: file has {got!r}, expected {want!r}")

    a = arch_name
    same(f"{a}.block_count", field(r, f"{a}.block_count"), cfg["num_hidden_layers"])
    same(f"{a}.embedding_length", field(r, f"{a}.embedding_length"), cfg["hidden_size"])
    same(f"{a}.attention.head_count", field(r, f"{a}.attention.head_count"), cfg["num_attention_heads"])
    same(f"{a}.attention.head_count_kv", field(r, f"{a}.attention.head_count_kv"), cfg.get("num_key_value_heads") or cfg["num_attention_heads"])
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    same(f"{a}.rope.dimension_count", field(r, f"{a}.rope.dimension_count"), head_dim)
    theta = cfg.get("rope_theta") or (cfg.get("rope_parameters") or {}).get("rope_theta")
    same(f"{a}.rope.freq_base", field(r, f"{a}.rope.freq_base"), float(np.float32(theta)))
    same(f"{a}.attention.layer_norm_rms_epsilon", field(r, f"{a}.attention.layer_norm_rms_epsilon"), float(np.float32(cfg["rms_norm_eps"])))
    experts = cfg.get("num_local_experts") or cfg.get("num_experts")
    if experts:
        same(f"{a}.expert_count", field(r, f"{a}.expert_count"), experts)
        same(f"{a}.expert_used_count", field(r, f"{a}.expert_used_count"), cfg["num_experts_per_tok"])
    tokens = field(r, "tokenizer.ggml.tokens")
    same("tokenizer.ggml.tokens count", len(tokens), cfg["vocab_size"])
    tok = json.loads((model / "tokenizer.json").read_text())
    vocab = dict(tok["model"]["vocab"])
    for t in tok.get("added_tokens", []):
        vocab[t["content"]] = t["id"]
    wrong = [t for t, i in vocab.items() if tokens[i] != t]
    same("tokens at their tokenizer.json ids", wrong[:3], [])
    same("tokenizer.ggml.merges count", len(field(r, "tokenizer.ggml.merges")), len(tok["model"]["merges"]))

    want = expected(cfg, load_checkpoint(model), arch)
    got = {t.name: t for t in r.tensors}
    same("tensors missing from the file", sorted(set(want) - set(got)), [])
    extra = sorted(set(got) - set(want) - {"rope_freqs.weight"})
    same("tensors in the file llama.cpp's converter would not write", extra, [])
    permuted = 0
    for name, w in sorted(want.items()):
        t = got.get(name)
        if t is None:
            continue
        # The reader gives ggml's shape (fastest dimension first).
        same(f"{name} shape", list(reversed([int(x) for x in t.shape])), list(w.shape))
        same(f"{name} type", t.tensor_type.name, want_type(name, w, dtype).name)
        vals = dequantize(t.data, t.tensor_type).reshape(w.shape).astype(np.float32)
        if t.tensor_type == Q.F32:
            ok = np.array_equal(vals, w)
        else:
            step = {Q.F16: 2.0**-10, Q.BF16: 2.0**-7, Q.Q8_0: 1.0 / 127}[t.tensor_type]
            ok = np.max(np.abs(vals - w)) <= step * max(np.max(np.abs(w)), 1e-30)
        if not ok:
            problems.append(f"{name}: values differ from the checkpoint's (max diff {np.max(np.abs(vals - w)):.3g})")
        permuted += name.endswith(("attn_q.weight", "attn_k.weight")) and arch == gguf.MODEL_ARCH.LLAMA
    if problems:
        print("\n".join(problems))
        sys.exit(1)
    version = importlib.metadata.version("gguf")
    print(f"ok: {path.name}: {len(want)} tensors ({permuted} permuted q/k, types for {dtype}), metadata and a vocabulary of {len(tokens)} agree with llama.cpp's gguf {version} reader and name map")


if __name__ == "__main__":
    main()
