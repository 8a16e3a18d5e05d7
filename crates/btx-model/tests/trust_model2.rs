//! Trust, third pass (adversarial probe): RoPE parameters resolved as transformers 4.x and 5.x
//! both read them or refused where they would not agree; the weights file transformers loads
//! when a directory holds both layouts; pad_token_id as the embedding's padding_idx (its row
//! gets no gradient from the lookup); shard indexes that cannot be followed refused by name;
//! generation's room counts the positions it uses.

mod pad;

use btx_model::burn::prelude::*;
use btx_model::generate::{generate, room, Sampling};
use btx_model::io::{write_checkpoint, write_tensors, OutDtype, StreamWriter, TensorReader};
use btx_model::{Model, ModelConfig, ModelError};
use btx_testkit::Scratch;

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
        assert_eq!(c.pad_token_id, None, "{dir}");
    }
}

fn small() -> ModelConfig {
    ModelConfig::llama(32, 16, 24, 1, 2, 2, 64)
}

/// A directory with model.safetensors and model.safetensors.index.json: transformers loads the
/// single file, btx read the shards. Now btx reads the single file too (and says so), and a
/// sharded save removes a stale single file, which would otherwise be read instead.
#[test]
fn a_single_file_beside_an_index_is_what_is_read() {
    let d = Scratch::new("trust2-both");
    let shards = Model::init(&small(), 1, &Device::flex()).unwrap();
    shards.save(&d, 4096).unwrap();
    assert!(d.join("model.safetensors.index.json").exists());
    let single = Model::init(&small(), 2, &Device::flex()).unwrap();
    write_tensors(&d.join("model.safetensors"), &single.host_params()).unwrap();
    let back = Model::load(&d, &Device::flex()).unwrap();
    assert_eq!(back.host_params(), single.host_params());

    // Saving shards over it leaves only the shards.
    shards.save(&d, 4096).unwrap();
    assert!(!d.join("model.safetensors").exists());
    let back = Model::load(&d, &Device::flex()).unwrap();
    assert_eq!(back.host_params(), shards.host_params());
}

/// transformers loads the file `transformers_weights` names; btx ignored the key.
#[test]
fn transformers_weights_naming_another_file_is_refused() {
    let e = err(&llama_json(
        r#","transformers_weights":"other.safetensors""#,
    ));
    assert!(
        e.contains("transformers_weights = \"other.safetensors\"") && e.contains("\nhint: "),
        "{e}"
    );
    for ok in [
        r#","transformers_weights":null"#,
        r#","transformers_weights":"model.safetensors""#,
    ] {
        ModelConfig::from_hf_json(&llama_json(ok)).unwrap();
    }
}

/// pad_token_id was not read. transformers builds nn.Embedding(vocab, d, padding_idx=pad):
/// outside the vocabulary it fails to build, so btx refuses it by name; inside, it is kept and
/// written back. A list of eos ids had only its first id checked.
#[test]
fn pad_token_id_is_read_checked_and_written_back() {
    let c = ModelConfig::from_hf_json(&llama_json(r#","pad_token_id":2"#)).unwrap();
    assert_eq!(c.pad_token_id, Some(2));
    assert_eq!(
        ModelConfig::from_hf_json(&c.to_hf_json().to_string()).unwrap(),
        c
    );
    assert_eq!(
        ModelConfig::from_hf_json(&llama_json(r#","pad_token_id":null"#))
            .unwrap()
            .pad_token_id,
        None
    );
    for (extra, needle) in [
        (
            r#","pad_token_id":10"#,
            "pad_token_id 10 is outside the vocabulary 0..10",
        ),
        (r#","pad_token_id":-1"#, "pad_token_id -1 is negative"),
        (r#","pad_token_id":-11"#, "pad_token_id -11 is outside"),
        (
            r#","pad_token_id":[1,2]"#,
            "pad_token_id must be one token id",
        ),
        (
            r#","pad_token_id":"2""#,
            "pad_token_id must be one token id",
        ),
        (r#","eos_token_id":[2,12]"#, "eos_token_id[1] 12 is outside"),
        (r#","bos_token_id":[1,10]"#, "bos_token_id[1] 10 is outside"),
    ] {
        let e = err(&llama_json(extra));
        assert!(e.contains(needle), "{extra}: {needle:?} not in {e}");
        assert!(e.contains("\nhint: "), "{extra}: {e}");
    }
    // -1 is row vocab_size - 1 to torch: the hint names that row.
    assert!(err(&llama_json(r#","pad_token_id":-1"#)).contains("pad_token_id (9)"));
    let c = ModelConfig::from_hf_json(&llama_json(r#","eos_token_id":[2,9]"#)).unwrap();
    assert_eq!(c.eos_token_id, Some(2));
}

/// The forward is unchanged by pad_token_id (no autodiff, so no masking at all).
#[test]
fn pad_token_id_leaves_the_forward_unchanged() {
    let m = Model::init(&pad::cfg(false), 7, &Device::flex()).unwrap();
    let opts = Default::default();
    let a = m.forward(&pad::IDS, 2, 6, &opts, None).logits;
    let b = pad::with_pad(&m, Some(pad::PAD as u32))
        .forward(&pad::IDS, 2, 6, &opts, None)
        .logits;
    assert_eq!(
        btx_model::to_vec(a)
            .iter()
            .map(|x| x.to_bits())
            .collect::<Vec<_>>(),
        btx_model::to_vec(b)
            .iter()
            .map(|x| x.to_bits())
            .collect::<Vec<_>>()
    );
}

#[test]
fn the_lookup_gives_the_pad_row_no_gradient() {
    pad::untied_pad_row_gets_no_gradient();
}

#[test]
fn a_tied_pad_row_gets_the_heads_gradient_only() {
    pad::tied_pad_row_gets_the_heads_gradient_only();
}

#[test]
fn a_batch_without_the_pad_id_trains_as_before() {
    pad::a_batch_without_the_pad_id_is_unchanged();
}

fn write_index(dir: &std::path::Path, json: &str) {
    std::fs::write(dir.join("model.safetensors.index.json"), json).unwrap();
}

/// Indexes that cannot be followed: each is refused as the index, by name, with a hint; before,
/// an empty weight_map read as "<empty path>: tensor ... is missing", a tensor in two shards as
/// a damaged file, a missing shard as a bare "No such file".
#[test]
fn shard_indexes_that_cannot_be_followed_are_refused_by_name() {
    let d = Scratch::new("trust2-index");
    let specs = vec![("a".to_string(), vec![2]), ("b".to_string(), vec![2])];
    write_checkpoint(&d, &specs, 8, |_| Ok(vec![1.0, 2.0])).unwrap();
    let index = d.join("model.safetensors.index.json");
    let shard1 = "model-00001-of-00002.safetensors";
    let shard2 = "model-00002-of-00002.safetensors";
    assert!(TensorReader::open(&d).is_ok());
    let open_err = || TensorReader::open(&d).err().expect("refused");
    let check = |e: ModelError, needles: &[&str]| {
        let s = e.to_string();
        for n in needles {
            assert!(s.contains(n), "{n:?} not in {s}");
        }
        assert!(!s.contains("is missing"), "{s}");
        assert_eq!(s.matches("\nhint: ").count(), 1, "{s}");
    };

    write_index(&d, r#"{"weight_map":{}}"#);
    let e = open_err();
    assert!(matches!(e, ModelError::Index { .. }), "{e:?}");
    check(
        e,
        &[&index.display().to_string(), "\"weight_map\" is empty"],
    );

    write_index(&d, r#"{"weight_map":{"a":1}}"#);
    check(
        open_err(),
        &["weight_map[\"a\"] must name a shard file, found 1"],
    );
    write_index(&d, r#"{"weight_map":{"a":null}}"#);
    check(open_err(), &["weight_map[\"a\"] must name a shard file"]);
    write_index(&d, r#"{"metadata":{}}"#);
    check(open_err(), &["no \"weight_map\""]);
    write_index(&d, "{\"weight_map\":");
    check(open_err(), &["not a valid shard index"]);

    // A shard that is not there.
    write_index(
        &d,
        &format!(r#"{{"weight_map":{{"a":"{shard1}","b":"model-00009-of-00009.safetensors"}}}}"#),
    );
    check(
        open_err(),
        &[
            "names the shard \"model-00009-of-00009.safetensors\", which is not in",
            "incomplete download",
        ],
    );

    // The same tensor in two shards.
    let mut w =
        StreamWriter::create(&d.join(shard2), vec![("a".into(), OutDtype::F32, vec![2])]).unwrap();
    w.write_f32("a", &[3.0, 4.0]).unwrap();
    w.finish().unwrap();
    write_index(
        &d,
        &format!(r#"{{"weight_map":{{"a":"{shard1}","b":"{shard2}"}}}}"#),
    );
    let e = open_err();
    assert!(matches!(e, ModelError::DuplicateTensor { .. }), "{e:?}");
    let s = e.to_string();
    assert!(!s.contains("not a readable safetensors"), "{s}");
    check(e, &["tensor \"a\" is also in", "shards overlap"]);
}

/// Reading token ids from a float tensor said "dtype F32 (expected an integer type), which btx
/// cannot read (F32, F16, BF16, F64)"; a float weight stored as integers now says what is read.
#[test]
fn dtype_errors_say_what_is_read_there() {
    let d = Scratch::new("trust2-dtype");
    let p = d.join("x.safetensors");
    let mut w = StreamWriter::create(
        &p,
        vec![
            ("f".into(), OutDtype::F32, vec![2]),
            ("i".into(), OutDtype::I64, vec![2]),
        ],
    )
    .unwrap();
    w.write_f32("f", &[1.0, 2.0]).unwrap();
    w.write_i64("i", &[1, 2]).unwrap();
    w.finish().unwrap();
    let r = TensorReader::open(&p).unwrap();
    let e = r.read_i64("f").unwrap_err().to_string();
    assert!(
        e.contains("has dtype F32, but btx reads token ids as integers")
            && e.contains("\nhint: ")
            && !e.contains("F16"),
        "{e}"
    );
    let e = r.read("i").unwrap_err().to_string();
    assert!(
        e.contains("has dtype I64, but btx reads floats") && e.contains("\nhint: "),
        "{e}"
    );
}

/// Generation feeds back every new token but the last, so `max_new` tokens after a prompt of
/// n use n + max_new - 1 positions; `room` counted one fewer (a prompt of 6 in a window of 8
/// was allowed 2 tokens where 3 fit).
#[test]
fn generation_room_counts_the_positions_it_uses() {
    let mut c = small();
    c.sliding_window = Some(8);
    let m = Model::init(&c, 1, &Device::flex()).unwrap();
    let prompt = vec![1i64, 2, 3, 4, 5, 6];
    assert_eq!(room(&m, 6), 3);
    assert_eq!(room(&m, 8), 1);
    assert_eq!(room(&m, 9), 0);
    // All three are generated, within the window (forward asserts it).
    let out = generate(&m, &[prompt], 20, &Sampling::default(), None, |_, _| false);
    assert_eq!(out[0].len(), 3);
    // max_position_embeddings likewise.
    let m = Model::init(
        &ModelConfig::llama(32, 16, 24, 1, 2, 2, 8),
        1,
        &Device::flex(),
    )
    .unwrap();
    assert_eq!(room(&m, 8), 1);
    let out = generate(&m, &[vec![1; 8]], 5, &Sampling::default(), None, |_, _| {
        false
    });
    assert_eq!(out[0].len(), 1);
}
