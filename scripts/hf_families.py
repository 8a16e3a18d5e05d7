#!/usr/bin/env python3
"""Write golden fixtures, made by Hugging Face transformers, for the model families btx supports
beyond plain Llama/Mixtral: RoPE scalings (llama3, linear in the transformers 4.x spelling,
dynamic NTK, YaRN), Mistral's sliding window, Qwen2 (q/k/v biases), Qwen3 (per-head q/k RMSNorm,
head_dim != hidden/heads), bf16 sharded checkpoints, and greedy cached generation.

    /work/pyenv/bin/python scripts/hf_families.py [--out testdata/hf-family] \
        [--defaults testdata/hf-defaults] [--only CASE ...]

Each case is written to `<out>/<case>/`:
  model/                    save_pretrained output (config.json, generation_config.json,
                            model.safetensors or shards + model.safetensors.index.json)
  reference.safetensors     input_ids (i64 [B,T]), logits (f32 [B,T,V]), lm_loss (f32 [1], mean
                            CE of logits[:, :-1] vs input_ids[:, 1:]), grad.<on-disk name> for
                            every parameter (f32), gen.prompt (i64 [1,5]) and gen.tokens (i64
                            [1,12]: the 12 new tokens of greedy cached `generate`, eos disabled)
The fixture format is that of scripts/hf_parity.py (same random init: norms 1 + 0.2 N(0,1), other
weights 0.08 N(0,1); biases 0.2 N(0,1)). bf16 cases round the parameters to bf16 first, so the f32
reference uses exactly the values stored on disk. Some configs are rewritten by hand into the
transformers 4.x spelling (top-level rope_theta, rope_scaling, torch_dtype) that hub checkpoints
use; every written checkpoint is reloaded with transformers and must reproduce the reference logits.

It also writes `<defaults>/<ConfigClass>.json`: `Cls().to_dict()` of transformers for Llama,
Mistral, Mixtral, Qwen2, Qwen2Moe, Qwen3 and Qwen3Moe (every default, rope_parameters as
standardized), and prints what transformers does with MoE checkpoints (on-disk expert tensor names,
a Qwen2Moe with shared_expert_intermediate_size=0).

Everything is seeded: rerunning writes the same tensors. Needs torch, transformers (5.25) and
safetensors (dev-only; tests never run this script; its outputs are committed under testdata/).
"""
import argparse, copy, json, math, os, shutil, sys, tempfile

import torch
from safetensors.torch import save_file, load_file
import transformers
from transformers import (
    GenerationConfig,
    LlamaConfig, LlamaForCausalLM,
    MistralConfig, MistralForCausalLM,
    MixtralConfig, MixtralForCausalLM,
    Qwen2Config, Qwen2ForCausalLM,
    Qwen2MoeConfig, Qwen2MoeForCausalLM,
    Qwen3Config, Qwen3ForCausalLM,
    Qwen3MoeConfig, Qwen3MoeForCausalLM,
)
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

FAMILIES = {
    "llama": (LlamaConfig, LlamaForCausalLM),
    "mistral": (MistralConfig, MistralForCausalLM),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM),
}

GEN_PROMPT_LEN, GEN_NEW = 5, 12
MIN_GAP = 1e-3

LLAMA3_ROPE = dict(rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0,
                   high_freq_factor=4.0, original_max_position_embeddings=64)

# name, family, config kwargs, options. Options: bf16 (round + store bf16), shard (max_shard_size),
# v4 (rewrite config.json into the transformers 4.x spelling), BT, seed, out_scale (init_params).
CASES = [
    ("llama3-rope", "llama", dict(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
        rms_norm_eps=1e-5, tie_word_embeddings=True, rope_parameters=dict(LLAMA3_ROPE)),
     dict(seed=111, out_scale=4.0)),
    ("llama-linear-v4", "llama", dict(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        rms_norm_eps=1e-6, tie_word_embeddings=False,
        rope_parameters=dict(rope_type="linear", factor=2.0, rope_theta=10000.0)),
     dict(seed=12, v4="linear")),
    ("llama-dynamic", "llama", dict(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        rms_norm_eps=1e-5, tie_word_embeddings=True,
        rope_parameters=dict(rope_type="dynamic", factor=2.0, rope_theta=10000.0)),
     dict(seed=13, out_scale=4.0)),
    ("llama-yarn", "llama", dict(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=128,
        rms_norm_eps=1e-5, tie_word_embeddings=True,
        rope_parameters=dict(rope_type="yarn", rope_theta=10000.0, factor=4.0,
                             original_max_position_embeddings=32, beta_fast=32.0, beta_slow=1.0)),
     dict(seed=14, out_scale=4.0)),
    ("llama-yarn-attnfactor", "llama", dict(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=128,
        rms_norm_eps=1e-5, tie_word_embeddings=True,
        rope_parameters=dict(rope_type="yarn", rope_theta=10000.0, factor=4.0,
                             original_max_position_embeddings=32, beta_fast=32.0, beta_slow=1.0,
                             attention_factor=0.8, truncate=False)),
     dict(seed=15, out_scale=4.0)),
    ("mistral-window", "mistral", dict(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        rms_norm_eps=1e-5, tie_word_embeddings=False, sliding_window=32,
        rope_parameters=dict(rope_type="default", rope_theta=10000.0)),
     dict(seed=16)),
    ("qwen2-tied", "qwen2", dict(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        rms_norm_eps=1e-6, tie_word_embeddings=True, use_sliding_window=False,
        sliding_window=4096, max_window_layers=1,
        rope_parameters=dict(rope_type="default", rope_theta=1000000.0)),
     dict(seed=117, out_scale=4.0, v4="qwen2")),
    ("qwen2-untied-bf16-sharded", "qwen2", dict(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        rms_norm_eps=1e-6, tie_word_embeddings=False, use_sliding_window=False,
        sliding_window=4096, max_window_layers=1,
        rope_parameters=dict(rope_type="default", rope_theta=1000000.0)),
     dict(seed=18, bf16=True, shard="20KB")),
    ("qwen3", "qwen3", dict(
        vocab_size=100, hidden_size=48, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
        rms_norm_eps=1e-6, tie_word_embeddings=True,
        rope_parameters=dict(rope_type="default", rope_theta=1000000.0)),
     dict(seed=19)),
    ("qwen3-bf16-sharded", "qwen3", dict(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=256,
        rms_norm_eps=1e-6, tie_word_embeddings=False,
        rope_parameters=dict(rope_type="default", rope_theta=1000000.0)),
     dict(seed=20, bf16=True, shard="20KB", v4="qwen3")),
    ("llama3-bf16-sharded", "llama", dict(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=32, max_position_embeddings=256,
        rms_norm_eps=1e-5, tie_word_embeddings=False,
        rope_parameters=dict(LLAMA3_ROPE, original_max_position_embeddings=128)),
     dict(seed=21, bf16=True, shard="20KB", v4="llama3")),
]


def init_params(model, seed, out_scale=1.0):
    """hf_parity.py's scheme: RMSNorm weights (incl. Qwen3 q_norm/k_norm) 1 + 0.2 N(0,1), biases
    0.2 N(0,1), every other weight 0.08 N(0,1); o_proj and down_proj weights times `out_scale`
    (used for tied-embedding cases: with small residual branches a tied model's greedy decoding
    just repeats the last token, since its own embedding dominates the final hidden state)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith("o_proj.weight") or name.endswith("down_proj.weight"):
                p.copy_(0.08 * out_scale * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.08 * torch.randn(p.shape, generator=g))


def reference(model, vocab, B, T, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (B, T), generator=g)
    ref = {"input_ids": ids.to(torch.int64)}
    model.zero_grad()
    o = model(input_ids=ids)
    ref["logits"] = o.logits.detach()
    lm = torch.nn.functional.cross_entropy(o.logits[:, :-1].reshape(-1, vocab), ids[:, 1:].reshape(-1))
    ref["lm_loss"] = lm.detach().reshape(1)
    lm.backward()
    for n, p in model.named_parameters():
        gr = p.grad.detach().clone()
        assert gr.abs().max() > 0, f"{n}: all-zero gradient"
        ref["grad." + n] = gr
    model.zero_grad()
    return ref


def greedy(model, prompt):
    """Greedy cached generation of exactly GEN_NEW tokens (eos disabled); returns the new tokens and
    the top-2 gap of the raw logits at each step."""
    model.generation_config.eos_token_id = None
    gc = GenerationConfig(max_new_tokens=GEN_NEW, min_new_tokens=GEN_NEW, do_sample=False,
                          use_cache=True, eos_token_id=None, pad_token_id=0, num_beams=1,
                          output_logits=True, return_dict_in_generate=True)
    with torch.no_grad():
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), generation_config=gc)
    seq = out.sequences
    assert seq.shape == (1, GEN_PROMPT_LEN + GEN_NEW), seq.shape
    new = seq[:, GEN_PROMPT_LEN:]
    gaps = []
    for l in out.logits:
        top = torch.topk(l[0].float(), 2).values
        gaps.append((top[0] - top[1]).item())
    # The same tokens from a plain uncached argmax loop over full forwards.
    ids = prompt.clone()
    with torch.no_grad():
        for _ in range(GEN_NEW):
            nxt = model(input_ids=ids, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], dim=1)
    assert torch.equal(ids[:, GEN_PROMPT_LEN:], new), "cached generate != uncached greedy loop"
    return new, gaps


def pick_generation(model, vocab, seed, eos, tries=32):
    """Deterministically picks, among `tries` random prompts, the one whose greedy continuation
    has at least 3 distinct tokens and no eos token of config.json; then prefers a smallest top-2
    logit gap above 5 * MIN_GAP (it must exceed MIN_GAP), the most token changes (counted up to
    4), and the largest smallest gap."""
    cands = []
    for k in range(tries):
        g = torch.Generator().manual_seed(seed * 1000 + k)
        prompt = torch.randint(0, vocab, (1, GEN_PROMPT_LEN), generator=g).to(torch.int64)
        new, gaps = greedy(model, prompt)
        t = new[0].tolist()
        distinct, changes = len(set(t)), sum(a != b for a, b in zip(t, t[1:]))
        if os.environ.get("HF_FAMILIES_DEBUG"):
            print("   prompt", k, t, f"gap {min(gaps):.4f}")
        if distinct >= 3 and min(gaps) > MIN_GAP and not set(t) & eos:
            cands.append(((min(gaps) > 5 * MIN_GAP, min(changes, 4), min(gaps)), prompt, new, min(gaps), distinct, k))
    assert cands, "no prompt gives a non-degenerate greedy sequence"
    best = max(cands, key=lambda c: c[0])
    return best[1:]


def on_disk_names(model_dir):
    idx = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(idx):
        with open(idx) as f:
            wm = json.load(f)["weight_map"]
        files = sorted(set(wm.values()))
    else:
        files = ["model.safetensors"]
    tensors = {}
    for fn in files:
        tensors.update(load_file(os.path.join(model_dir, fn)))
    return tensors, files


def rewrite_v4(model_dir, kind):
    """Rewrite config.json into the transformers 4.x spelling used by hub checkpoints."""
    p = os.path.join(model_dir, "config.json")
    with open(p) as f:
        cfg = json.load(f)
    rp = cfg.pop("rope_parameters")
    cfg["rope_theta"] = rp.pop("rope_theta")
    if kind == "linear":  # old Llama-2-era spelling: "type", not "rope_type"
        assert rp == {"rope_type": "linear", "factor": 2.0}, rp
        cfg["rope_scaling"] = {"type": "linear", "factor": 2.0}
    elif kind == "llama3":  # as in Llama-3.2-1B's config.json
        assert rp.pop("rope_type") == "llama3"
        cfg["rope_scaling"] = {"rope_type": "llama3", **rp}
    elif kind in ("qwen2", "qwen3"):  # as in Qwen2.5 / Qwen3 config.json: no scaling
        assert rp == {"rope_type": "default"}, rp
        cfg["rope_scaling"] = None
        cfg.pop("layer_types", None)
        if kind == "qwen2":  # Qwen2.5 configs keep a number here while use_sliding_window is false
            assert cfg["sliding_window"] is None and cfg["use_sliding_window"] is False
            cfg["sliding_window"] = 4096
    else:
        raise ValueError(kind)
    cfg["torch_dtype"] = cfg.pop("dtype")
    cfg["transformers_version"] = "4.51.3"
    with open(p, "w") as f:
        json.dump(dict(sorted(cfg.items())), f, indent=2)
        f.write("\n")


def rope_report(name, model, cfg):
    """Prints (and checks) what the scaled RoPE does to inv_freq; returns a short summary."""
    rot = model.model.rotary_emb
    rp = cfg.rope_parameters
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    base = rp["rope_theta"]
    plain = 1.0 / (base ** (torch.arange(0, hd, 2, dtype=torch.int64).float() / hd))
    inv = rot.inv_freq.float()
    t = rp["rope_type"]
    if t == "llama3":
        f = rp["factor"]
        kept = torch.isclose(inv, plain, rtol=0, atol=0)
        divided = torch.isclose(inv, plain / f, rtol=1e-7, atol=0)
        smoothed = ~kept & ~divided
        counts = (int(kept.sum()), int(smoothed.sum()), int(divided.sum()))
        wl = 2 * math.pi / plain
        print(f"  llama3 head_dim {hd} original_max {rp['original_max_position_embeddings']}: "
              f"wavelengths {[round(x, 1) for x in wl.tolist()]}")
        print(f"  llama3 bands: high-freq kept {counts[0]}, smoothed {counts[1]}, low-freq /factor {counts[2]}")
        assert all(c > 0 for c in counts), counts
        return f"bands kept/smoothed/divided = {counts[0]}/{counts[1]}/{counts[2]}"
    if t == "yarn":
        # inv = interp * (1 - e) + extrap * e with interp = plain / factor, extrap = plain
        e = (inv - plain / rp["factor"]) / (plain - plain / rp["factor"])
        print(f"  yarn attention_scaling {rot.attention_scaling:.6f}; extrapolation weight per "
              f"frequency {[round(x, 4) for x in e.tolist()]}")
        return f"attention_scaling {rot.attention_scaling:.6f}, extrapolation weights {[round(x, 3) for x in e.tolist()]}"
    if t == "linear":
        assert torch.allclose(inv, plain / rp["factor"])
        return "inv_freq = plain / 2"
    if t == "dynamic":
        assert torch.equal(inv, plain), (inv, plain)
        return "inv_freq == plain inv_freq at init"
    return ""


def dynamic_check(model, cfg, ref):
    """Is dynamic NTK, within max_position_embeddings, the default RoPE? And beyond it?"""
    dcfg = copy.deepcopy(cfg)
    dcfg.rope_parameters = {"rope_type": "default", "rope_theta": cfg.rope_parameters["rope_theta"]}
    plain = LlamaForCausalLM(dcfg).eval()
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        same = (plain(input_ids=ref["input_ids"]).logits - ref["logits"]).abs().max().item()
        long_ids = torch.randint(0, cfg.vocab_size, (1, 80), generator=torch.Generator().manual_seed(5))
        dyn = copy.deepcopy(model)
        beyond = (plain(input_ids=long_ids).logits - dyn(input_ids=long_ids).logits).abs().max().item()
        # After that long forward the dynamic model's inv_freq was recomputed; a short forward resets it.
        again = (dyn(input_ids=ref["input_ids"]).logits - ref["logits"]).abs().max().item()
    print(f"  dynamic vs default rope: T={ref['input_ids'].shape[1]} (<= max_pos {cfg.max_position_embeddings}) "
          f"max|dlogits| = {same:.3e}; T=80 (> max_pos) max|dlogits| = {beyond:.3e}; "
          f"short forward after long one: {again:.3e}")
    return same, beyond, again


def make_case(name, family, kw, opt, out_root):
    Cfg, Model = FAMILIES[family]
    seed = opt["seed"]
    torch.manual_seed(seed)
    cfg = Cfg(**copy.deepcopy(kw), attn_implementation="eager")
    model = Model(cfg)
    init_params(model, seed, opt.get("out_scale", 1.0))
    model = model.float().eval()
    d = os.path.join(out_root, name)
    if os.path.exists(d):
        shutil.rmtree(d)
    mdir = os.path.join(d, "model")
    shard = opt.get("shard", "5GB")
    if opt.get("bf16"):
        # Round the parameters only (model.to(bf16) would also round the RoPE buffer), then save a
        # bf16 copy: the f32 reference below uses exactly the values on disk.
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.to(torch.bfloat16).float())
        copy.deepcopy(model).to(torch.bfloat16).save_pretrained(mdir, max_shard_size=shard)
    else:
        model.save_pretrained(mdir, max_shard_size=shard)
    if opt.get("v4"):
        rewrite_v4(mdir, opt["v4"])

    B, T = opt.get("BT", (2, 24))
    ref = reference(model, cfg.vocab_size, B, T, seed + 77)
    extra = rope_report(name, model, cfg)
    dyn = dynamic_check(model, cfg, ref) if cfg.rope_parameters["rope_type"] == "dynamic" else None

    # On-disk names == gradient names, dtype as intended; the reloaded checkpoint reproduces the logits.
    tensors, files = on_disk_names(mdir)
    grads = {k[len("grad."):] for k in ref if k.startswith("grad.")}
    assert set(tensors) == grads, (set(tensors) ^ grads)
    want = torch.bfloat16 if opt.get("bf16") else torch.float32
    assert all(t.dtype == want for t in tensors.values())
    params = dict(model.named_parameters())
    for k, t in tensors.items():
        assert torch.equal(t.float(), params[k].detach()), k
    re = Model.from_pretrained(mdir, dtype=torch.float32, attn_implementation="eager").eval()
    loaded_rope = {k: v for k, v in re.config.rope_parameters.items() if k != "type"}
    assert loaded_rope == cfg.rope_parameters, (re.config.rope_parameters, cfg.rope_parameters)
    if opt.get("v4"):
        print(f"  4.x-spelling config.json reloads with rope_parameters {re.config.rope_parameters}, "
              f"sliding_window {getattr(re.config, 'sliding_window', '-')}, "
              f"layer_types {getattr(re.config, 'layer_types', '-')}")
    with torch.no_grad():
        reload_diff = (re(input_ids=ref["input_ids"]).logits - ref["logits"]).abs().max().item()
    assert reload_diff == 0.0, f"{name}: reloaded checkpoint differs by {reload_diff}"

    eos = cfg.eos_token_id if isinstance(cfg.eos_token_id, list) else [cfg.eos_token_id]
    prompt, new, gap, distinct, k = pick_generation(model, cfg.vocab_size, seed, set(eos) - {None})
    re_new, _ = greedy(re, prompt)
    assert torch.equal(re_new, new)
    ref["gen.prompt"] = prompt
    ref["gen.tokens"] = new.to(torch.int64)
    save_file({k: v.contiguous() for k, v in ref.items()}, os.path.join(d, "reference.safetensors"))
    size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(d) for f in fs)
    print(f"{name}: {family} V{cfg.vocab_size} d{cfg.hidden_size} L{cfg.num_hidden_layers} "
          f"h{cfg.num_attention_heads}/kv{cfg.num_key_value_heads} hd{getattr(cfg, 'head_dim', None)} "
          f"I{cfg.intermediate_size} tied={cfg.tie_word_embeddings} rope={cfg.rope_parameters} "
          f"{'bf16 ' if opt.get('bf16') else ''}{len(files)} file(s) {'config 4.x-spelling ' if opt.get('v4') else ''}"
          f"| B,T={B},{T} loss {ref['lm_loss'].item():.4f} | gen prompt#{k} {prompt[0].tolist()} -> "
          f"{new[0].tolist()} ({distinct} distinct) smallest top-2 gap {gap:.4f} | {size / 1024:.0f} KiB")
    return dict(name=name, gap=gap, extra=extra, size=size, dyn=dyn)


DEFAULT_CLASSES = [LlamaConfig, MistralConfig, MixtralConfig, Qwen2Config, Qwen2MoeConfig,
                   Qwen3Config, Qwen3MoeConfig]


def write_defaults(root):
    os.makedirs(root, exist_ok=True)
    for Cls in DEFAULT_CLASSES:
        d = Cls().to_dict()
        with open(os.path.join(root, f"{Cls.__name__}.json"), "w") as f:
            json.dump(d, f, indent=2, sort_keys=True)
            f.write("\n")
        keys = ["rope_parameters", "tie_word_embeddings", "sliding_window", "use_sliding_window",
                "max_window_layers", "norm_topk_prob", "decoder_sparse_step", "mlp_only_layers",
                "shared_expert_intermediate_size", "moe_intermediate_size", "num_experts",
                "num_experts_per_tok", "num_local_experts", "qkv_bias", "attention_bias", "head_dim",
                "rms_norm_eps", "router_aux_loss_coef", "layer_types"]
        print(f"{Cls.__name__}: " + ", ".join(f"{k}={d[k]!r}" for k in keys if k in d))


def moe_findings():
    """Prints what transformers writes for MoE checkpoints and tries shared_expert_intermediate_size=0."""
    tmp = tempfile.mkdtemp(prefix="btx-moe-")
    small = dict(vocab_size=64, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                 num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                 attn_implementation="eager", experts_implementation="eager")
    variants = [
        ("qwen2_moe", Qwen2MoeConfig(**small, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=8,
                                     shared_expert_intermediate_size=12, mlp_only_layers=[1]), Qwen2MoeForCausalLM),
        ("qwen2_moe-shared0", Qwen2MoeConfig(**small, num_experts=4, num_experts_per_tok=2,
                                             moe_intermediate_size=8, shared_expert_intermediate_size=0),
         Qwen2MoeForCausalLM),
        ("qwen3_moe", Qwen3MoeConfig(**small, head_dim=8, num_experts=4, num_experts_per_tok=2,
                                     moe_intermediate_size=8, norm_topk_prob=True), Qwen3MoeForCausalLM),
        ("mixtral", MixtralConfig(**small, num_local_experts=4, num_experts_per_tok=2), MixtralForCausalLM),
    ]
    for name, cfg, Model in variants:
        torch.manual_seed(0)
        try:
            m = Model(cfg).float().eval()
            init_params(m, 3)
            ids = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(1))
            o = m(input_ids=ids)
            o.logits.sum().backward()
            sg = [p.grad.abs().max().item() for n, p in m.named_parameters() if n.endswith("shared_expert_gate.weight")]
            if sg:
                print(f"[{name}] max |grad| of shared_expert_gate.weight per MoE layer: {sg}")
            print(f"[{name}] in-memory parameters (layer 0/1 mlp): " + ", ".join(
                f"{n}{list(p.shape)}" for n, p in m.named_parameters() if ".mlp." in n and ("layers.0." in n or "layers.1." in n)))
            d = os.path.join(tmp, name)
            m.save_pretrained(d)
            sd = load_file(os.path.join(d, "model.safetensors"))
            with open(os.path.join(d, "config.json")) as f:
                cj = json.load(f)
            print(f"[{name}] config.json: " + ", ".join(f"{k}={cj[k]!r}" for k in (
                "num_experts", "num_local_experts", "num_experts_per_tok", "norm_topk_prob", "head_dim",
                "shared_expert_intermediate_size", "decoder_sparse_step", "mlp_only_layers", "sliding_window",
                "qkv_bias") if k in cj))
            print(f"[{name}] on disk (layers.0/1 mlp): " + ", ".join(
                f"{k}{list(v.shape)}" for k, v in sorted(sd.items()) if ".mlp." in k or "block_sparse_moe" in k))
            re = Model.from_pretrained(d, dtype=torch.float32, attn_implementation="eager",
                                       experts_implementation="eager").eval()
            with torch.no_grad():
                diff = (re(input_ids=ids).logits - o.logits).abs().max().item()
            print(f"[{name}] forward+backward ok; save_pretrained/from_pretrained round trip max|dlogits| = {diff:.3e}")
        except Exception as e:  # a finding, not a failure of the script
            print(f"[{name}] FAILED: {type(e).__name__}: {e}")
    shutil.rmtree(tmp)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="testdata/hf-family")
    ap.add_argument("--defaults", default="testdata/hf-defaults")
    ap.add_argument("--only", nargs="*", default=None, help="case names to (re)write")
    ap.add_argument("--no-moe", action="store_true", help="skip the MoE findings")
    args = ap.parse_args()
    transformers.utils.logging.disable_progress_bar()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    os.makedirs(args.out, exist_ok=True)
    results = []
    for name, family, kw, opt in CASES:
        if args.only and name not in args.only:
            continue
        results.append(make_case(name, family, kw, opt, args.out))
    print("\nsummary:")
    for r in results:
        print(f"  {r['name']:<28} smallest gen gap {r['gap']:.4f}  {r['size'] / 1024:6.0f} KiB  {r['extra']}")
    if args.defaults and not args.only:
        print("\nconfig defaults:")
        write_defaults(args.defaults)
    if not args.no_moe and not args.only:
        print("\nMoE findings:")
        moe_findings()


if __name__ == "__main__":
    main()
