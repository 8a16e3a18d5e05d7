//! Tokenizers through the `tokenizers` crate: load any `tokenizer.json`, or train a byte-level
//! BPE (lossless for any UTF-8 text) on a corpus.

use std::path::Path;

use sha2::{Digest, Sha256};
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer, TokenizerImpl};

use crate::error::{io_err, DataError, Result};

/// The end-of-document token btx adds when it trains a tokenizer.
pub const EOS: &str = "<|endoftext|>";

/// Names tried, in order, when looking for a tokenizer's end-of-text token.
const EOS_CANDIDATES: [&str; 5] = [EOS, "</s>", "<|im_end|>", "<eos>", "<|end_of_text|>"];

pub struct Tok {
    inner: Tokenizer,
    json: String,
    hash: String,
    eos: u32,
}

fn tk_err(e: impl std::fmt::Display) -> DataError {
    DataError::Tokenizer(e.to_string())
}

/// The file beside `tokenizer.json` that holds what transformers' tokenizer class reads
/// besides the vocabulary, the chat template above all; it travels with `tokenizer.json` from
/// the seed through every model btx writes (and into a GGUF's `tokenizer.chat_template`).
pub const TOKENIZER_CONFIG: &str = "tokenizer_config.json";

/// Copies `from/tokenizer_config.json` into `to` when there is one.
pub fn copy_tokenizer_config(from: &Path, to: &Path) -> Result<()> {
    let src = from.join(TOKENIZER_CONFIG);
    if src.is_file() {
        std::fs::copy(&src, to.join(TOKENIZER_CONFIG)).map_err(|e| io_err(&src, e))?;
    }
    Ok(())
}

impl Tok {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| io_err(path, e))?;
        Self::from_json(&text).map_err(|e| DataError::File {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })
    }

    pub fn from_json(text: &str) -> Result<Self> {
        let inner: Tokenizer = text.parse().map_err(tk_err)?;
        Self::from_tokenizer(inner)
    }

    pub fn from_tokenizer(inner: Tokenizer) -> Result<Self> {
        // Re-serialise so the hash does not depend on the file's formatting.
        let json = inner.to_string(false).map_err(tk_err)?;
        let eos = EOS_CANDIDATES
            .iter()
            .find_map(|t| inner.token_to_id(t))
            .ok_or_else(|| {
                DataError::Tokenizer(format!(
                    "no end-of-text token (looked for {EOS_CANDIDATES:?})\nhint: documents are separated by EOS; add one of these as a special token"
                ))
            })?;
        let hash = format!("{:x}", Sha256::digest(json.as_bytes()));
        Ok(Self {
            inner,
            json,
            hash,
            eos,
        })
    }

    /// Trains a byte-level BPE with `vocab_size` entries (incl. 256 byte tokens and EOS) on
    /// `docs`. Byte-level pre-tokenisation without a prefix space makes decode(encode(x)) == x.
    pub fn train_bpe<I, S>(docs: I, vocab_size: usize, min_frequency: u64) -> Result<Self>
    where
        I: Iterator<Item = S> + Send,
        S: AsRef<str> + Send,
    {
        if vocab_size < 257 {
            return Err(DataError::Invalid(format!(
                "tokenizer vocab_size {vocab_size} is too small: byte-level BPE needs 256 byte tokens + EOS"
            )));
        }
        let mut trainer = BpeTrainerBuilder::new()
            .show_progress(false)
            .vocab_size(vocab_size)
            .min_frequency(min_frequency)
            .special_tokens(vec![AddedToken::from(EOS, true)])
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build();
        let mut tk: TokenizerImpl<
            BPE,
            tokenizers::NormalizerWrapper,
            ByteLevel,
            ByteLevel,
            ByteLevel,
        > = TokenizerImpl::new(BPE::default());
        tk.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        tk.with_decoder(Some(ByteLevel::new(false, true, true)));
        tk.train(&mut trainer, docs).map_err(tk_err)?;
        let json = tk.to_string(false).map_err(tk_err)?;
        Self::from_json(&json)
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        btx_core::atomic::write_file(path, self.json.as_bytes()).map_err(Into::into)
    }

    pub fn json(&self) -> &str {
        &self.json
    }

    /// SHA-256 of the canonical JSON: two token files from tokenizers with different hashes
    /// must not be mixed.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    pub fn eos_id(&self) -> u32 {
        self.eos
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_to_id(&self, t: &str) -> Option<u32> {
        self.inner.token_to_id(t)
    }

    /// Token ids of `text` (no BOS/EOS added).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self
            .inner
            .encode_fast(text, false)
            .map_err(tk_err)?
            .get_ids()
            .to_vec())
    }

    /// The BOS token the tokenizer's post-processor puts before a text when asked to add
    /// special tokens (Llama 3's), if it does: what llama.cpp adds to every prompt of the
    /// model (btx itself never adds it).
    pub fn added_bos(&self) -> Option<u32> {
        let with = self.inner.encode_fast("a", true).ok()?;
        let without = self.inner.encode_fast("a", false).ok()?;
        let (w, wo) = (with.get_ids(), without.get_ids());
        (w.len() > wo.len() && w.first() != wo.first()).then(|| w[0])
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, false).map_err(tk_err)
    }

    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trained_bpe_round_trips_and_learns_merges() {
        let docs = [
            "the cat sat on the mat",
            "the dog sat on the log",
            "théâtre 猫 🐈",
        ];
        let tk = Tok::train_bpe(docs.iter().cycle().take(60), 300, 1).unwrap();
        assert!(tk.vocab_size() > 257 && tk.vocab_size() <= 300);
        for d in docs {
            let ids = tk.encode(d).unwrap();
            assert_eq!(tk.decode(&ids).unwrap(), d);
        }
        // Merges shorten frequent text.
        assert!(tk.encode("the cat sat").unwrap().len() < "the cat sat".len());
        assert_eq!(tk.token_to_id(EOS), Some(tk.eos_id()));
        // The hash survives a save/load.
        let d = btx_testkit::Scratch::new("tok");
        let p = d.join("tokenizer.json");
        tk.save(&p).unwrap();
        assert_eq!(Tok::load(&p).unwrap().hash(), tk.hash());
    }
}
