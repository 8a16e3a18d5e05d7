//! `tokenizer.json` → GGUF tokenizer metadata (`tokenizer.ggml.*`), so that llama.cpp
//! tokenises text as `tokenizers` does: the byte-level BPE vocabulary in id order (padded to the
//! model's rows with unused `[PAD{i}]` tokens, as llama.cpp's converter pads), the merges, token
//! types, special ids, whether BOS/EOS are added, and the llama.cpp pre-tokenizer
//! (`tokenizer.ggml.pre`) that splits text as the file's `pre_tokenizer` does. A tokenizer
//! whose splitting llama.cpp has no name for is refused, never exported with a guess.

use std::path::Path;

use btx_data::error::{file_err, DataError, Result};
use btx_data::gguf::Value;
use btx_model::ModelConfig;
use serde_json::Value as Json;

use crate::import::{LLAMA3_SPLIT, QWEN2_SPLIT};

/// `hint:` for a tokenizer llama.cpp cannot be told to reproduce.
const HINT: &str = "btx exports byte-level BPE tokenizers (GPT-2, SmolLM/StarCoder, Llama 3, Qwen2/Qwen3 splitting); export with --format hf and convert with llama.cpp's convert_hf_to_gguf.py, which knows more tokenizers by their hashes";

/// GGUF metadata, in the order written.
pub type Meta = Vec<(String, Value)>;

/// llama.cpp's token types.
const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;

/// Llama 3's and Qwen2's split regexes as their own `tokenizer.json` files spell them, with
/// the case-insensitive group that llama.cpp's regexes spell out by ASCII classes (the two
/// match the same contractions: `(?i:...)` would also fold U+017F into `s` and U+212A into
/// `k`, neither of which follows an apostrophe in these patterns' alternatives).
const LLAMA3_SPLIT_HF: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT_HF: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn refuse(path: &Path, msg: impl std::fmt::Display) -> DataError {
    file_err(path, format!("{msg}\nhint: {HINT}"))
}

/// A ByteLevel pre-tokenizer step: `use_regex` says whether it splits with GPT-2's regex.
fn byte_level(j: &Json) -> Option<bool> {
    if j["type"] != "ByteLevel" || j["add_prefix_space"] == true {
        return None;
    }
    j["use_regex"].as_bool().or(Some(true))
}

/// The regex of a `Split` step that isolates its matches, if `j` is one.
fn split_regex(j: &Json) -> Option<&str> {
    if j["type"] != "Split" || j["behavior"] != "Isolated" || j["invert"] == true {
        return None;
    }
    j["pattern"]["Regex"].as_str()
}

/// llama.cpp's pre-tokenizer name for a `pre_tokenizer`, and whether llama.cpp's BPE then
/// ignores merges for whole words found in the vocabulary (its llama3 type only), or None.
fn pre_name(pre: &Json) -> Option<(&'static str, bool)> {
    if byte_level(pre) == Some(true) {
        return Some(("gpt-2", false));
    }
    let steps = pre["pretokenizers"]
        .as_array()
        .filter(|_| pre["type"] == "Sequence")?;
    match &steps[..] {
        [digits, bl] if digits["type"] == "Digits" && digits["individual_digits"] == true => {
            (byte_level(bl) == Some(true)).then_some(("smollm", false))
        }
        [split, bl] if byte_level(bl) == Some(false) => match split_regex(split)? {
            r if r == LLAMA3_SPLIT || r == LLAMA3_SPLIT_HF => Some(("llama-bpe", true)),
            r if r == QWEN2_SPLIT || r == QWEN2_SPLIT_HF => Some(("qwen2", false)),
            _ => None,
        },
        _ => None,
    }
}

/// What a post-processor adds around a text: (BOS first, EOS last), from a TemplateProcessing's
/// `single` template; a ByteLevel post-processor (offsets only) or none adds nothing.
fn added_specials(
    path: &Path,
    post: &Json,
    bos: Option<&str>,
    eos: Option<&str>,
) -> Result<(bool, bool)> {
    match post["type"].as_str() {
        None | Some("ByteLevel") => return Ok((false, false)),
        Some("TemplateProcessing") => {}
        Some("Sequence") => {
            let mut out = (false, false);
            for p in post["processors"].as_array().into_iter().flatten() {
                let (b, e) = added_specials(path, p, bos, eos)?;
                out = (out.0 | b, out.1 | e);
            }
            return Ok(out);
        }
        Some(other) => {
            return Err(refuse(
                path,
                format!("post_processor {other:?}: llama.cpp only adds BOS and EOS around a text"),
            ))
        }
    }
    let single = post["single"].as_array().cloned().unwrap_or_default();
    let special = |j: &Json| j["SpecialToken"]["id"].as_str().map(str::to_string);
    let seq_at = single.iter().position(|j| j.get("Sequence").is_some());
    let before: Vec<String> = single[..seq_at.unwrap_or(0)]
        .iter()
        .filter_map(special)
        .collect();
    let after: Vec<String> = match seq_at {
        Some(i) => single[i + 1..].iter().filter_map(special).collect(),
        None => vec![],
    };
    let ok = |v: &[String], want: Option<&str>| {
        v.is_empty() || (v.len() == 1 && Some(v[0].as_str()) == want)
    };
    if seq_at.is_none() || !ok(&before, bos) || !ok(&after, eos) {
        return Err(refuse(
            path,
            format!("post_processor adds {before:?} before and {after:?} after a text; llama.cpp can add only the BOS token ({bos:?}) before and the EOS token ({eos:?}) after"),
        ));
    }
    Ok((!before.is_empty(), !after.is_empty()))
}

/// The `tokenizer.ggml.*` metadata for the `tokenizer.json` at `path`, for a model with
/// `cfg.vocab_size` embedding rows, and notes for the user on what may differ.
pub fn tokenizer_meta(path: &Path, cfg: &ModelConfig) -> Result<(Meta, Vec<String>)> {
    let text = std::fs::read_to_string(path).map_err(|e| btx_data::error::io_err(path, e))?;
    let j: Json =
        serde_json::from_str(&text).map_err(|e| file_err(path, format!("not JSON: {e}")))?;
    let model = &j["model"];
    check_byte_level_bpe(path, model)?;
    let notes = normalizer_notes(path, &j["normalizer"])?;
    let pre = llama_cpp_pre(path, &j["pre_tokenizer"], model)?;
    let tokens = tokens_by_id(path, &j, cfg.vocab_size)?;
    let (mut texts, mut types) = (vec![], vec![]);
    for i in 0..cfg.vocab_size {
        let (t, ty) = tokens
            .get(i)
            .cloned()
            .flatten()
            .unwrap_or_else(|| (format!("[PAD{i}]"), UNUSED));
        texts.push(Value::Str(t));
        types.push(Value::I32(ty));
    }
    let merges = merges_of(path, model)?;
    let name_of = |id: Option<u32>| -> Option<String> {
        id.and_then(|i| tokens.get(i as usize).cloned().flatten())
            .map(|(t, _)| t)
    };
    let (add_bos, add_eos) = added_specials(
        path,
        &j["post_processor"],
        name_of(cfg.bos_token_id).as_deref(),
        name_of(cfg.eos_token_id).as_deref(),
    )?;
    let mut meta = vec![
        ("tokenizer.ggml.model".into(), Value::Str("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::Str(pre.into())),
        ("tokenizer.ggml.tokens".into(), Value::Array(texts)),
        ("tokenizer.ggml.token_type".into(), Value::Array(types)),
        ("tokenizer.ggml.merges".into(), Value::Array(merges)),
    ];
    for (key, id) in [
        ("bos_token_id", cfg.bos_token_id),
        ("eos_token_id", cfg.eos_token_id),
        ("padding_token_id", cfg.pad_token_id),
    ] {
        if let Some(id) = id {
            meta.push((format!("tokenizer.ggml.{key}"), Value::U32(id)));
        }
    }
    meta.push(("tokenizer.ggml.add_bos_token".into(), Value::Bool(add_bos)));
    meta.push(("tokenizer.ggml.add_eos_token".into(), Value::Bool(add_eos)));
    if let Some(t) = chat_template(path)? {
        meta.push(("tokenizer.chat_template".into(), Value::Str(t)));
    }
    Ok((meta, notes))
}

/// Refuses a tokenizer model that is not a byte-level BPE as llama.cpp's gpt2 tokenizer runs it.
fn check_byte_level_bpe(path: &Path, model: &Json) -> Result<()> {
    if model["type"] != "BPE" {
        return Err(refuse(
            path,
            format!("the tokenizer model is {}, not BPE", model["type"]),
        ));
    }
    for (key, ok) in [
        ("byte_fallback", model["byte_fallback"] != true),
        ("dropout", model["dropout"].is_null()),
        (
            "continuing_subword_prefix",
            model["continuing_subword_prefix"].is_null(),
        ),
        ("end_of_word_suffix", model["end_of_word_suffix"].is_null()),
    ] {
        if !ok {
            return Err(refuse(
                path,
                format!("model.{key} is {}: not a byte-level BPE as llama.cpp's gpt2 tokenizer runs it (a SentencePiece-style vocabulary, such as Llama 2's or Mistral's, is not exported yet)", model[key]),
            ));
        }
    }
    Ok(())
}

/// The notes on the tokenizer's `normalizer`, or its refusal. Qwen2/Qwen3's tokenizers
/// normalise to NFC first; llama.cpp does not (nor does its converter keep it), so the two
/// agree on text already in NFC (as most text is) and only there: said in a note, not
/// refused, or no Qwen could be exported.
fn normalizer_notes(path: &Path, normalizer: &Json) -> Result<Vec<String>> {
    let mut notes = vec![];
    match normalizer {
        Json::Null => {}
        n if n["type"] == "NFC" => notes.push(
            "the tokenizer normalises text to NFC first and llama.cpp does not: the two tokenise text already in NFC (most text) alike, other text may differ".to_string(),
        ),
        n => {
            return Err(refuse(
                path,
                format!("the tokenizer normalizes text first ({n}), which llama.cpp does not"),
            ))
        }
    }
    Ok(notes)
}

/// llama.cpp's pre-tokenizer name for the `pre_tokenizer`, which must agree with the model's
/// `ignore_merges`.
fn llama_cpp_pre(path: &Path, pre_tokenizer: &Json, model: &Json) -> Result<&'static str> {
    let (pre, ignore_merges) = pre_name(pre_tokenizer).ok_or_else(|| {
        refuse(
            path,
            format!(
                "pre_tokenizer {} splits text in a way btx cannot name as a llama.cpp pre-tokenizer",
                short(pre_tokenizer)
            ),
        )
    })?;
    if model["ignore_merges"].as_bool().unwrap_or(false) != ignore_merges {
        return Err(refuse(
            path,
            format!("model.ignore_merges is {}, but llama.cpp's {pre:?} pre-tokenizer {} merges for words in the vocabulary", model["ignore_merges"], if ignore_merges { "ignores" } else { "applies" }),
        ));
    }
    Ok(pre)
}

/// Tokens by id, with their llama.cpp types: the vocabulary, then added tokens (which may lie
/// past it). Every id must be a row of the model's `vocab_size`.
fn tokens_by_id(path: &Path, j: &Json, vocab_size: usize) -> Result<Vec<Option<(String, i32)>>> {
    let mut tokens: Vec<Option<(String, i32)>> = vec![];
    let mut put = |id: usize, t: &str, ty: i32| -> Result<()> {
        if id >= vocab_size {
            return Err(refuse(
                path,
                format!("token {t:?} has id {id}, past the model's {vocab_size} embedding rows"),
            ));
        }
        if tokens.len() <= id {
            tokens.resize(id + 1, None);
        }
        tokens[id] = Some((t.to_string(), ty));
        Ok(())
    };
    let vocab = j["model"]["vocab"]
        .as_object()
        .ok_or_else(|| refuse(path, "model.vocab is not an object"))?;
    for (t, id) in vocab {
        let id = id
            .as_u64()
            .ok_or_else(|| refuse(path, format!("vocab id of {t:?} is not an integer")))?;
        put(id as usize, t, NORMAL)?;
    }
    for a in j["added_tokens"].as_array().into_iter().flatten() {
        let (Some(id), Some(t)) = (a["id"].as_u64(), a["content"].as_str()) else {
            return Err(refuse(
                path,
                format!("added token {a} has no id or content"),
            ));
        };
        put(
            id as usize,
            t,
            if a["special"] == true {
                CONTROL
            } else {
                USER_DEFINED
            },
        )?;
    }
    Ok(tokens)
}

/// The merges as llama.cpp writes them: "left right" (`tokenizers` writes either that or a pair).
fn merges_of(path: &Path, model: &Json) -> Result<Vec<Value>> {
    model["merges"]
        .as_array()
        .ok_or_else(|| refuse(path, "model.merges is not a list"))?
        .iter()
        .map(|m| match m {
            Json::String(s) => Ok(s.clone()),
            Json::Array(p) if p.len() == 2 && p.iter().all(Json::is_string) => Ok(format!(
                "{} {}",
                p[0].as_str().unwrap(),
                p[1].as_str().unwrap()
            )),
            other => Err(refuse(path, format!("merge {other} is not two tokens"))),
        })
        .map(|r| r.map(Value::Str))
        .collect::<Result<Vec<_>>>()
}

/// The chat template of `tokenizer_config.json` beside `tokenizer.json`, if there is one (a
/// string; transformers' list of named templates gives its `default`). Without one llama.cpp
/// chats in ChatML.
fn chat_template(tokenizer: &Path) -> Result<Option<String>> {
    let p = tokenizer.with_file_name(btx_data::TOKENIZER_CONFIG);
    let Ok(text) = std::fs::read_to_string(&p) else {
        return Ok(None);
    };
    let j: Json =
        serde_json::from_str(&text).map_err(|e| file_err(&p, format!("not JSON: {e}")))?;
    Ok(match &j["chat_template"] {
        Json::String(s) => Some(s.clone()),
        Json::Array(list) => list
            .iter()
            .find(|t| t["name"] == "default")
            .and_then(|t| t["template"].as_str())
            .map(str::to_string),
        _ => None,
    })
}

/// A JSON value for a message, cut short.
fn short(j: &Json) -> String {
    let s = j.to_string();
    match s.char_indices().nth(160) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn split(re: &str) -> Json {
        json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]})
    }

    /// Each tokenizer family's own pre_tokenizer (and the one btx's import writes) is named as
    /// llama.cpp names it, with llama.cpp's merge rule; anything else is not guessed.
    #[test]
    fn pre_tokenizers_are_named_as_llama_cpp_names_them() {
        let bl =
            |re: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "use_regex": re});
        assert_eq!(pre_name(&bl(true)), Some(("gpt-2", false)));
        assert_eq!(pre_name(&bl(false)), None, "no split at all");
        let digits = json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true}, bl(true)]});
        assert_eq!(pre_name(&digits), Some(("smollm", false)));
        for re in [LLAMA3_SPLIT, LLAMA3_SPLIT_HF] {
            assert_eq!(pre_name(&split(re)), Some(("llama-bpe", true)));
        }
        for re in [QWEN2_SPLIT, QWEN2_SPLIT_HF] {
            assert_eq!(pre_name(&split(re)), Some(("qwen2", false)));
        }
        assert_eq!(pre_name(&split(r"\s+")), None);
        let prefix = json!({"type": "ByteLevel", "add_prefix_space": true, "use_regex": true});
        assert_eq!(
            pre_name(&prefix),
            None,
            "a prefix space llama.cpp does not add"
        );
    }

    #[test]
    fn bos_and_eos_are_read_from_the_template() {
        let p = Path::new("tokenizer.json");
        let tpl = |single: Json| json!({"type": "TemplateProcessing", "single": single});
        let bos = json!({"SpecialToken": {"id": "<s>", "type_id": 0}});
        let eos = json!({"SpecialToken": {"id": "</s>", "type_id": 0}});
        let seq = json!({"Sequence": {"id": "A", "type_id": 0}});
        let f = |post: &Json| added_specials(p, post, Some("<s>"), Some("</s>"));
        assert_eq!(f(&Json::Null).unwrap(), (false, false));
        assert_eq!(f(&tpl(json!([bos, seq]))).unwrap(), (true, false));
        assert_eq!(f(&tpl(json!([bos, seq, eos]))).unwrap(), (true, true));
        let e = f(&tpl(json!([eos, seq]))).unwrap_err().to_string();
        assert!(
            e.contains("llama.cpp can add only") && e.contains("hint"),
            "{e}"
        );
    }
}
