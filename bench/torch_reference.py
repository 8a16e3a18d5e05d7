#!/usr/bin/env python3
"""PyTorch reference for `btx bench train`: the same presets, the same model and the same step
(forward, backward, AdamW), so that tokens/s can be compared in one run.

    python3 bench/torch_reference.py --preset S|MoE-S|M|SmolLM2|MoE-SmolLM2 [--threads T]
        [--steps N] [--warmup W] [--device cpu|cuda] [--compile] [--dtype f32|bf16]
        [--peak-tflops P] [--json]

Optional dependency: torch. `btx bench compare` runs this beside btx (on a GPU: eager and
torch.compile). bf16 = autocast (bf16 matmuls, f32 master weights and AdamW state).
Model (as btx): Llama decoder, RMSNorm eps 1e-5, rotate-half RoPE (theta 1e4), causal softmax
attention (grouped-query where kv_heads < heads), SwiGLU FFN, LM head untied unless the preset
ties it, mean next-token cross-entropy; MoE presets: 4 experts, top-2 (softmax over the top-2
logits), sparse dispatch, the BTX paper's load balancing x 0.01. SmolLM2 = the SmolLM2-135M
shape (GPU-sized; the same as `btx bench train --preset SmolLM2`).
"""
import argparse, json, math, resource, sys, time

import torch
import torch.nn.functional as F

PRESETS = {
    "S": dict(vocab=4096, d=256, layers=4, heads=4, ffn=704, seq=256, batch=8, experts=0),
    "MoE-S": dict(vocab=4096, d=256, layers=4, heads=4, ffn=704, seq=256, batch=8, experts=4),
    "M": dict(vocab=8192, d=512, layers=8, heads=8, ffn=1376, seq=256, batch=4, experts=0),
    "SmolLM2": dict(vocab=49152, d=576, layers=30, heads=9, kv_heads=3, ffn=1536, seq=2048,
                    batch=8, experts=0, tied=True),
    "MoE-SmolLM2": dict(vocab=49152, d=576, layers=30, heads=9, kv_heads=3, ffn=1536, seq=2048,
                        batch=8, experts=4, tied=True),
}


def rms(x, w):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * w


def rope(x, cos, sin):
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)


class Ffn(torch.nn.Module):
    def __init__(s, d, f):
        super().__init__()
        s.w1 = torch.nn.Linear(d, f, bias=False)
        s.w3 = torch.nn.Linear(d, f, bias=False)
        s.w2 = torch.nn.Linear(f, d, bias=False)

    def forward(s, x):
        return s.w2(F.silu(s.w1(x)) * s.w3(x))


class Moe(torch.nn.Module):
    def __init__(s, d, f, e, k=2):
        super().__init__()
        s.router = torch.nn.Linear(d, e, bias=False)
        s.experts = torch.nn.ModuleList([Ffn(d, f) for _ in range(e)])
        s.k, s.e = k, e

    def forward(s, x):
        logits = s.router(x)
        probs = logits.softmax(-1)
        topv, topi = logits.topk(s.k, -1)
        gates = topv.softmax(-1)
        sparse = torch.zeros_like(probs).scatter(-1, topi, gates)
        out = torch.zeros_like(x)
        flat_i, flat_g = topi.reshape(-1), gates.reshape(-1)
        tok = torch.arange(x.shape[0], device=x.device).repeat_interleave(s.k)
        for e, ex in enumerate(s.experts):
            m = (flat_i == e).nonzero().squeeze(1)
            if m.numel() == 0:
                continue
            ids = tok[m]
            out = out.index_add(0, ids, ex(x.index_select(0, ids)) * flat_g[m].unsqueeze(1))
        lb = s.e * (sparse.mean(0) * probs.mean(0)).sum()
        return out, lb


class Model(torch.nn.Module):
    def __init__(s, c):
        super().__init__()
        s.c = c
        d = c["d"]
        hd = d // c["heads"]
        kv = c.get("kv_heads", c["heads"]) * hd
        s.emb = torch.nn.Embedding(c["vocab"], d)
        s.layers = torch.nn.ModuleList()
        for _ in range(c["layers"]):
            L = torch.nn.Module()
            L.ln1 = torch.nn.Parameter(torch.ones(d))
            L.ln2 = torch.nn.Parameter(torch.ones(d))
            L.wq, L.wo = [torch.nn.Linear(d, d, bias=False) for _ in range(2)]
            L.wk, L.wv = [torch.nn.Linear(d, kv, bias=False) for _ in range(2)]
            L.ffn = Moe(d, c["ffn"], c["experts"]) if c["experts"] else Ffn(d, c["ffn"])
            s.layers.append(L)
        s.lnf = torch.nn.Parameter(torch.ones(d))
        s.head = torch.nn.Linear(d, c["vocab"], bias=False)
        for p in s.parameters():
            if p.dim() == 2:
                torch.nn.init.normal_(p, 0, 0.02)
        if c.get("tied"):
            s.head.weight = s.emb.weight
        T = c["seq"]
        inv = 1.0 / (10000 ** (torch.arange(0, hd // 2).float() * 2 / hd))
        ang = torch.arange(T).float()[:, None] * inv[None]
        s.register_buffer("cos", ang.cos())
        s.register_buffer("sin", ang.sin())
        s.register_buffer("mask", torch.triu(torch.full((T, T), -1e30), 1))

    def forward(s, inp, tgt):
        c = s.c
        B, T = inp.shape
        d, H = c["d"], c["heads"]
        hd = d // H
        KV = c.get("kv_heads", H)
        x = s.emb(inp).reshape(B * T, d)
        aux = 0.0
        for L in s.layers:
            h = rms(x, L.ln1)
            sp = lambda w, n: w(h).reshape(B, T, n, hd).transpose(1, 2)
            q, k, v = rope(sp(L.wq, H), s.cos, s.sin), rope(sp(L.wk, KV), s.cos, s.sin), sp(L.wv, KV)
            if KV < H:
                k, v = k.repeat_interleave(H // KV, 1), v.repeat_interleave(H // KV, 1)
            att = (q @ k.transpose(-1, -2) / math.sqrt(hd) + s.mask).softmax(-1)
            x = x + L.wo((att @ v).transpose(1, 2).reshape(B * T, d))
            h = rms(x, L.ln2)
            if c["experts"]:
                o, a = L.ffn(h)
                aux = aux + a
            else:
                o = L.ffn(h)
            x = x + o
        logits = s.head(rms(x, s.lnf))
        return F.cross_entropy(logits, tgt.reshape(-1)) + 0.01 * aux


def flops_per_token(c):
    """Training FLOPs per token: 6 x the weights a token passes through (matmuls, forward and
    backward; embeddings are lookups) + the attention scores and mixing (6 L T d: PaLM's
    12 L T d halved by the causal mask), as btx's own accounting counts them."""
    d, L, T = c["d"], c["layers"], c["seq"]
    hd = d // c["heads"]
    kv = c.get("kv_heads", c["heads"]) * hd
    ffn = 3 * d * c["ffn"] * (2 if c["experts"] else 1) + (d * c["experts"] if c["experts"] else 0)
    per_layer = d * d * 2 + d * kv * 2 + ffn
    matmul = L * per_layer + d * c["vocab"]
    return 6 * matmul + 6 * L * T * d


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="S", choices=sorted(PRESETS))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--dtype", default="f32", choices=["f32", "bf16"])
    ap.add_argument("--peak-tflops", type=float, default=0.0,
                    help="the device's peak in this precision, to print MFU")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if a.compile:
        # torch.compile compiles on the first steps, and the MoE's data-dependent expert sizes
        # recompile until the shapes are marked dynamic: keep those steps out of the timing.
        a.warmup = max(a.warmup, 5)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    if a.device == "cuda":
        # f32 means f32: no TF32 in matmuls (btx's f32 path has none).
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    dev = torch.device(a.device)
    c = PRESETS[a.preset]
    model = Model(c).to(dev)
    step_model = torch.compile(model) if a.compile else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    g = torch.Generator().manual_seed(42)
    B, T, V = c["batch"], c["seq"], c["vocab"]
    sync = torch.cuda.synchronize if a.device == "cuda" else (lambda: None)
    times, loss = [], None
    for s in range(a.warmup + a.steps):
        toks = torch.randint(0, V, (B, T + 1), generator=g).to(dev)
        x, y = toks[:, :-1].contiguous(), toks[:, 1:].contiguous()
        sync()
        t0 = time.perf_counter()
        with torch.autocast(a.device, dtype=torch.bfloat16, enabled=a.dtype == "bf16"):
            l = step_model(x, y)
        opt.zero_grad(set_to_none=True)
        l.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss = l.item()
        sync()
        dt = time.perf_counter() - t0
        if s >= a.warmup:
            times.append(dt)
    m = sorted(times)[len(times) // 2]
    if a.device == "cuda":
        rss = torch.cuda.max_memory_allocated() / 2**20
    else:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    params = sum(p.numel() for p in model.parameters())
    flops = flops_per_token(c) * B * T / m
    mfu = flops / (a.peak_tflops * 1e12) if a.peak_tflops > 0 else None
    impl = "pytorch" + ("-compile" if a.compile else "")
    r = {"impl": impl, "torch": torch.__version__, "preset": a.preset, "threads": a.threads,
         "device": a.device, "dtype": a.dtype, "compile": a.compile,
         "params": params, "step_s_median": m,
         "tokens_per_s": B * T / m, "tflops_per_s": flops / 1e12, "mfu": mfu,
         "peak_rss_mb": rss, "final_loss": loss}
    if a.json:
        print(json.dumps(r))
    else:
        mf = f", MFU {100 * mfu:.1f}%" if mfu is not None else ""
        print(f"{impl} {a.preset} on {a.device} ({a.dtype}), {a.threads} thread(s): median step {m:.3f}s, {B*T/m:.0f} tokens/s, {flops/1e12:.2f} TFLOP/s{mf}, peak memory {rss:.0f} MB")


if __name__ == "__main__":
    main()
