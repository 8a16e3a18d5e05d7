//! Trust, third pass, on the command line: `btx generate`'s --max-tokens limit counts the
//! positions generation uses (the last new token is never fed back), a missing tokenizer is
//! said with a hint, and `btx forward` over float input_ids says what it reads.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use btx_data::Tok;
use btx_model::burn::prelude::Device;
use btx_model::io::{OutDtype, StreamWriter};
use btx_model::{Model, ModelConfig};
use btx_testkit::Scratch;

fn btx() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_btx"));
    c.env("BTX_LOG", "warn");
    c
}

fn run(c: &mut Command) -> (i32, String) {
    let Output { status, stderr, .. } = c.output().unwrap();
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stderr).to_string(),
    )
}

/// A dense model with an 8-token sliding window, and a tokenizer.
fn windowed(dir: &Path) -> PathBuf {
    let docs = btx_data::builtin::docs("general", 0, 100).unwrap();
    let tok = Tok::train_bpe(docs.iter(), 300, 2).unwrap();
    let mut cfg = ModelConfig::llama(tok.vocab_size(), 16, 32, 1, 2, 2, 64);
    cfg.sliding_window = Some(8);
    Model::init(&cfg, 0, &Device::flex())
        .unwrap()
        .save(dir, usize::MAX)
        .unwrap();
    tok.save(&dir.join("tokenizer.json")).unwrap();
    dir.to_path_buf()
}

#[test]
fn generate_limits_and_hints_are_exact() {
    let d = Scratch::new("trust-model2-generate");
    let model = windowed(&d.join("model"));
    let prompt = "the cat sat";
    let n = Tok::load(&model.join("tokenizer.json"))
        .unwrap()
        .encode(prompt)
        .unwrap()
        .len();
    assert!(n < 8, "the prompt must leave room: {n} tokens");
    // n prompt positions + (room - 1) fed-back tokens fill the window of 8.
    let room = 8 - n + 1;
    let gen = |max: usize| {
        let mut c = btx();
        c.args(["generate", "--model"]).arg(&model).args([
            "--prompt",
            prompt,
            "--max-tokens",
            &max.to_string(),
        ]);
        c
    };
    let (code, err) = run(&mut gen(room + 1));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("hint: --max-tokens {room} or fewer")),
        "{err}"
    );
    assert!(err.contains("the model's sliding_window of 8"), "{err}");
    assert!(!err.contains("its sliding_window"), "{err}");
    // What the hint offers runs.
    let (code, err) = run(&mut gen(room));
    assert_eq!(code, 0, "{err}");

    // A tokenizer that is not there: said with a hint, exit 1.
    let (code, err) = run(btx()
        .args(["generate", "--model"])
        .arg(&model)
        .args(["--prompt", "hi", "--tokenizer"])
        .arg(d.join("nonexistent.json")));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("no tokenizer file there")
            && err.contains("hint: --tokenizer must name a tokenizer.json file"),
        "{err}"
    );
}

#[test]
fn forward_over_float_ids_says_what_it_reads() {
    let d = Scratch::new("trust-model2-forward");
    let model = windowed(&d.join("model"));
    let input = d.join("ids.safetensors");
    let mut w = StreamWriter::create(
        &input,
        vec![("input_ids".into(), OutDtype::F32, vec![1, 4])],
    )
    .unwrap();
    w.write_f32("input_ids", &[1.0; 4]).unwrap();
    w.finish().unwrap();
    let (code, err) = run(btx()
        .args(["forward", "--model"])
        .arg(&model)
        .arg("--input")
        .arg(&input)
        .arg("--out")
        .arg(d.join("out.safetensors")));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("has dtype F32, but btx reads token ids as integers")
            && err.contains("hint: store the token ids as an integer tensor"),
        "{err}"
    );
    assert!(!err.contains("F16, BF16, F64"), "{err}");
}
