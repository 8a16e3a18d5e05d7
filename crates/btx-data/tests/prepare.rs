//! `btx data prepare` and mixtures on data the test makes itself.

use std::path::Path;

use btx_core::outdir::Existing;
use btx_data::prepare::{split_docs, DomainConfig, TokenizerConfig};
use btx_data::{prepare, BatchSource, DataDir, MixConfig, Mixture, PrepareConfig, Tok};
use btx_testkit::Scratch;

fn tmp(tag: &str) -> Scratch {
    Scratch::new(&format!("prep-{tag}"))
}

fn small_builtin() -> PrepareConfig {
    let mut c = PrepareConfig::builtin(150, 20, 400, 1);
    c.val_fraction = 0.1;
    c
}

fn file_domain(name: &str, paths: Vec<String>) -> DomainConfig {
    let mut d = small_builtin().domains[0].clone();
    d.name = name.into();
    d.builtin = None;
    d.paths = paths;
    d.docs = 0;
    d
}

fn decode_docs(data: &DataDir, domain: &str, split: &str) -> Vec<String> {
    let tok = data.tokenizer().unwrap();
    let s = data.shard(domain, split).unwrap();
    let ids: Vec<u32> = (0..s.len()).map(|i| s.get(i)).collect();
    ids.split(|&x| x == tok.eos_id())
        .filter(|d| !d.is_empty())
        .map(|d| tok.decode(d).unwrap())
        .collect()
}

#[test]
fn builtin_prepare_writes_shards_that_decode_to_the_documents() {
    let out = tmp("builtin");
    let cfg = small_builtin();
    let m = prepare(&cfg, Path::new("."), &out, Existing::Refuse).unwrap();
    assert_eq!(m.domains.len(), 4);
    let data = DataDir::open(&out).unwrap();
    for (name, st) in &m.domains {
        assert_eq!(st.train.docs + st.val.docs, 150, "{name}");
        assert!(st.val.docs >= 1 && st.train.docs >= 1);
        assert_eq!(st.tasks, 20);
        let train = decode_docs(&data, name, "train");
        let val = decode_docs(&data, name, "val");
        assert_eq!(train.len() as u64, st.train.docs);
        let all = btx_data::builtin::docs(name, 1, 150).unwrap();
        let is_val = split_docs(150, 0.1, 1, name).unwrap();
        let want_val: Vec<&String> = all
            .iter()
            .zip(&is_val)
            .filter(|(_, v)| **v)
            .map(|(d, _)| d)
            .collect();
        assert_eq!(val.iter().collect::<Vec<_>>(), want_val, "{name}");
        // Held-out tasks never appear in the training split.
        let text = train.join("\n");
        for t in data.tasks(name).unwrap() {
            assert!(!text.contains(&t.prompt), "{name}: task leaked");
        }
    }
    // Same config: nothing is redone (the manifest file is not rewritten).
    let mt = std::fs::metadata(out.join("manifest.json"))
        .unwrap()
        .modified()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    prepare(&cfg, Path::new("."), &out, Existing::Refuse).unwrap();
    assert_eq!(
        std::fs::metadata(out.join("manifest.json"))
            .unwrap()
            .modified()
            .unwrap(),
        mt
    );
}

#[test]
fn split_is_deterministic_and_keeps_both_sides() {
    let a = split_docs(1000, 0.05, 7, "x").unwrap();
    assert_eq!(a, split_docs(1000, 0.05, 7, "x").unwrap());
    assert_ne!(a, split_docs(1000, 0.05, 8, "x").unwrap());
    let n = a.iter().filter(|v| **v).count();
    assert!((25..=80).contains(&n), "{n}");
    assert_eq!(split_docs(2, 0.0, 0, "x").unwrap(), vec![false, true]);
    assert!(split_docs(1, 0.5, 0, "x").is_err());
}

#[test]
fn mixtures_are_deterministic_weighted_and_resume_exactly() {
    let out = tmp("mix");
    prepare(&small_builtin(), Path::new("."), &out, Existing::Refuse).unwrap();
    let data = DataDir::open(&out).unwrap();
    let mix = MixConfig {
        weights: [("math".to_string(), 0.3), ("code".to_string(), 0.7)].into(),
        split: None,
    };
    let mut a = Mixture::new(&data, &mix, 4, 32, 9).unwrap();
    let mut b = Mixture::new(&data, &mix, 4, 32, 9).unwrap();
    let first: Vec<_> = (0..5).map(|_| a.next_batch()).collect();
    let again: Vec<_> = (0..5).map(|_| b.next_batch()).collect();
    assert_eq!(first, again);
    // Resume from a cursor: the continuation is identical.
    let cur = a.cursor();
    let next_a: Vec<_> = (0..3).map(|_| a.next_batch()).collect();
    let mut c = Mixture::new(&data, &mix, 4, 32, 9).unwrap();
    c.restore(&cur).unwrap();
    let next_c: Vec<_> = (0..3).map(|_| c.next_batch()).collect();
    assert_eq!(next_a, next_c);
    // Domain frequencies follow the weights (names sorted: code = 0, math = 1).
    let mut counts = [0usize; 2];
    for _ in 0..500 {
        for d in a.next_batch().domains {
            counts[d] += 1;
        }
    }
    let code = counts[0] as f64 / 2000.0;
    assert!((code - 0.7).abs() < 0.04, "code share {code}");
    // A cursor from another mixture is refused.
    let other = MixConfig::default();
    let mut d = Mixture::new(&data, &other, 4, 32, 9).unwrap();
    assert!(d.restore(&cur).unwrap_err().contains("domains"));
}

#[test]
fn bad_inputs_are_clear_errors() {
    let dir = tmp("bad");
    std::fs::write(dir.join("empty.txt"), "  \n\n").unwrap();
    std::fs::write(dir.join("ok.txt"), "hello there\n").unwrap();
    std::fs::write(dir.join("latin1.txt"), b"line one\ncaf\xe9\n").unwrap();
    let mut cfg = small_builtin();
    cfg.domains = vec![file_domain("empty", vec!["empty.txt".into()])];
    let e = prepare(&cfg, &dir, &dir.join("o1"), Existing::Refuse)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no documents") && e.contains("empty.txt"), "{e}");
    cfg.domains = vec![file_domain(
        "latin",
        vec!["ok.txt".into(), "latin1.txt".into()],
    )];
    let e = prepare(&cfg, &dir, &dir.join("o2"), Existing::Refuse)
        .unwrap_err()
        .to_string();
    assert!(e.contains("latin1.txt:2") && e.contains("UTF-8"), "{e}");
    cfg.domains = vec![file_domain("missing", vec!["nope/*.txt".into()])];
    let e = prepare(&cfg, &dir, &dir.join("o3"), Existing::Refuse)
        .unwrap_err()
        .to_string();
    assert!(e.contains("matches no files"), "{e}");
    assert!(!dir.join("o3/manifest.json").exists());
    // Failed prepares leave no output and no staging directory behind.
    for o in ["o1", "o2", "o3"] {
        assert!(!dir.join(o).exists(), "{o}");
    }
    assert!(!std::fs::read_dir(&*dir).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with('.')));

    // A shard made with one tokenizer is refused under another.
    let out = tmp("tokmix");
    prepare(&small_builtin(), Path::new("."), &out, Existing::Refuse).unwrap();
    let other =
        Tok::train_bpe(["something else entirely"].iter().cycle().take(10), 300, 1).unwrap();
    let s = btx_data::shard::Shard::open(&out.join("math/train.tok")).unwrap();
    let e = s.check_tokenizer(other.hash()).unwrap_err().to_string();
    assert!(e.contains("math/train.tok") && e.contains("hint"), "{e}");
}

#[test]
fn corpora_from_files_and_jsonl_with_a_given_tokenizer() {
    let dir = tmp("files");
    std::fs::create_dir_all(dir.join("src")).unwrap();
    for i in 0..6 {
        std::fs::write(
            dir.join(format!("src/m{i}.py")),
            format!("def f{i}(x):\n    return x + {i}\n"),
        )
        .unwrap();
    }
    let lines: String = (0..8)
        .map(|i| format!("{{\"body\": \"fact number {i}\", \"id\": {i}}}\n"))
        .collect();
    std::fs::write(dir.join("facts.jsonl"), lines).unwrap();
    let tok = Tok::train_bpe(["def return fact number"].iter().cycle().take(5), 300, 1).unwrap();
    tok.save(&dir.join("tok.json")).unwrap();
    let mut code = file_domain("code", vec!["src".into()]);
    code.tasks_file = None;
    let mut facts = file_domain("facts", vec!["*.jsonl".into()]);
    facts.format = btx_data::corpus::Format::Jsonl;
    facts.field = "body".into();
    let cfg = PrepareConfig {
        seed: 0,
        val_fraction: 0.2,
        tokenizer: TokenizerConfig {
            path: Some("tok.json".into()),
            ..Default::default()
        },
        domains: vec![code, facts],
    };
    let m = prepare(&cfg, &dir, &dir.join("out"), Existing::Refuse).unwrap();
    assert_eq!(m.tokenizer_hash, tok.hash());
    assert_eq!(m.domains["code"].train.docs + m.domains["code"].val.docs, 6);
    assert_eq!(
        m.domains["facts"].train.docs + m.domains["facts"].val.docs,
        8
    );
    let data = DataDir::open(&dir.join("out")).unwrap();
    let mut docs = decode_docs(&data, "facts", "train");
    docs.extend(decode_docs(&data, "facts", "val"));
    docs.sort();
    assert_eq!(docs[0], "fact number 0");
}

#[test]
fn cloze_tasks_come_from_the_validation_documents_only() {
    let dir = tmp("cloze");
    std::fs::create_dir_all(dir.join("docs")).unwrap();
    for i in 0..20 {
        let text = format!(
            "Story {i}. The keeper of lighthouse number {i} climbed the stairs every night \
             to light the lamp, and the ships of the bay passed safely beside the rocks. \
             In the morning keeper {i} wrote the weather down in the logbook.\n"
        );
        std::fs::write(dir.join(format!("docs/d{i}.txt")), text).unwrap();
    }
    let mut d = file_domain("stories", vec!["docs".into()]);
    d.cloze = 50;
    let mut cfg = small_builtin();
    cfg.val_fraction = 0.25;
    cfg.domains = vec![d.clone()];
    let m = prepare(&cfg, &dir, &dir.join("out"), Existing::Refuse).unwrap();
    let data = DataDir::open(&dir.join("out")).unwrap();
    let val = decode_docs(&data, "stories", "val");
    let train = decode_docs(&data, "stories", "train");
    let tasks = data.tasks("stories").unwrap();
    // Two sentence-final words with context ("rocks", "logbook") per validation document.
    assert_eq!(tasks.len(), 2 * val.len(), "{tasks:?}");
    assert_eq!(m.domains["stories"].tasks, tasks.len());
    for t in &tasks {
        assert!(val.iter().any(|v| v.contains(&t.prompt)), "{t:?}");
        assert!(!train.iter().any(|v| v.contains(&t.prompt)), "{t:?}");
        assert!(["rocks", "logbook"].contains(&t.answer.as_str()), "{t:?}");
    }
    // Cloze is for files without a task set.
    d.tasks_file = Some("tasks.jsonl".into());
    cfg.domains = vec![d];
    let e = prepare(&cfg, &dir, &dir.join("out2"), Existing::Refuse)
        .unwrap_err()
        .to_string();
    assert!(e.contains("cloze") && e.contains("hint"), "{e}");
}

/// Regressions (issue 17): a data dir whose tokenizer.json was swapped trained and shipped the
/// wrong tokenizer; a model with a smaller vocabulary or another tokenizer was evaluated on it
/// without a word; `btx data info` printed the manifest's counts for a corrupt shard.
#[test]
fn a_data_dir_checks_its_tokenizer_its_shards_and_the_models_it_meets() {
    let out = tmp("checks");
    prepare(&small_builtin(), Path::new("."), &out, Existing::Refuse).unwrap();
    let data = DataDir::open(&out).unwrap();
    let found = data.verify().unwrap();
    assert_eq!(
        found["math"][0].0,
        data.manifest.domains["math"].train.tokens
    );

    // Models: a vocabulary too small, or another tokenizer beside the weights.
    let model = out.join("model");
    std::fs::create_dir_all(&model).unwrap();
    let vocab = data.manifest.vocab_size;
    data.check_model(&model, vocab).unwrap();
    let e = data.check_model(&model, vocab - 1).unwrap_err().to_string();
    assert!(e.contains("smaller") && e.contains("hint"), "{e}");
    let other =
        Tok::train_bpe(["something else entirely"].iter().cycle().take(10), 300, 1).unwrap();
    other.save(&model.join("tokenizer.json")).unwrap();
    let e = data.check_model(&model, vocab).unwrap_err().to_string();
    assert!(e.contains("differs") && e.contains("hint"), "{e}");

    // A corrupt shard: info reads the shards, not the manifest.
    let shard = out.join("code/val.tok");
    let good = std::fs::read(&shard).unwrap();
    let mut bad = good.clone();
    bad.truncate(good.len() - 2);
    std::fs::write(&shard, &bad).unwrap();
    let e = data.verify().unwrap_err().to_string();
    assert!(e.contains("val.tok") && e.contains("truncated"), "{e}");
    let mut bad = good.clone();
    let n = bad.len();
    bad[n - 2..].copy_from_slice(&u16::MAX.to_le_bytes());
    std::fs::write(&shard, &bad).unwrap();
    let e = data.verify().unwrap_err().to_string();
    assert!(e.contains("outside the tokenizer"), "{e}");
    std::fs::write(&shard, &good).unwrap();

    // A swapped tokenizer.json.
    other.save(&out.join("tokenizer.json")).unwrap();
    let e = data.tokenizer().err().unwrap().to_string();
    assert!(
        e.contains("not the tokenizer this data was prepared with"),
        "{e}"
    );
    assert!(data.verify().is_err());
}

/// Issue 28: a prepared directory whose manifest matched was "up to date" whatever its shards
/// held, so a truncated shard was recorded into a new DONE and failed every run after it.
/// `prepare_verified` reads it back first and prepares damaged data again, identically.
#[test]
fn damaged_prepared_data_is_prepared_again() {
    let d = tmp("damaged");
    let out = d.join("data");
    let cfg = small_builtin();
    prepare(&cfg, Path::new("."), &out, Existing::Refuse).unwrap();
    let shard = out.join("math/train.tok");
    let good = std::fs::read(&shard).unwrap();
    std::fs::write(&shard, &good[..good.len() / 2]).unwrap();
    // The plain shortcut believes the manifest; the verified one does not.
    prepare(&cfg, Path::new("."), &out, Existing::Refuse).unwrap();
    assert!(DataDir::open(&out).unwrap().verify().is_err());
    btx_data::prepare_verified(&cfg, Path::new("."), &out, Existing::Refuse).unwrap();
    DataDir::open(&out).unwrap().verify().unwrap();
    assert_eq!(std::fs::read(&shard).unwrap(), good);
}
