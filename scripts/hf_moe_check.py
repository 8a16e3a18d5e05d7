#!/usr/bin/env python3
"""Check that `btx mix` writes MoE checkpoints that Hugging Face transformers loads as its own
MoE classes and computes exactly what btx computes, and write golden fixtures of them.

For each seed of testdata/hf-family (llama3-rope, qwen2-tied, qwen3, qwen2-untied-bf16-sharded):
  1. loads the seed with transformers and makes 2 "experts": copies with every parameter
     perturbed (FFN weights by 0.05 N(0,1), attention / norms / embeddings / biases / q,k norms by
     0.01 N(0,1), so the averaging of the non-FFN weights matters), saved with save_pretrained in
     the seed's dtype (bf16 seeds: bf16 experts, as sharded as the seed);
  2. runs `btx mix --seed SEED --experts E1 E2 --generalist --router-init random
     --router-std 0.3 --router-seed 7` (3 experts: E1, E2, the seed last; top-2);
  3. loads the output with `AutoModelForCausalLM.from_pretrained(OUT, attn_implementation="eager",
     output_loading_info=True)` (no trust_remote_code) and asserts: the class (Llama seeds ->
     MixtralForCausalLM, Qwen2 -> Qwen2MoeForCausalLM, Qwen3 -> Qwen3MoeForCausalLM); no missing,
     unexpected or mismatched keys and no error messages; every non-expert weight (attention
     incl. Qwen2's q/k/v biases and Qwen3's q_norm/k_norm, norms, embeddings, untied lm_head) is
     the mean of the (bf16-rounded where stored bf16) E1, E2 and seed weights, as btx computes it
     (f64 sum / 3, rounded to f32); expert e's FFN (fused gate_up_proj / down_proj) is its
     source's gate/up/down_proj exactly; the router is the random init (std checked loosely);
     Qwen2-MoE's size-0 shared expert and its gate contribute nothing;
  4. computes the f32 reference with transformers (eager attention and experts) on the MoE:
     logits, lm_loss, router_logits.L, hf_aux_loss (transformers' aux_loss), lb_paper_per_layer
     and total_loss = lm_loss + 0.01 * sum(lb_paper_per_layer) (btx forward's default --lb-coef;
     crates/btx-model/src/probe.rs), and the gradient of total_loss for every parameter under
     btx's names (Mixtral-style for every family: `block_sparse_moe.experts.E.w1/w3/w2.weight`,
     router `block_sparse_moe.gate.weight`; Qwen2-MoE's shared expert tensors get no entry);
  5. runs `btx forward --backward --compare` against that reference and prints the worst
     logits / loss / router / grad differences (tolerances of scripts/hf_parity.py and
     btx_model::compare: logits and router logits 1e-4 abs, losses 1e-5 rel, grads 1e-3
     rel-to-norm), and checks that btx's grad names are exactly the reference's;
  6. records greedy cached generation on the MoE (gen.prompt i64 [1,5], gen.tokens i64 [1,12],
     eos disabled; prompt picked as in scripts/hf_families.py).

Each case is written to `<out>/<seed>/`:
  model/                  the `btx mix` output directory, as written (run with relative paths,
                          so mix.json's `models` are expert1, expert2, seed; only its `seconds`
                          is set to 0 to make the files reproducible)
  reference.safetensors   input_ids, logits, lm_loss, router_logits.L, hf_aux_loss,
                          lb_paper_per_layer, total_loss, grad.<btx name>, gen.prompt, gen.tokens

Size budget (--max-kb, default 400 KB = 400,000 bytes per case): btx writes the MoE in f32, so
the model alone is 200-270 KB and a full set of f32 gradients as much again (410-550 KB per
case). When a case would exceed the budget, the reference keeps every gradient except some of the
routed experts' (`block_sparse_moe.experts.E.w{1,2,3}`): those are added one tensor at a time, in
the order layer 0 (w2 of experts 0, 1, 2, then w1, then w3), layer 1, ..., up to the first that
does not fit. The left-out names are printed and stored, comma-separated, in the metadata of
reference.safetensors (`omitted_expert_grads`); the comparison with every gradient is run (and
printed) before the budget is applied. `--max-kb 0` keeps everything.

    /work/pyenv/bin/python scripts/hf_moe_check.py [--btx /tmp/btx-moe] [--out testdata/hf-moe] \
        [--family-dir testdata/hf-family] [--only SEED ...] [--max-kb 400]

Deterministic: every random draw is seeded; rerunning writes the same tensors (btx mix is
deterministic for a fixed --router-seed). Exits non-zero if any check fails. Needs torch,
transformers (5.25) and safetensors (dev-only; tests never run this script; its outputs are
committed under testdata/hf-moe/).
"""
import argparse, copy, json, os, shutil, subprocess, sys, tempfile, warnings

import torch
from safetensors import safe_open
from safetensors.torch import save_file, load_file
import transformers
from transformers import AutoModelForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hf_families import pick_generation, greedy  # noqa: E402
from hf_parity import lb_paper  # noqa: E402

# seed case -> (expected class, perturbation seed)
CASES = {
    "llama3-rope": ("MixtralForCausalLM", 301),
    "qwen2-tied": ("Qwen2MoeForCausalLM", 302),
    "qwen3": ("Qwen3MoeForCausalLM", 303),
    "qwen2-untied-bf16-sharded": ("Qwen2MoeForCausalLM", 304),
}
FFN_STD, OTHER_STD = 0.05, 0.01
ROUTER_STD, ROUTER_SEED = 0.3, 7
LB_COEF = 0.01
B, T = 2, 16
MIN_MARGIN = 2e-3  # router logits: btx's tolerance is 1e-4, its CPU error ~1e-6
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "tokenizer.model", "vocab.json", "merges.txt"]


def sh(cmd, cwd=None):
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


def disk_files(model_dir):
    idx = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(idx):
        with open(idx) as f:
            return sorted(set(json.load(f)["weight_map"].values()))
    return ["model.safetensors"]


def disk_tensors(model_dir):
    """name -> (tensor, dtype) of the checkpoint files."""
    out = {}
    for fn in disk_files(model_dir):
        for k, v in load_file(os.path.join(model_dir, fn)).items():
            out[k] = v
    return out


def shard_size(model_dir):
    files = disk_files(model_dir)
    return "20KB" if len(files) > 1 else "5GB"


def make_expert(seed_model, gen, bf16):
    m = copy.deepcopy(seed_model)
    with torch.no_grad():
        for name, p in m.named_parameters():
            std = FFN_STD if ".mlp." in name else OTHER_STD
            p.add_(std * torch.randn(p.shape, generator=gen))
            if bf16:
                p.copy_(p.to(torch.bfloat16).float())
    return m


def save_model(m, d, bf16, shard, seed_dir):
    if bf16:
        copy.deepcopy(m).to(torch.bfloat16).save_pretrained(d, max_shard_size=shard)
    else:
        m.save_pretrained(d, max_shard_size=shard)
    for f in TOKENIZER_FILES:
        if os.path.exists(os.path.join(seed_dir, f)):
            shutil.copy(os.path.join(seed_dir, f), os.path.join(d, f))


def btx_mean(ts):
    """btx_mix::source::mean_into with equal weights: f64 accumulation, / total, to f32."""
    acc = torch.zeros(ts[0].shape, dtype=torch.float64)
    for t in ts:
        acc += t.double()
    return (acc / float(len(ts))).float()


def check_weights(moe, sources, cfg):
    """Non-expert weights == btx's mean of the sources; expert e's FFN == source e's FFN."""
    src = [dict(s.named_parameters()) for s in sources]
    worst_mean, worst_ffn, n_mean, n_ffn = 0.0, 0.0, 0, 0
    problems = []
    checked_router = []
    for name, p in moe.named_parameters():
        p = p.detach().float()
        if name.endswith("mlp.experts.gate_up_proj"):
            pre = name[: -len("experts.gate_up_proj")]
            want = torch.stack([torch.cat([s[pre + "gate_proj.weight"], s[pre + "up_proj.weight"]], 0)
                                for s in src]).detach()
        elif name.endswith("mlp.experts.down_proj"):
            pre = name[: -len("experts.down_proj")]
            want = torch.stack([s[pre + "down_proj.weight"] for s in src]).detach()
        elif name.endswith("mlp.gate.weight"):
            e, d = p.shape
            assert e == len(sources) and d == cfg.hidden_size, (name, p.shape)
            std = p.std().item()
            checked_router.append(std)
            if not (0.5 * ROUTER_STD < std < 1.5 * ROUTER_STD):
                problems.append(f"{name}: router std {std:.3f}, expected about {ROUTER_STD}")
            continue
        elif ".mlp.shared_expert" in name:
            if p.numel() and name.endswith("shared_expert_gate.weight"):
                # Contributes sigmoid(gate x) * 0: whatever its value, nothing.
                assert p.shape == (1, cfg.hidden_size), (name, p.shape)
            else:
                assert p.numel() == 0, (name, p.shape)
            continue
        else:
            want = btx_mean([s[name].detach() for s in src])
            d = (p - want).abs().max().item() if p.numel() else 0.0
            worst_mean = max(worst_mean, d)
            n_mean += 1
            if d != 0.0:
                problems.append(f"{name}: differs from the mean of the sources by {d:.3e}")
            # The mean must differ from the seed's own weight: the averaging is exercised.
            if torch.equal(p, src[-1][name].detach()):
                problems.append(f"{name}: equals the seed's weight (not averaged?)")
            continue
        assert p.shape == want.shape, (name, p.shape, want.shape)
        d = (p - want).abs().max().item()
        worst_ffn = max(worst_ffn, d)
        n_ffn += 1
        if d != 0.0:
            problems.append(f"{name}: expert FFN differs from its source by {d:.3e}")
    assert checked_router, "no router found"
    return dict(worst_mean=worst_mean, n_mean=n_mean, worst_ffn=worst_ffn, n_ffn=n_ffn,
                router_std=[round(s, 3) for s in checked_router]), problems


def reference(model, cfg, ids):
    """The fixture's outputs and the gradients of total_loss under btx's names."""
    vocab = cfg.vocab_size
    k = cfg.num_experts_per_tok
    ref = {"input_ids": ids.to(torch.int64)}
    model.zero_grad()
    o = model(input_ids=ids, output_router_logits=True)
    ref["logits"] = o.logits.detach()
    lm = torch.nn.functional.cross_entropy(o.logits[:, :-1].reshape(-1, vocab), ids[:, 1:].reshape(-1))
    ref["lm_loss"] = lm.detach().reshape(1)
    for l, r in enumerate(o.router_logits):
        ref[f"router_logits.{l}"] = r.detach()
    margin = router_margin([r.detach() for r in o.router_logits], k)
    ref["hf_aux_loss"] = o.aux_loss.detach().reshape(1)
    lbp = lb_paper(list(o.router_logits), k)
    ref["lb_paper_per_layer"] = lbp.detach()
    total = lm + LB_COEF * lbp.sum()
    ref["total_loss"] = total.detach().reshape(1)
    total.backward()
    for n, p in model.named_parameters():
        gr = p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
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
        elif n.endswith("mlp.gate.weight"):
            ref["grad." + n.replace("mlp.gate.weight", "block_sparse_moe.gate.weight")] = gr
        elif ".mlp.shared_expert" in n:
            assert gr.abs().max().item() == 0.0 if gr.numel() else True, n
        else:
            ref["grad." + n] = gr
    model.zero_grad()
    return {k: v.contiguous() for k, v in ref.items()}, margin


def router_margin(router_logits, k):
    """Smallest gap, over tokens and layers, between the k-th and (k+1)-th router logit."""
    return min((lambda top: (top[:, k - 1] - top[:, k]).min().item())(torch.topk(r, k + 1, dim=-1).values)
               for r in router_logits)


def pick_input(model, cfg, pseed, tries=50):
    """The first of a fixed sequence of random [B, T] inputs whose top-k routing has no near tie
    (margin >= MIN_MARGIN in every layer), so that 1e-6 differences cannot flip a token's experts."""
    for t in range(tries):
        g = torch.Generator().manual_seed(pseed * 100 + 77 + t)
        ids = torch.randint(0, cfg.vocab_size, (B, T), generator=g)
        with torch.no_grad():
            o = model(input_ids=ids, output_router_logits=True)
        if router_margin(o.router_logits, cfg.num_experts_per_tok) >= MIN_MARGIN:
            return ids, t
    raise AssertionError(f"no input among {tries} routes without a near tie")


def parse_compare(stdout):
    worst = {"logits": 0.0, "loss": 0.0, "router": 0.0, "grad": 0.0}
    where = {}
    bad, n = [], 0
    for line in stdout.splitlines()[1:]:
        parts = line.split()
        if len(parts) != 3:
            bad.append(line)
            continue
        name, mx, rel = parts[0], float(parts[1]), float(parts[2])
        n += 1
        if name == "logits":
            key, val, ok = "logits", mx, mx <= 1e-4
        elif name.startswith("router_logits"):
            key, val, ok = "router", mx, mx <= 1e-4
        elif name.startswith("grad."):
            key, val, ok = "grad", rel, rel <= 1e-3
        else:
            # btx checks rel to the largest |reference| element; for scalars that is |a-b|/|b|.
            key, val, ok = "loss", rel, rel <= 1e-5
        if val >= worst[key]:
            worst[key], where[key] = val, name
        if not ok:
            bad.append(line)
    return worst, where, bad, n


def btx_forward(btx, model_dir, ref_path, out_path, threads):
    r = sh([btx, "forward", "--threads", str(threads), "--model", model_dir, "--input", ref_path,
            "--out", out_path, "--backward", "--compare", ref_path])
    return r.stdout


def dir_size(d):
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(d) for f in fs)


def st_size(tensors, metadata=None):
    with tempfile.NamedTemporaryFile(suffix=".safetensors") as f:
        save_file(tensors, f.name, metadata=metadata)
        return os.path.getsize(f.name)


def apply_budget(ref, model_bytes, max_bytes, cfg):
    """Keeps every gradient but the routed experts', then adds expert gradients one tensor at a
    time in BUDGET_ORDER while the case fits in max_bytes; returns (kept, omitted names)."""
    if max_bytes <= 0 or model_bytes + st_size(ref) <= max_bytes:
        return ref, []
    keep = {k: v for k, v in ref.items() if ".block_sparse_moe.experts." not in k}
    order = [f"grad.model.layers.{l}.block_sparse_moe.experts.{e}.w{w}.weight"
             for l in range(cfg.num_hidden_layers) for w in (2, 1, 3) for e in range(3)]
    assert set(order) == set(ref) - set(keep), "unexpected expert gradient names"
    meta = {"omitted_expert_grads": "x" * 2000}  # room for the metadata string
    omitted = []
    for n in order:
        trial = dict(keep, **{n: ref[n]})
        if not omitted and model_bytes + st_size(trial, meta) <= max_bytes:
            keep = trial
        else:
            omitted.append(n)
    assert model_bytes + st_size(keep) <= max_bytes, "the case does not fit even without expert grads"
    return keep, omitted


def short(names):
    """grad.model.layers.1.block_sparse_moe.experts.2.w3.weight -> L1.E2.w3"""
    return ",".join(f"L{n.split('.')[3]}.E{n.split('.')[6]}.{n.split('.')[7]}" for n in names)


def run_case(case, args, tmp):
    want_cls, pseed = CASES[case]
    seed_dir = os.path.join(args.family_dir, case, "model")
    disk = disk_tensors(seed_dir)
    bf16 = all(t.dtype == torch.bfloat16 for t in disk.values())
    assert bf16 or all(t.dtype == torch.float32 for t in disk.values())
    shard = shard_size(seed_dir)
    seed = AutoModelForCausalLM.from_pretrained(seed_dir, dtype=torch.float32,
                                                attn_implementation="eager").eval()
    # The seed in memory holds exactly the values on disk.
    for n, p in seed.named_parameters():
        assert torch.equal(p.detach(), disk[n].float()), n

    g = torch.Generator().manual_seed(pseed)
    experts = [make_expert(seed, g, bf16) for _ in range(2)]
    edirs = []
    for i, m in enumerate(experts):
        d = os.path.join(tmp, case, f"expert{i + 1}")
        save_model(m, d, bf16, shard, seed_dir)
        # What btx reads is what we hold.
        dt = disk_tensors(d)
        for n, p in m.named_parameters():
            assert torch.equal(dt[n].float(), p.detach()), n
        edirs.append(d)
    # Run from the case's temporary directory with relative paths (the seed through a link), so
    # that mix.json records the same paths on every run.
    cdir = os.path.join(tmp, case)
    os.symlink(os.path.abspath(seed_dir), os.path.join(cdir, "seed"))
    out = os.path.join(cdir, "moe")
    mix = sh([os.path.abspath(args.btx), "mix", "--threads", str(args.threads), "--seed", "seed",
              "--experts", "expert1", "expert2", "--generalist", "--router-init", "random",
              "--router-std", str(ROUTER_STD), "--router-seed", str(ROUTER_SEED), "--out", "moe"], cwd=cdir)
    # mix.json's one non-deterministic field: the seconds it took.
    mj = os.path.join(out, "mix.json")
    with open(mj) as f:
        mix_json = json.load(f)
    mix_json["seconds"] = 0.0
    with open(mj, "w") as f:
        json.dump(mix_json, f, indent=2)
    with open(os.path.join(out, "config.json")) as f:
        moe_cfg_json = json.load(f)

    # 3. transformers loads it as its own MoE class, nothing missing or unexpected.
    problems = []
    loaded, info = AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager",
                                                        output_loading_info=True)
    cls = type(loaded).__name__
    info_s = {k: (sorted(v) if isinstance(v, (set, list)) else v) for k, v in info.items()}
    if cls != want_cls:
        problems.append(f"class {cls}, expected {want_cls}")
    for k, v in info.items():
        if v:
            problems.append(f"loading info {k}: {v}")
    cfg = loaded.config
    ne = getattr(cfg, "num_local_experts", None) or getattr(cfg, "num_experts", None)
    if ne != 3 or cfg.num_experts_per_tok != 2:
        problems.append(f"experts {ne} top-k {cfg.num_experts_per_tok}, expected 3 / 2")
    if hasattr(cfg, "norm_topk_prob") and cfg.norm_topk_prob is not True:
        problems.append(f"norm_topk_prob {cfg.norm_topk_prob}")
    if getattr(cfg, "decoder_sparse_step", 1) != 1 or getattr(cfg, "mlp_only_layers", []):
        problems.append(f"not every layer sparse: decoder_sparse_step {cfg.decoder_sparse_step}, "
                        f"mlp_only_layers {cfg.mlp_only_layers}")
    if cfg.tie_word_embeddings != seed.config.tie_word_embeddings:
        problems.append(f"tie_word_embeddings {cfg.tie_word_embeddings} vs seed's {seed.config.tie_word_embeddings}")
    if cfg.rope_parameters != seed.config.rope_parameters:
        problems.append(f"rope_parameters {cfg.rope_parameters} vs seed's {seed.config.rope_parameters}")
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "vocab_size", "rms_norm_eps", "max_position_embeddings"):
        if getattr(cfg, key, None) != getattr(seed.config, key, None):
            problems.append(f"{key}: {getattr(cfg, key, None)} vs seed's {getattr(seed.config, key, None)}")
    hd = lambda c: getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads  # Qwen2Config has none
    if hd(cfg) != hd(seed.config):
        problems.append(f"head_dim {hd(cfg)} vs seed's {hd(seed.config)}")
    # The FFN size of an expert.
    inter = cfg.intermediate_size if cls == "MixtralForCausalLM" else cfg.moe_intermediate_size
    if inter != seed.config.intermediate_size:
        problems.append(f"expert intermediate size {inter} vs seed's {seed.config.intermediate_size}")
    if cls.startswith("Qwen2Moe") and cfg.shared_expert_intermediate_size != 0:
        problems.append(f"shared_expert_intermediate_size {cfg.shared_expert_intermediate_size}")
    loaded = loaded.float().eval()
    wcheck, wprob = check_weights(loaded, experts + [seed], cfg)
    problems += wprob

    # 4. The f32 reference, with eager attention and eager experts.
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, attn_implementation="eager",
                                                 experts_implementation="eager").eval()
    ids, tries = pick_input(model, cfg, pseed)
    ref, margin = reference(model, cfg, ids)
    with torch.no_grad():
        dflt = (loaded(input_ids=ids).logits - ref["logits"]).abs().max().item()
    if margin < MIN_MARGIN:
        problems.append(f"router top-k margin {margin:.2e}: a near tie could route differently")
    # Routing is non-trivial: every expert is picked by some token, not by all.
    for l in range(cfg.num_hidden_layers):
        top = torch.topk(ref[f"router_logits.{l}"], 2, dim=-1).indices
        cnt = torch.bincount(top.flatten(), minlength=3).tolist()
        if min(cnt) == 0:
            problems.append(f"layer {l}: an expert gets no tokens ({cnt})")

    eos = cfg.eos_token_id if isinstance(cfg.eos_token_id, list) else [cfg.eos_token_id]
    prompt, new, gap, distinct, k = pick_generation(model, cfg.vocab_size, pseed, set(eos) - {None})
    new2, _ = greedy(loaded, prompt)
    if not torch.equal(new, new2):
        problems.append("generation differs between eager and default experts implementation")
    with torch.no_grad():  # routing of the generated sequence (the last token is never fed)
        seq = torch.cat([prompt, new[:, :-1]], dim=1)
        gen_margin = router_margin(model(input_ids=seq, output_router_logits=True).router_logits,
                                   cfg.num_experts_per_tok)
    if gen_margin < 1e-4:
        problems.append(f"generation: router top-k margin {gen_margin:.2e} (near tie)")
    ref["gen.prompt"] = prompt
    ref["gen.tokens"] = new.to(torch.int64)

    # 5. btx against the full reference.
    full_path = os.path.join(tmp, case, "reference-full.safetensors")
    save_file(ref, full_path)
    stdout = btx_forward(args.btx, out, full_path, os.path.join(tmp, case, "btx.safetensors"), args.threads)
    worst, where, bad, ncmp = parse_compare(stdout)
    problems += [f"over tolerance: {b}" for b in bad]
    btx_out = load_file(os.path.join(tmp, case, "btx.safetensors"))
    btx_grads = {n for n in btx_out if n.startswith("grad.")}
    ref_grads = {n for n in ref if n.startswith("grad.")}
    if btx_grads != ref_grads:
        problems.append(f"grad names differ: only btx {sorted(btx_grads - ref_grads)}, "
                        f"only reference {sorted(ref_grads - btx_grads)}")

    # Write the fixture.
    d = os.path.join(args.out, case)
    if os.path.exists(d):
        shutil.rmtree(d)
    os.makedirs(d)
    shutil.copytree(out, os.path.join(d, "model"))
    model_bytes = dir_size(os.path.join(d, "model"))
    kept, omitted = apply_budget(ref, model_bytes, int(args.max_kb * 1000), cfg)
    meta = {"omitted_expert_grads": ",".join(omitted)} if omitted else None  # full names
    rpath = os.path.join(d, "reference.safetensors")
    save_file(kept, rpath, metadata=meta)
    stdout2 = btx_forward(args.btx, os.path.join(d, "model"), rpath, os.path.join(tmp, case, "btx2.safetensors"),
                          args.threads)
    worst2, _, bad2, ncmp2 = parse_compare(stdout2)
    problems += [f"fixture over tolerance: {b}" for b in bad2]
    size = dir_size(d)
    full_size = model_bytes + os.path.getsize(full_path)

    print(f"\n== {case} -> {cls} ({'bf16 seed/experts' if bf16 else 'f32'}, {len(disk_files(seed_dir))} seed file(s))")
    print(f"  btx mix: {' | '.join((mix.stdout + mix.stderr).strip().splitlines()[-3:])}; mix.json labels {mix_json.get('labels')}")
    print(f"  config.json: architectures {moe_cfg_json.get('architectures')} model_type {moe_cfg_json.get('model_type')} "
          + ", ".join(f"{key}={moe_cfg_json[key]!r}" for key in (
              "num_local_experts", "num_experts", "num_experts_per_tok", "intermediate_size", "moe_intermediate_size",
              "shared_expert_intermediate_size", "norm_topk_prob", "decoder_sparse_step", "mlp_only_layers",
              "tie_word_embeddings", "router_aux_loss_coef", "output_router_logits") if key in moe_cfg_json))
    print(f"  files: {sorted(os.listdir(out))}")
    print(f"  loading info: {info_s}")
    print(f"  weights: {wcheck['n_mean']} averaged tensors max|diff| {wcheck['worst_mean']:.1e}; "
          f"{wcheck['n_ffn']} fused expert tensors max|diff| {wcheck['worst_ffn']:.1e}; router std {wcheck['router_std']}")
    print(f"  reference: B,T={B},{T} lm_loss {ref['lm_loss'].item():.4f} total {ref['total_loss'].item():.4f} "
          f"hf_aux {ref['hf_aux_loss'].item():.4f} lb {[round(x, 4) for x in ref['lb_paper_per_layer'].tolist()]}; "
          f"input try #{tries}, smallest router top-2 margin {margin:.3e}; default-experts vs eager logits {dflt:.1e}")
    print(f"  gen: prompt#{k} {prompt[0].tolist()} -> {new[0].tolist()} ({distinct} distinct) smallest top-2 logit gap {gap:.4f}, "
          f"smallest router top-2 margin {gen_margin:.3e}")
    print(f"  btx forward vs full reference ({ncmp} tensors): logits {worst['logits']:.2e} loss(rel) {worst['loss']:.2e} "
          f"router {worst['router']:.2e} grad(rel) {worst['grad']:.2e} [worst grad: {where.get('grad')}]")
    print(f"  fixture ({ncmp2} tensors compared): logits {worst2['logits']:.2e} loss(rel) {worst2['loss']:.2e} "
          f"router {worst2['router']:.2e} grad(rel) {worst2['grad']:.2e}")
    print(f"  sizes: model {model_bytes / 1000:.1f} KB, reference {os.path.getsize(rpath) / 1000:.1f} KB, "
          f"case {size / 1000:.1f} KB (with every gradient it would be {full_size / 1000:.1f} KB)"
          + (f"; {len(omitted)} expert grads omitted: {short(omitted)}" if omitted else "; every gradient kept"))
    for p in problems:
        print(f"  PROBLEM: {p}")
    return dict(case=case, cls=cls, worst=worst, size=size, full_size=full_size, omitted=omitted,
                problems=problems)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--btx", default="/tmp/btx-moe")
    ap.add_argument("--out", default="testdata/hf-moe")
    ap.add_argument("--family-dir", default="testdata/hf-family")
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--max-kb", type=float, default=400.0, help="size budget per case (1000 bytes); 0: none")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--keep-tmp", action="store_true")
    args = ap.parse_args()
    transformers.utils.logging.disable_progress_bar()
    # Qwen2-MoE's shared expert of size 0 (what btx writes) makes torch warn once per tensor.
    warnings.filterwarnings("ignore", message="Initializing zero-element tensors is a no-op")
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    tmp = tempfile.mkdtemp(prefix="btx-hf-moe-")
    os.makedirs(args.out, exist_ok=True)
    results = []
    try:
        for case in CASES:
            if args.only and case not in args.only:
                continue
            try:
                results.append(run_case(case, args, tmp))
            except Exception as e:
                import traceback
                traceback.print_exc()
                results.append(dict(case=case, cls="?", problems=[f"{type(e).__name__}: {e}"]))
    finally:
        if args.keep_tmp:
            print(f"temporary files kept in {tmp}")
        else:
            shutil.rmtree(tmp)
    print("\nsummary:")
    for r in results:
        if "worst" in r:
            w = r["worst"]
            print(f"  {r['case']:<27} {r['cls']:<20} logits {w['logits']:.1e} loss {w['loss']:.1e} "
                  f"router {w['router']:.1e} grad {w['grad']:.1e} | {r['size'] / 1000:5.1f} KB "
                  f"(full {r['full_size'] / 1000:5.1f} KB) {'omitted ' + short(r['omitted']) if r['omitted'] else ''}"
                  f" | {'ok' if not r['problems'] else 'FAIL'}")
        else:
            print(f"  {r['case']:<27} FAIL {r['problems']}")
    sys.exit(1 if any(r["problems"] for r in results) else 0)


if __name__ == "__main__":
    main()
