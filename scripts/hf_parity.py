#!/usr/bin/env python3
"""Check `btx forward` against Hugging Face transformers on checkpoints btx has never seen.

Makes random Llama and Mixtral configs (sizes, GQA ratios, tied embeddings, rope_theta,
head_dim, expert counts, top-k, sharded safetensors, bf16 weights), saves each with
transformers, records the reference outputs (logits, losses, router logits, every gradient)
and compares `btx forward --backward` with them.

    python3 scripts/hf_parity.py --btx target/release/btx --cases 8 [--out DIR] [--seed 0]

Needs torch, transformers and safetensors (dev-only; tests never run this script; the
fixtures it can write with --keep are committed under testdata/).
"""
import argparse, json, os, random, subprocess, sys, tempfile
import torch
from safetensors.torch import save_file, load_file
from transformers import LlamaConfig, LlamaForCausalLM, MixtralConfig, MixtralForCausalLM


def lb_paper(router_logits, k):
    out = []
    for rl in router_logits:
        n = rl.shape[-1]
        probs = torch.softmax(rl, dim=-1)
        topv, topi = torch.topk(rl, k, dim=-1)
        gates = torch.zeros_like(rl).scatter(-1, topi, torch.softmax(topv, dim=-1))
        out.append(n * (gates.mean(0) * probs.mean(0)).sum())
    return torch.stack(out)


def make_case(rng, idx):
    heads = rng.choice([2, 3, 4, 6, 8])
    kv = rng.choice([h for h in range(1, heads + 1) if heads % h == 0])
    head_dim = rng.choice([8, 12, 16])
    hidden = rng.choice([head_dim * heads, 48, 80]) if idx % 3 == 0 else head_dim * heads
    common = dict(
        vocab_size=rng.choice([97, 256, 300, 513]), hidden_size=hidden,
        intermediate_size=rng.choice([40, 96, 130]), num_hidden_layers=rng.choice([1, 2, 3]),
        num_attention_heads=heads, num_key_value_heads=kv, head_dim=head_dim,
        max_position_embeddings=256, rms_norm_eps=rng.choice([1e-5, 1e-6]),
        tie_word_embeddings=rng.random() < 0.5, rope_theta=rng.choice([1e4, 5e5, 1e6]),
    )
    moe = idx % 2 == 1
    if moe:
        e = rng.choice([2, 3, 5, 8])
        cfg = MixtralConfig(**common, num_local_experts=e, num_experts_per_tok=rng.randint(1, min(e, 3)),
                            router_aux_loss_coef=0.01, attn_implementation="eager",
                            experts_implementation="eager")
        model = MixtralForCausalLM(cfg)
    else:
        cfg = LlamaConfig(**common, attn_implementation="eager")
        model = LlamaForCausalLM(cfg)
    g = torch.Generator().manual_seed(1000 + idx)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif ".gate.weight" in name and "gate_proj" not in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.08 * torch.randn(p.shape, generator=g))
    return model.float(), cfg, moe


def reference(model, cfg, moe, B, T, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, cfg.vocab_size, (B, T), generator=g)
    ref = {"input_ids": ids.to(torch.int64)}
    model.zero_grad()
    o = model(input_ids=ids, output_router_logits=moe) if moe else model(input_ids=ids)
    ref["logits"] = o.logits.detach()
    lm = torch.nn.functional.cross_entropy(o.logits[:, :-1].reshape(-1, cfg.vocab_size), ids[:, 1:].reshape(-1))
    ref["lm_loss"] = lm.detach().reshape(1)
    total = lm
    if moe:
        for l, r in enumerate(o.router_logits):
            ref[f"router_logits.{l}"] = r.detach()
        ref["hf_aux_loss"] = o.aux_loss.detach().reshape(1)
        lbp = lb_paper(list(o.router_logits), cfg.num_experts_per_tok)
        ref["lb_paper_per_layer"] = lbp.detach()
        total = lm + 0.01 * lbp.sum()
        ref["total_loss"] = total.detach().reshape(1)
    total.backward()
    for n, p in model.named_parameters():
        gr = p.grad.detach().clone()
        if n.endswith("mlp.experts.gate_up_proj"):
            pre = n[: -len("mlp.experts.gate_up_proj")] + "block_sparse_moe.experts."
            inter = gr.shape[1] // 2
            for e in range(gr.shape[0]):
                ref[f"grad.{pre}{e}.w1.weight"] = gr[e, :inter].clone()
                ref[f"grad.{pre}{e}.w3.weight"] = gr[e, inter:].clone()
        elif n.endswith("mlp.experts.down_proj"):
            pre = n[: -len("mlp.experts.down_proj")] + "block_sparse_moe.experts."
            for e in range(gr.shape[0]):
                ref[f"grad.{pre}{e}.w2.weight"] = gr[e].clone()
        elif n.endswith("mlp.gate.weight") and moe:
            ref["grad." + n.replace("mlp.gate.weight", "block_sparse_moe.gate.weight")] = gr
        else:
            ref["grad." + n] = gr
    return {k: v.contiguous() for k, v in ref.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--btx", default="target/release/btx")
    ap.add_argument("--cases", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="keep the cases here (default: a temp dir)")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    root = args.out or tempfile.mkdtemp(prefix="btx-hf-parity-")
    worst = {}
    failed = 0
    for i in range(args.cases):
        model, cfg, moe = make_case(rng, i)
        d = os.path.join(root, f"case{i:02d}")
        shard = "100KB" if i % 4 == 3 else "5GB"
        model.save_pretrained(os.path.join(d, "model"), max_shard_size=shard)
        if i % 4 == 2:  # a bf16 checkpoint: btx reads it as f32, the reference uses the same values
            # Round the parameters only (model.to(bf16) would also round the RoPE buffer).
            with torch.no_grad():
                for p in model.parameters():
                    p.copy_(p.to(torch.bfloat16).float())
            model.save_pretrained(os.path.join(d, "model"), max_shard_size=shard)
            sd = load_file(os.path.join(d, "model", "model.safetensors"))
            save_file({k: v.to(torch.bfloat16) for k, v in sd.items()}, os.path.join(d, "model", "model.safetensors"), metadata={"format": "pt"})
        B, T = rng.choice([(1, 7), (2, 16), (3, 33)])
        ref = reference(model, cfg, moe, B, T, 77 + i)
        save_file(ref, os.path.join(d, "reference.safetensors"))
        out = subprocess.run([args.btx, "forward", "--model", os.path.join(d, "model"),
                              "--input", os.path.join(d, "reference.safetensors"),
                              "--out", os.path.join(d, "btx.safetensors"), "--backward",
                              "--compare", os.path.join(d, "reference.safetensors")],
                             capture_output=True, text=True)
        if out.returncode != 0:
            print(f"case {i}: btx failed\n{out.stderr}")
            failed += 1
            continue
        desc = (f"{'mixtral' if moe else 'llama'} L{cfg.num_hidden_layers} d{cfg.hidden_size} "
                f"h{cfg.num_attention_heads}/kv{cfg.num_key_value_heads} hd{cfg.head_dim} "
                f"tied={cfg.tie_word_embeddings} theta={cfg.rope_parameters['rope_theta']:g}"
                + (f" E{cfg.num_local_experts} k{cfg.num_experts_per_tok}" if moe else "")
                + (" sharded" if shard != "5GB" else "") + (" bf16" if i % 4 == 2 else ""))
        case_worst = {"logits": 0.0, "loss": 0.0, "router": 0.0, "grad": 0.0}
        bad = []
        for line in out.stdout.splitlines()[1:]:
            parts = line.split()
            if len(parts) != 3:
                bad.append(line)
                continue
            name, mx, rel = parts[0], float(parts[1]), float(parts[2])
            if name == "logits":
                key, val, ok = "logits", mx, mx <= 1e-4
            elif name.startswith("router_logits"):
                key, val, ok = "router", mx, mx <= 1e-4
            elif name.startswith("grad."):
                key, val, ok = "grad", rel, rel <= 1e-3
            else:
                key, val, ok = "loss", rel, rel <= 1e-5
            case_worst[key] = max(case_worst[key], val)
            if not ok:
                bad.append(line)
        for k, v in case_worst.items():
            worst[k] = max(worst.get(k, 0.0), v)
        status = "ok" if not bad else "FAIL"
        failed += bool(bad)
        print(f"case {i}: {status:4} {desc} | logits {case_worst['logits']:.1e} loss(rel) {case_worst['loss']:.1e} "
              f"router {case_worst['router']:.1e} grad(rel) {case_worst['grad']:.1e}")
        for b in bad:
            print("    ", b)
    print(f"worst over {args.cases} cases: " + ", ".join(f"{k} {v:.2e}" for k, v in worst.items()))
    print(f"cases kept in {root}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
