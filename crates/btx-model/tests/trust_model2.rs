//! Trust, third pass (adversarial probe): RoPE parameters resolved as transformers 4.x and 5.x
//! both read them or refused where they would not agree.

use btx_model::ModelConfig;

fn llama_json(extra: &str) -> String {
    format!(
        r#"{{"architectures":["LlamaForCausalLM"],"model_type":"llama","vocab_size":10,"hidden_size":8,
        "intermediate_size":16,"num_hidden_layers":1,"num_attention_heads":2{extra}}}"#
    )
}

fn mixtral_json(extra: &str) -> String {
    format!(
        r#"{{"architectures":["MixtralForCausalLM"],"vocab_size":10,"hidden_size":64,
        "intermediate_size":16,"num_hidden_layers":1,"num_attention_heads":16,
        "num_local_experts":2,"num_experts_per_tok":1{extra}}}"#
    )
}

fn theta(json: &str) -> f64 {
    ModelConfig::from_hf_json(json)
        .unwrap_or_else(|e| panic!("{json}: {e}"))
        .rope_theta
}

fn err(json: &str) -> String {
    ModelConfig::from_hf_json(json).unwrap_err().to_string()
}

/// transformers 5 takes rope_scaling over rope_parameters and RoPE's base from the chosen dict
/// (else the top-level rope_theta, else the class default); 4.x reads the top-level rope_theta
/// and the type from rope_scaling, and knows no rope_parameters. btx read theta from
/// rope_parameters then the top level, whatever rope_scaling said: repro (a) gave 10000 where
/// transformers 5 gives 500000, repro (b) 500000 where it gives 10000, both silently.
#[test]
fn rope_parameters_are_read_as_transformers_reads_them_or_refused() {
    // (a) rope_theta inside rope_scaling: 5 reads it, 4.x does not.
    let e = err(&llama_json(
        r#","rope_scaling":{"rope_type":"default","rope_theta":500000.0}"#,
    ));
    assert!(
        e.contains("rope_scaling.rope_theta = 500000") && e.contains("\nhint: "),
        "{e}"
    );
    // ... unless the top level says the same, when both read 500000.
    assert_eq!(
        theta(&llama_json(
            r#","rope_theta":5e5,"rope_scaling":{"rope_type":"default","rope_theta":500000.0}"#
        )),
        5e5
    );
    // (b) rope_scaling and rope_parameters: 5 takes rope_scaling whole (the default base
    // here), 4.x the top level: refused whatever they hold.
    let e = err(&llama_json(
        r#","rope_parameters":{"rope_type":"default","rope_theta":500000.0},"rope_scaling":{"rope_type":"default"}"#,
    ));
    assert!(
        e.contains("rope_scaling and rope_parameters are both set") && e.contains("\nhint: "),
        "{e}"
    );
    // A type given twice, disagreeing (4.x copies type over rope_type, 5 keeps rope_type), or
    // null (transformers cannot build RoPE from it).
    for (extra, needle) in [
        (
            r#","rope_parameters":{"rope_type":null,"type":"linear"}"#,
            "rope_parameters has a null rope type",
        ),
        (
            r#","rope_parameters":{"rope_type":null}"#,
            "rope_parameters has a null rope type",
        ),
        (
            r#","rope_scaling":{"type":null,"rope_type":"default"}"#,
            "rope_scaling has a null rope type",
        ),
        (
            r#","rope_scaling":{"rope_type":"default","type":"linear","factor":2.0}"#,
            "rope_scaling gives the rope type twice",
        ),
        // 4.x fails on a rope_scaling without a type, 5 takes the default.
        (r#","rope_scaling":{}"#, "rope_scaling names no rope type"),
        (
            r#","rope_scaling":{"factor":2.0}"#,
            "rope_scaling names no rope type",
        ),
        (r#","rope_theta":null"#, "rope_theta is null"),
        (
            r#","rope_parameters":{"rope_type":"default","rope_theta":null}"#,
            "rope_parameters.rope_theta is null",
        ),
        (
            r#","rope_scaling":{"rope_type":"default","partial_rotary_factor":0.5}"#,
            "rope_scaling.partial_rotary_factor",
        ),
        (
            r#","rope_scaling":{"rope_type":"default","foo":{"rope_type":"default"}}"#,
            "rope_scaling.foo",
        ),
    ] {
        let e = err(&llama_json(extra));
        assert!(e.contains(needle), "{extra}: {needle:?} not in {e}");
        assert!(e.contains("\nhint: "), "{extra}: no hint in {e}");
    }

    // Where the two agree, the number is theirs.
    // 4.x's spelling: top-level theta, a default rope_scaling (legacy "type" too).
    assert_eq!(
        theta(&llama_json(
            r#","rope_theta":5e5,"rope_scaling":{"type":"default"}"#
        )),
        5e5
    );
    assert_eq!(
        theta(&llama_json(
            r#","rope_scaling":{"rope_type":"default","type":"default"}"#
        )),
        1e4
    );
    // The class default when no theta is given anywhere: Mixtral's is 1e6.
    assert_eq!(
        theta(&mixtral_json(r#","rope_scaling":{"rope_type":"default"}"#)),
        1e6
    );
    assert_eq!(
        theta(&mixtral_json(
            r#","rope_parameters":{"rope_type":"default"}"#
        )),
        1e6
    );
    // 5's spelling: rope_parameters, its theta or the top level's.
    assert_eq!(
        theta(&llama_json(
            r#","rope_parameters":{"rope_type":"default","rope_theta":5e5}"#
        )),
        5e5
    );
    assert_eq!(
        theta(&llama_json(
            r#","rope_theta":5e5,"rope_parameters":{"rope_type":"default"}"#
        )),
        5e5
    );
    assert_eq!(theta(&llama_json(r#","rope_parameters":{}"#)), 1e4);
    // A null rope_scaling is no rope_scaling (transformers 5 writes neither key as null).
    assert_eq!(
        theta(&llama_json(
            r#","rope_scaling":null,"rope_parameters":{"rope_type":"default","rope_theta":2e5}"#
        )),
        2e5
    );
    // btx's own writer: top-level rope_theta and rope_parameters, equal.
    let mut c = ModelConfig::llama(32, 16, 24, 1, 2, 2, 64);
    c.rope_theta = 123456.0;
    let j = c.to_hf_json().to_string();
    assert_eq!(ModelConfig::from_hf_json(&j).unwrap(), c);
}

/// Every fixture under testdata/ (written by transformers 5.23) loads with the RoPE base it was
/// made with; the parity tests check the logits themselves.
#[test]
fn the_transformers_fixtures_keep_their_rope_base() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata");
    for (dir, want) in [
        ("hf-tiny/llama", 1e4),
        ("hf-tiny/mixtral", 1e4),
        ("hf-extra/mixtral-sharded-hd12-gqa4", 5e5),
        ("hf-extra/mixtral-e8-k3-tied-sharded", 5e5),
        ("hf-extra/llama-tied-bf16", 1e6),
        ("hf-extra/llama-gqa2-tied-bf16", 1e4),
    ] {
        let c = ModelConfig::load(&root.join(dir).join("model/config.json")).unwrap();
        assert_eq!(c.rope_theta, want, "{dir}");
    }
}
