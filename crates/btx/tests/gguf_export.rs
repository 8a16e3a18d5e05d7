//! `btx export --format gguf`: what llama.cpp reads is what btx computes. A dense seed and its
//! Mixtral (from the tiny BTX run) and one model of every family go out as GGUF and come back
//! through `btx import-gguf` bit for bit; the file holds llama.cpp's names, shapes, types,
//! permuted Q/K rows and stacked experts; the smaller types round within their step; and every
//! model llama.cpp would compute otherwise is refused before the output is touched.
//! (llama.cpp itself runs the exports in scripts/llama-cpp-check.sh.)

mod common;

use std::path::Path;

use btx_data::gguf::{GgmlType, GgufFile, Value};
use btx_gguf::import::permute_rows;
use btx_model::{ModelConfig, TensorReader};
use btx_testkit::Scratch;
use common::{btx, fixture, ok, refused, tiny_run};

fn export(model: &Path, out: &Path, dtype: Option<&str>) -> String {
    let mut c = btx();
    c.args(["export", "--format", "gguf", "--model"])
        .arg(model)
        .arg("--out")
        .arg(out);
    if let Some(d) = dtype {
        c.args(["--dtype", d]);
    }
    ok(&mut c)
}

fn import(gguf: &Path, out: &Path) {
    ok(btx().arg("import-gguf").arg(gguf).arg("--out").arg(out));
}

fn reader(dir: &Path) -> (ModelConfig, TensorReader) {
    let cfg = ModelConfig::load(&dir.join("config.json")).unwrap();
    let r = TensorReader::open_for(dir, &cfg).unwrap();
    (cfg, r)
}

/// Every tensor of `a` is in `b` with the same f32 bits, and nothing else is.
fn same_tensors(a: &Path, b: &Path) {
    let (_, ra) = reader(a);
    let (_, rb) = reader(b);
    let na: Vec<&str> = ra.names().collect();
    let nb: Vec<&str> = rb.names().collect();
    assert_eq!(na, nb, "{} vs {}", a.display(), b.display());
    for n in na {
        assert_eq!(ra.shape(n), rb.shape(n), "{n}");
        assert!(
            ra.f32_bytes(n).unwrap() == rb.f32_bytes(n).unwrap(),
            "{n} differs between {} and {}",
            a.display(),
            b.display()
        );
    }
}

fn f32s(r: &TensorReader, name: &str) -> Vec<f32> {
    r.read(name).unwrap().data
}

#[test]
fn dense_seed_and_its_moes_round_trip_bit_for_bit_through_an_f32_gguf() {
    let s = Scratch::new("gguf-export-round");
    let run = tiny_run(&s);
    for (tag, model) in [
        ("seed", run.join("seed/model")),
        ("mix", run.join("mix/btx/model")),
        ("finetuned", run.join("finetune/btx/model")),
    ] {
        let gguf = s.path().join(format!("{tag}.gguf"));
        let t = export(&model, &gguf, None);
        assert!(t.contains("architecture llama"), "{t}");
        let back = s.path().join(format!("{tag}-back"));
        import(&gguf, &back);
        same_tensors(&model, &back);
        let (a, _) = reader(&model);
        let (b, _) = reader(&back);
        assert_eq!(
            a, b,
            "{tag}: the config comes back whole (experts' labels too)"
        );
    }
}

#[test]
fn the_file_holds_what_llama_cpp_reads_for_a_mixtral() {
    let s = Scratch::new("gguf-export-layout");
    let run = tiny_run(&s);
    let model = run.join("finetune/btx/model");
    let gguf = s.path().join("moe.gguf");
    // A chat template (the seed's, carried along by the pipeline) goes into the GGUF.
    let template = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}";
    std::fs::write(
        model.join("tokenizer_config.json"),
        serde_json::json!({ "chat_template": template }).to_string(),
    )
    .unwrap();
    export(&model, &gguf, None);
    let (cfg, r) = reader(&model);
    let moe = cfg.moe.clone().unwrap();
    let g = GgufFile::open(&gguf).unwrap();
    let u = |k: &str| g.meta_u64(k).unwrap_or_else(|| panic!("{k} missing")) as usize;
    assert_eq!(g.meta_str("general.architecture"), Some("llama"));
    assert_eq!(u("general.file_type"), 0);
    assert_eq!(u("llama.block_count"), cfg.num_layers);
    assert_eq!(u("llama.embedding_length"), cfg.hidden_size);
    assert_eq!(u("llama.feed_forward_length"), cfg.intermediate_size);
    assert_eq!(u("llama.attention.head_count"), cfg.num_heads);
    assert_eq!(u("llama.attention.head_count_kv"), cfg.num_kv_heads);
    assert_eq!(u("llama.rope.dimension_count"), cfg.head_dim);
    assert_eq!(u("llama.context_length"), cfg.max_position_embeddings);
    assert_eq!(u("llama.expert_count"), moe.num_experts);
    assert_eq!(u("llama.expert_used_count"), moe.top_k);
    assert_eq!(g.meta_f64("llama.rope.freq_base"), Some(cfg.rope_theta));
    assert_eq!(g.meta_str("tokenizer.ggml.model"), Some("gpt2"));
    assert_eq!(g.meta_str("tokenizer.ggml.pre"), Some("gpt-2"));
    let tokens = g.meta["tokenizer.ggml.tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), cfg.vocab_size);
    let tok = btx_data::Tok::load(&model.join("tokenizer.json")).unwrap();
    let eos = tok.eos_id() as usize;
    assert_eq!(tokens[eos].as_str(), Some("<|endoftext|>"));
    assert_eq!(
        g.meta["tokenizer.ggml.token_type"].as_array().unwrap()[eos],
        Value::I32(3)
    );
    assert_eq!(g.meta["tokenizer.ggml.add_bos_token"], Value::Bool(false));
    assert_eq!(g.meta_str("tokenizer.chat_template"), Some(template));
    let back = s.path().join("back");
    import(&gguf, &back);
    let tc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(back.join("tokenizer_config.json")).unwrap())
            .unwrap();
    assert_eq!(
        tc["chat_template"], template,
        "the import keeps it where transformers looks"
    );
    let labels = g.meta["btx.expert_labels"].as_array().unwrap();
    assert_eq!(labels.len(), moe.num_experts);

    let tensor = |name: &str| g.tensor(name).unwrap_or_else(|| panic!("no {name}"));
    let vals = |name: &str| g.dequantize(tensor(name)).unwrap();
    // Tied embeddings: llama.cpp reuses token_embd, and no output.weight is written.
    match cfg.tie_word_embeddings {
        true => assert!(g.tensor("output.weight").is_none()),
        false => assert_eq!(vals("output.weight"), f32s(&r, "lm_head.weight")),
    }
    assert_eq!(
        tensor("token_embd.weight").shape(),
        [cfg.vocab_size, cfg.hidden_size]
    );
    assert_eq!(tensor("output_norm.weight").ty, GgmlType::F32);
    let (d, ff, e) = (cfg.hidden_size, cfg.intermediate_size, moe.num_experts);
    for l in 0..cfg.num_layers {
        let p = format!("model.layers.{l}");
        // llama.cpp's interleaved RoPE: within each head, rows 2i and 2i+1 are HF's i and
        // hd/2 + i.
        let q = f32s(&r, &format!("{p}.self_attn.q_proj.weight"));
        assert_eq!(
            vals(&format!("blk.{l}.attn_q.weight")),
            permute_rows(&q, cfg.q_dim(), d, cfg.num_heads)
        );
        let k = f32s(&r, &format!("{p}.self_attn.k_proj.weight"));
        assert_ne!(
            k,
            permute_rows(&k, cfg.kv_dim(), d, cfg.num_kv_heads),
            "a test that cannot tell"
        );
        assert_eq!(
            vals(&format!("blk.{l}.attn_k.weight")),
            permute_rows(&k, cfg.kv_dim(), d, cfg.num_kv_heads)
        );
        assert_eq!(
            vals(&format!("blk.{l}.attn_v.weight")),
            f32s(&r, &format!("{p}.self_attn.v_proj.weight"))
        );
        let router = tensor(&format!("blk.{l}.ffn_gate_inp.weight"));
        assert_eq!((router.shape(), router.ty), (vec![e, d], GgmlType::F32));
        assert_eq!(
            g.dequantize(router).unwrap(),
            f32s(&r, &format!("{p}.block_sparse_moe.gate.weight"))
        );
        for (w, name, shape) in [
            (1, "ffn_gate_exps", [e, ff, d]),
            (3, "ffn_up_exps", [e, ff, d]),
            (2, "ffn_down_exps", [e, d, ff]),
        ] {
            let t = tensor(&format!("blk.{l}.{name}.weight"));
            assert_eq!(t.shape(), shape, "{name}");
            let stacked: Vec<f32> = (0..e)
                .flat_map(|x| f32s(&r, &format!("{p}.block_sparse_moe.experts.{x}.w{w}.weight")))
                .collect();
            assert_eq!(g.dequantize(t).unwrap(), stacked, "{name}");
        }
    }
}

#[test]
fn f16_bf16_and_q8_0_exports_round_each_weight_once() {
    let s = Scratch::new("gguf-export-types");
    let run = tiny_run(&s);
    let model = run.join("mix/btx/model");
    let (cfg, r) = reader(&model);
    for (dtype, ty, file_type, step) in [
        ("f16", GgmlType::F16, 1, 1.0 / 1024.0),
        ("bf16", GgmlType::Bf16, 32, 1.0 / 128.0),
        ("q8_0", GgmlType::Q8_0, 7, 1.0 / 127.0),
    ] {
        let gguf = s.path().join(format!("{dtype}.gguf"));
        export(&model, &gguf, Some(dtype));
        let g = GgufFile::open(&gguf).unwrap();
        assert_eq!(g.meta_u64("general.file_type"), Some(file_type));
        let mut seen_q8 = false;
        for t in &g.tensors {
            let want = if t.shape().len() == 1 || t.name.ends_with("ffn_gate_inp.weight") {
                GgmlType::F32
            } else if ty == GgmlType::Q8_0 && !t.shape().last().unwrap().is_multiple_of(32) {
                // llama.cpp's converter falls back to f16 for rows that are not whole blocks.
                GgmlType::F16
            } else {
                ty
            };
            assert_eq!(t.ty, want, "{dtype}: {}", t.name);
            seen_q8 |= t.ty == GgmlType::Q8_0;
        }
        assert_eq!(
            seen_q8,
            ty == GgmlType::Q8_0,
            "the tiny model has rows of 32 to quantise"
        );
        let q = g
            .dequantize(g.tensor("blk.0.attn_v.weight").unwrap())
            .unwrap();
        let want = f32s(&r, "model.layers.0.self_attn.v_proj.weight");
        let scale = want.iter().fold(0f32, |a, x| a.max(x.abs()));
        let err = q
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            err > 0.0 && err <= scale * step as f32,
            "{dtype}: max error {err} (scale {scale})"
        );
        assert_eq!(g.meta_u64("llama.block_count"), Some(cfg.num_layers as u64));
    }
}

#[test]
fn every_family_llama_cpp_has_round_trips() {
    let s = Scratch::new("gguf-export-families");
    for (rel, arch) in [
        ("hf-family/qwen2-tied", "qwen2"),
        ("hf-family/qwen3", "qwen3"),
        ("hf-family/llama3-rope", "llama"),
        ("hf-family/llama-linear-v4", "llama"),
        ("hf-family/qwen2-untied-bf16-sharded", "qwen2"),
        ("hf-moe/qwen3", "qwen3moe"),
        ("hf-moe/llama3-rope", "llama"),
    ] {
        let model = fixture(&s, rel);
        let gguf = s.path().join(format!("{}.gguf", rel.replace('/', "-")));
        // The default type is the stored one (bf16 for the bf16 fixture: exact both ways).
        let t = export(&model, &gguf, None);
        assert!(t.contains(&format!("architecture {arch},")), "{rel}: {t}");
        let back = s.path().join(format!("{}-back", rel.replace('/', "-")));
        import(&gguf, &back);
        same_tensors(&model, &back);
        let (a, _) = reader(&model);
        let (b, _) = reader(&back);
        assert_eq!(
            (
                a.family,
                &a.moe,
                &a.rope_scaling,
                a.head_dim,
                a.tie_word_embeddings
            ),
            (
                b.family,
                &b.moe,
                &b.rope_scaling,
                b.head_dim,
                b.tie_word_embeddings
            ),
            "{rel}"
        );
    }
}

#[test]
fn models_llama_cpp_would_compute_otherwise_are_refused_before_any_write() {
    let s = Scratch::new("gguf-export-refused");
    let run = tiny_run(&s);
    let out = s.path().join("out/x.gguf");
    let try_export = |model: &Path, needle: &str| {
        refused(
            btx()
                .args(["export", "--format", "gguf", "--model"])
                .arg(model)
                .arg("--out")
                .arg(&out),
            needle,
        );
        assert!(!out.exists(), "{needle}: the output appeared");
    };
    try_export(&fixture(&s, "hf-moe/qwen2-tied"), "Qwen2-MoE");
    try_export(
        &fixture(&s, "hf-family/llama-yarn"),
        "RoPE scaling \"yarn\"",
    );
    // Switch routing (the same weights, another routing in config.json).
    let switch = s.path().join("switch");
    copy_dir(&run.join("mix/btx/model"), &switch);
    let mut c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(switch.join("config.json")).unwrap())
            .unwrap();
    c["btx_routing"] = serde_json::json!({"mode": "switch", "capacity_factor": 1.0});
    c["num_experts_per_tok"] = serde_json::json!(1);
    std::fs::write(switch.join("config.json"), c.to_string()).unwrap();
    try_export(&switch, "routes with switch");
    // Attention experts (BAM).
    let bam = s.path().join("bam");
    ok(btx()
        .args(["mix", "--seed"])
        .arg(run.join("seed/model"))
        .arg("--experts")
        .arg(run.join("experts/math/model"))
        .arg(run.join("experts/code/model"))
        .args([
            "--domains",
            "math",
            "code",
            "--attention",
            "experts",
            "--out",
        ])
        .arg(&bam));
    try_export(&bam, "attention experts");
    // (Beside the point here, but this test has the models: `btx mix --capacity-factor` means
    // something to switch routing only, and is refused with any other rather than ignored.)
    let top_k = s.path().join("top-k");
    refused(
        btx()
            .args(["mix", "--seed"])
            .arg(run.join("seed/model"))
            .arg("--experts")
            .arg(run.join("experts/math/model"))
            .arg(run.join("experts/code/model"))
            .args(["--capacity-factor", "2", "--out"])
            .arg(&top_k),
        "only switch routing has a capacity",
    );
    assert!(!top_k.exists());
    // A tokenizer llama.cpp cannot be told to reproduce, and none at all.
    let odd = s.path().join("odd-tokenizer");
    copy_dir(&run.join("seed/model"), &odd);
    let mut t: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(odd.join("tokenizer.json")).unwrap())
            .unwrap();
    t["pre_tokenizer"] = serde_json::json!({"type": "Whitespace"});
    std::fs::write(odd.join("tokenizer.json"), t.to_string()).unwrap();
    try_export(&odd, "pre_tokenizer");
    std::fs::remove_file(odd.join("tokenizer.json")).unwrap();
    try_export(&odd, "no tokenizer.json");
    // A weight f16 cannot hold (|x| > 65504) is refused in f16, not written as infinity;
    // bf16 (f32's range) takes it.
    let big = s.path().join("big");
    copy_dir(&run.join("seed/model"), &big);
    let cfg = btx_model::ModelConfig::load(&big.join("config.json")).unwrap();
    let r = btx_model::TensorReader::open_for(&big, &cfg).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = r
        .names()
        .map(|n| {
            let t = r.read(n).unwrap();
            (n.to_string(), t.shape, t.data)
        })
        .collect();
    drop(r);
    let v = tensors
        .iter_mut()
        .find(|t| t.0.ends_with("v_proj.weight"))
        .unwrap();
    v.2[3] = 1e5;
    let refs: Vec<(&str, Vec<usize>, Vec<f32>)> = tensors
        .iter()
        .map(|(n, sh, d)| (n.as_str(), sh.clone(), d.clone()))
        .collect();
    btx_testkit::write_raw_f32_safetensors(&big.join("model.safetensors"), &refs);
    let f16 = s.path().join("big-f16.gguf");
    refused(
        btx()
            .args(["export", "--format", "gguf", "--dtype", "f16", "--model"])
            .arg(&big)
            .arg("--out")
            .arg(&f16),
        "past what f16 can hold",
    );
    assert!(!f16.exists());
    export(&big, &s.path().join("big-bf16.gguf"), Some("bf16"));
    // `btx eval --text` refuses a context the model cannot hold before computing anything.
    let text = s.path().join("text.txt");
    std::fs::write(&text, "one two three four ".repeat(200)).unwrap();
    refused(
        btx()
            .args(["eval", "--text"])
            .arg(&text)
            .args(["--seq-len", "128", "--model"])
            .arg(run.join("seed/model")),
        "positions",
    );
    // Outputs: an existing file is kept without --force and replaced with it; a directory,
    // a path inside the model and an unknown type are refused.
    let seed = run.join("seed/model");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    std::fs::write(&out, b"keep me").unwrap();
    refused(
        btx()
            .args(["export", "--format", "gguf", "--model"])
            .arg(&seed)
            .arg("--out")
            .arg(&out),
        "exists",
    );
    assert_eq!(std::fs::read(&out).unwrap(), b"keep me");
    ok(btx()
        .args(["export", "--format", "gguf", "--force", "--model"])
        .arg(&seed)
        .arg("--out")
        .arg(&out));
    assert!(GgufFile::open(&out).is_ok());
    let leftovers: Vec<_> = std::fs::read_dir(out.parent().unwrap()).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "nothing beside the output");
    refused(
        btx()
            .args(["export", "--format", "gguf", "--model"])
            .arg(&seed)
            .arg("--out")
            .arg(out.parent().unwrap()),
        "directory",
    );
    refused(
        btx()
            .args(["export", "--format", "gguf", "--model"])
            .arg(&seed)
            .arg("--out")
            .arg(seed.join("m.gguf")),
        "inside",
    );
    // An unknown type is a usage error (exit 2), before anything is read or written.
    let o = btx()
        .args(["export", "--format", "gguf", "--dtype", "q4_0", "--model"])
        .arg(&seed)
        .arg("--out")
        .arg(s.path().join("y.gguf"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(common::text(&o).contains("unknown dtype \"q4_0\""));
    assert!(!s.path().join("y.gguf").exists());
    refused(
        btx()
            .args(["export", "--format", "hf", "--dtype", "q8_0", "--model"])
            .arg(&seed)
            .arg("--out")
            .arg(s.path().join("hf")),
        "GGUF type",
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
    }
}
