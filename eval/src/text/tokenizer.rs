//! The model directory's `tokenizer.json`, read by Hugging Face's `tokenizers` crate: encoding with and without special tokens, truncation, and the padding id.

use std::path::{Path, PathBuf};

use tokenizers::{PostProcessor, Tokenizer, TruncationDirection, TruncationParams};

use crate::error::{Error, Result};

/// The largest `tokenizer.json` read. Real ones are a few MB to a few tens (Gemma's 262 144
/// pieces take 33 MB); the library parses the whole file into memory at several times its
/// size, so a hostile model directory's 20 GB file must be refused by its size first.
const MAX_TOKENIZER_BYTES: u64 = 256 << 20;

/// A tokenizer loaded from a `tokenizer.json`, with the file's own padding turned off
/// (batches are padded to their longest sequence by [`crate::text::batch`]) and truncation
/// off unless [`TextTokenizer::truncated`] set it.
#[derive(Clone)]
pub struct TextTokenizer {
    path: PathBuf,
    tokenizer: Tokenizer,
    /// The padding token's id in the file's padding settings, if it has them.
    padding_id: Option<u32>,
    /// The length set by [`TextTokenizer::truncated`].
    max_length: Option<usize>,
    /// Which end truncation cuts: `tokenizer_config.json`'s `truncation_side` next to the
    /// file (`"left"` or `"right"`, transformers' default), as transformers' tokenizer reads it.
    direction: TruncationDirection,
}

impl TextTokenizer {
    /// Loads `path` (a `tokenizer.json`). The file's own padding and truncation settings are
    /// dropped: spec §3 pads per batch, and truncates only classification inputs, to
    /// `--max-length`.
    pub fn open(path: &Path) -> Result<TextTokenizer> {
        let bad = |reason: String| Error::Dataset {
            path: path.to_path_buf(),
            reason,
        };
        if !crate::dataset::present(path, "tokenizer")? {
            return Err(bad(
                "no such tokenizer file; text data needs the model directory's tokenizer.json (or --tokenizer PATH, or pre-tokenised .safetensors data)".into(),
            ));
        }
        let bytes = crate::dataset::read_regular(path, MAX_TOKENIZER_BYTES, "tokenizer.json")?;
        let mut tokenizer = Tokenizer::from_bytes(bytes).map_err(|e| {
            bad(format!(
                "is not a tokenizer.json the tokenizers library reads ({}); save it with transformers' save_pretrained or tokenizers' Tokenizer.save",
                model_soup::cli::one_line(&e.to_string())
            ))
        })?;
        let padding_id = tokenizer.get_padding().map(|p| p.pad_id);
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| bad(format!("cannot turn truncation off: {e}")))?;
        Ok(TextTokenizer {
            path: path.to_path_buf(),
            tokenizer,
            padding_id,
            max_length: None,
            direction: truncation_side(path)?,
        })
    }

    /// The file it was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A copy that truncates to `max_length` tokens (special tokens included), the longest
    /// sequence of a pair first, from the right: the `tokenizers` library's defaults for
    /// `enable_truncation(max_length)`.
    pub fn truncated(&self, max_length: usize) -> Result<TextTokenizer> {
        let mut t = self.clone();
        t.tokenizer
            .with_truncation(Some(TruncationParams {
                max_length,
                direction: self.direction,
                ..TruncationParams::default()
            }))
            .map_err(|e| Error::Dataset {
                path: self.path.clone(),
                reason: format!("cannot truncate to --max-length {max_length}: {e}"),
            })?;
        t.max_length = Some(max_length);
        Ok(t)
    }

    /// The vocabulary's size with added tokens: one more than the largest id it produces.
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// The padding token's id, if the file sets padding.
    pub fn padding_id(&self) -> Option<u32> {
        self.padding_id
    }

    /// Ids of `text` (and `pair`), with or without the tokenizer's special tokens, truncated
    /// only if this is a [`TextTokenizer::truncated`] copy.
    pub fn encode(
        &self,
        text: &str,
        pair: Option<&str>,
        add_special_tokens: bool,
    ) -> std::result::Result<Vec<u32>, String> {
        self.encode_with_types(text, pair, add_special_tokens)
            .map(|(ids, _)| ids)
    }

    /// [`TextTokenizer::encode`] with each token's segment id (0 for `text`, 1 for `pair`, as
    /// the post-processor assigns them): what BERT's token type embedding reads.
    pub fn encode_with_types(
        &self,
        text: &str,
        pair: Option<&str>,
        add_special_tokens: bool,
    ) -> std::result::Result<(Vec<u32>, Vec<u32>), String> {
        let message = |e: tokenizers::Error| model_soup::cli::one_line(&e.to_string());
        let encoding = match (pair, self.max_length) {
            (Some(pair), Some(max_length)) => self
                .encode_pair_truncated(text, pair, add_special_tokens, max_length)
                .map_err(message)?,
            (Some(pair), None) => self
                .tokenizer
                .encode((text, pair), add_special_tokens)
                .map_err(message)?,
            (None, _) => self
                .tokenizer
                .encode(text, add_special_tokens)
                .map_err(message)?,
        };
        Ok((
            encoding.get_ids().to_vec(),
            encoding.get_type_ids().to_vec(),
        ))
    }

    /// A pair truncated "longest first" as the Python `tokenizers` package (0.23.3) does it:
    /// when both sequences must be cut, the longer one keeps the odd token. (The Rust crate
    /// 0.23.2 gives it to the second sequence whichever is longer, so the two disagree on
    /// pairs; tests/text_reference.rs holds us to Python's ids.)
    fn encode_pair_truncated(
        &self,
        text: &str,
        pair: &str,
        add_special_tokens: bool,
        max_length: usize,
    ) -> tokenizers::Result<tokenizers::Encoding> {
        let mut plain = self.tokenizer.clone();
        plain.with_truncation(None)?;
        let mut first = plain.encode(text, false)?;
        let mut second = plain.encode(pair, false)?;
        let added = match plain.get_post_processor() {
            Some(p) if add_special_tokens => p.added_tokens(true),
            _ => 0,
        };
        let budget = max_length.saturating_sub(added);
        let (n1, n2) = (first.len(), second.len());
        if n1 + n2 > budget {
            let (short, long) = (n1.min(n2), n1.max(n2));
            let (mut keep_short, mut keep_long) = (short, long);
            keep_long = if short > budget {
                short
            } else {
                keep_long.min(short.max(budget - short))
            };
            if keep_short + keep_long > budget {
                keep_short = budget / 2;
                keep_long = keep_short + budget % 2;
            }
            let (k1, k2) = if n1 > n2 {
                (keep_long, keep_short)
            } else {
                (keep_short, keep_long)
            };
            first.truncate(k1, 0, self.direction);
            second.truncate(k2, 0, self.direction);
        }
        plain.post_process(first, Some(second), add_special_tokens)
    }
}

/// The `truncation_side` of the `tokenizer_config.json` beside `tokenizer` (transformers'
/// tokenizer reads it there and truncates from that end; tokenizer.json's own truncation
/// settings are overridden): right when the file or the key is absent.
fn truncation_side(tokenizer: &Path) -> Result<TruncationDirection> {
    let path = tokenizer.with_file_name("tokenizer_config.json");
    if !crate::dataset::present(&path, "tokenizer config")? {
        return Ok(TruncationDirection::Right);
    }
    let bad = |reason: String| Error::Dataset {
        path: path.clone(),
        reason,
    };
    let text = crate::dataset::read_config(&path, "tokenizer config")?;
    let config: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| bad(format!("is not valid JSON ({e}); fix or remove it")))?;
    match config.get("truncation_side") {
        None | Some(serde_json::Value::Null) => Ok(TruncationDirection::Right),
        Some(serde_json::Value::String(s)) if s == "right" => Ok(TruncationDirection::Right),
        Some(serde_json::Value::String(s)) if s == "left" => Ok(TruncationDirection::Left),
        Some(other) => Err(bad(format!(
            "has truncation_side {other}; transformers takes \"left\" or \"right\""
        ))),
    }
}
