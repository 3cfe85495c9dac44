//! Text tokenization through a checkpoint's `tokenizer.json` (the Hugging Face `tokenizers`
//! library, so normalisation, pre-tokenization and BPE are the reference implementation's).

use std::path::Path;

use tokenizers::{Tokenizer, TruncationParams};

use super::EncoderError;

/// A tokenizer that truncates to the text tower's length, keeping the end-of-text token.
#[derive(Clone, Debug)]
pub struct TextTokenizer {
    inner: Tokenizer,
}

impl TextTokenizer {
    /// Loads `tokenizer.json`; sequences are cut to `max_tokens` including the special tokens.
    pub fn from_file(path: &Path, max_tokens: usize) -> Result<Self, EncoderError> {
        let inner = Tokenizer::from_file(path).map_err(|e| {
            EncoderError::BadModel(format!("cannot read the tokenizer {}: {e}", path.display()))
        })?;
        Self::new(inner, max_tokens)
    }

    /// Wraps a tokenizer; sequences are cut to `max_tokens` including the special tokens.
    pub fn new(mut inner: Tokenizer, max_tokens: usize) -> Result<Self, EncoderError> {
        inner.with_padding(None);
        inner
            .with_truncation(Some(TruncationParams {
                max_length: max_tokens,
                ..TruncationParams::default()
            }))
            .map_err(|e| EncoderError::BadModel(format!("tokenizer truncation: {e}")))?;
        Ok(Self { inner })
    }

    /// Token ids of `text`, with the start and end tokens.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, EncoderError> {
        let encoding = self
            .inner
            .encode(text, true)
            .map_err(|e| EncoderError::Internal(format!("tokenizing {text:?}: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }
}
