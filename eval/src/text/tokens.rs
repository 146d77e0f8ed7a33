//! Padded token batches on the device, and what a batch's next-token logits say about each scored token: its log-probability and whether it was the most likely.

use std::ops::Range;

use candle_core::{DType, Device, Tensor, D};

use super::data::TextData;
use crate::arch::Batch;

/// What one sequence's scored tokens add up to.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TokenStats {
    /// Sum of the natural-log probabilities of the scored tokens.
    pub log_prob: f64,
    /// How many tokens were scored.
    pub tokens: u64,
    /// How many of them were the model's most likely token (the first of equal maxima).
    pub correct: u64,
}

/// One batch of sequences on the device, as [`crate::arch::Batch`] reads them.
pub struct TokenBatch {
    /// U32 ids `[B, T]`, right-padded with the data's pad id.
    pub ids: Tensor,
    /// U32 `[B, T]`: 1 for real tokens, 0 for padding.
    pub mask: Tensor,
    /// U32 segment ids `[B, T]`, when some sequence of the batch is a pair.
    pub segments: Option<Tensor>,
}

impl TokenBatch {
    /// The batch as a model reads it.
    pub fn as_batch(&self) -> Batch<'_> {
        Batch {
            inputs: &self.ids,
            attention_mask: Some(&self.mask),
            token_type_ids: self.segments.as_ref(),
        }
    }
}

/// Sequences `range` of `data`, right-padded to the longest of them, on `device`.
pub fn batch(
    data: &TextData,
    range: Range<usize>,
    device: &Device,
) -> candle_core::Result<TokenBatch> {
    let seqs = &data.sequences[range];
    let t = seqs.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(seqs.len() * t);
    let mut mask = Vec::with_capacity(seqs.len() * t);
    for s in seqs {
        let row = data.ids(s);
        ids.extend_from_slice(row);
        ids.resize(ids.len() + t - row.len(), data.pad_id);
        mask.extend(std::iter::repeat_n(1u32, row.len()));
        mask.extend(std::iter::repeat_n(0u32, t - row.len()));
    }
    let shape = (seqs.len(), t);
    // Padding is segment 0, as transformers pads token_type_ids.
    let segments = if seqs.iter().any(|s| data.segments(s).is_some()) {
        let mut all = Vec::with_capacity(seqs.len() * t);
        for s in seqs {
            match data.segments(s) {
                Some(types) => all.extend_from_slice(types),
                None => all.extend(std::iter::repeat_n(0u32, s.len())),
            }
            all.resize(all.len() + t - s.len(), 0);
        }
        Some(Tensor::from_vec(all, shape, device)?)
    } else {
        None
    };
    Ok(TokenBatch {
        ids: Tensor::from_vec(ids, shape, device)?,
        mask: Tensor::from_vec(mask, shape, device)?,
        segments,
    })
}

/// Per position `p < T - 1` of next-token logits `[B, T, V]`: `ln p(ids[p + 1])` and the
/// index of the first maximum, both `[B, T - 1]`, computed in f32 on the logits' device (only
/// these two small tensors come back).
pub fn next_token_log_probs(
    logits: &Tensor,
    ids: &Tensor,
) -> candle_core::Result<(Tensor, Tensor)> {
    let (_, t, _) = logits.dims3()?;
    let logits = logits.narrow(1, 0, t - 1)?.to_dtype(DType::F32)?;
    let log_probs = log_softmax(&logits)?;
    let targets = ids.narrow(1, 1, t - 1)?.contiguous()?;
    let target = log_probs.gather(&targets.unsqueeze(2)?, 2)?.squeeze(2)?;
    Ok((target, first_argmax(&logits)?))
}

/// Log-softmax over the last dimension, shifted by the maximum for range.
pub fn log_softmax(x: &Tensor) -> candle_core::Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?;
    let shifted = x.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    shifted.broadcast_sub(&lse)
}

/// The index of the first maximum over the last dimension, as U32, on any device: each
/// element equal to the maximum is weighted by `V - index`, so the largest weight is the
/// first maximum's (exact in f32 for vocabularies under 2^24). A row with NaN has no maximum
/// and gives `V`, which is no token.
pub fn first_argmax(x: &Tensor) -> candle_core::Result<Tensor> {
    let v = x.dim(D::Minus1)?;
    let max = x.max_keepdim(D::Minus1)?;
    let is_max = x.broadcast_eq(&max)?.to_dtype(DType::F32)?;
    let weight = Tensor::arange(0u32, v as u32, x.device())?
        .to_dtype(DType::F32)?
        .affine(-1.0, v as f64)?;
    let best = is_max.broadcast_mul(&weight)?.max(D::Minus1)?;
    best.affine(-1.0, v as f64)?.to_dtype(DType::U32)
}

/// Adds the scored tokens of sequences `range` of `data` to `out`, from the per-position
/// log-probabilities `[B, T - 1]` and first-maximum indices `[B, T - 1]` that
/// [`next_token_log_probs`] gave (or a mixture's).
pub fn collect(
    data: &TextData,
    range: Range<usize>,
    log_probs: &[Vec<f64>],
    argmax: &[Vec<u32>],
    out: &mut Vec<TokenStats>,
) {
    for (row, s) in data.sequences[range].iter().enumerate() {
        let ids = data.ids(s);
        let mut stats = TokenStats::default();
        for p in s.score_from..s.len() {
            stats.log_prob += log_probs[row][p - 1];
            stats.tokens += 1;
            if argmax[row][p - 1] == ids[p] {
                stats.correct += 1;
            }
        }
        out.push(stats);
    }
}
