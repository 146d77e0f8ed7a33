//! The model directory's `tokenizer.json`, read by Hugging Face's `tokenizers` crate: encoding with and without special tokens, truncation, and the padding id.

use std::path::{Path, PathBuf};

use tokenizers::{Tokenizer, TruncationParams};

use crate::error::{Error, Result};

/// A tokenizer loaded from a `tokenizer.json`, with the file's own padding turned off
/// (batches are padded to their longest sequence by [`crate::text::batch`]) and truncation
/// off unless [`TextTokenizer::truncated`] set it.
#[derive(Clone)]
pub struct TextTokenizer {
    path: PathBuf,
    tokenizer: Tokenizer,
    /// The padding token's id in the file's padding settings, if it has them.
    padding_id: Option<u32>,
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
        if !path.is_file() {
            return Err(bad(
                "no such tokenizer file; text data needs the model directory's tokenizer.json (or --tokenizer PATH, or pre-tokenised .safetensors data)".into(),
            ));
        }
        let mut tokenizer = Tokenizer::from_file(path).map_err(|e| {
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
                ..TruncationParams::default()
            }))
            .map_err(|e| Error::Dataset {
                path: self.path.clone(),
                reason: format!("cannot truncate to --max-length {max_length}: {e}"),
            })?;
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
        let encoding = match pair {
            Some(pair) => self.tokenizer.encode((text, pair), add_special_tokens),
            None => self.tokenizer.encode(text, add_special_tokens),
        }
        .map_err(|e| model_soup::cli::one_line(&e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }
}
