//! The transformer pieces the ViT families share: linear layers over token rows as one matrix product, multi-head self-attention with packed projections, and the MLP activations `config.json` names.

use candle_core::{Result, Tensor};
use candle_nn::{ops::softmax_last_dim, Linear};

/// `layer(x)` for tokens `x` [.., w]: one matrix product over every row at once (candle's
/// `Linear` on a 3-D input runs one smaller product per batch element instead).
pub fn tokens_linear(x: &Tensor, layer: &Linear) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let w = dims[dims.len() - 1];
    let rows = x.elem_count() / w.max(1);
    let y = x.reshape((rows, w))?.matmul(&layer.weight().t()?)?;
    let y = match layer.bias() {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    };
    let mut out = dims;
    let last = out.len() - 1;
    out[last] = y.dim(1)?;
    y.reshape(out)
}

/// Multi-head self-attention with the query, key and value projections packed in one weight
/// `[3w, w]` (PyTorch's `in_proj_weight`; Hugging Face's separate `query`, `key` and `value`
/// are concatenated when the model is built), then the output projection.
pub struct SelfAttention {
    /// The packed projection, with the queries' rows already scaled by `1 / sqrt(head dim)`.
    qkv: Linear,
    out: Linear,
    heads: usize,
}

impl SelfAttention {
    /// Attention of `heads` heads from the packed projection `qkv_weight` [3w, w] (rows: all
    /// queries, then keys, then values), its optional bias [3w], and `out`.
    ///
    /// The softmax scale `1 / sqrt(w / heads)` is folded into the query rows here, which
    /// saves a pass over the queries per batch (PyTorch scales the queries, or the scores, at
    /// run time: the same values up to rounding).
    pub fn new(
        qkv_weight: Tensor,
        qkv_bias: Option<Tensor>,
        out: Linear,
        heads: usize,
    ) -> Result<SelfAttention> {
        let w = qkv_weight.dim(1)?;
        let scale = 1.0 / ((w / heads) as f64).sqrt();
        let scale_rows = |t: &Tensor| -> Result<Tensor> {
            let q = (t.narrow(0, 0, w)? * scale)?;
            Tensor::cat(&[&q, &t.narrow(0, w, 2 * w)?], 0)
        };
        let weight = scale_rows(&qkv_weight)?;
        let bias = qkv_bias.as_ref().map(scale_rows).transpose()?;
        Ok(SelfAttention {
            qkv: Linear::new(weight, bias),
            out,
            heads,
        })
    }

    /// Attention over tokens `x` [n, s, w], no mask.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (n, s, w) = x.dims3()?;
        let d = w / self.heads;
        // [n, s, 3, heads, d] -> [3, n, heads, s, d] in one copy.
        let qkv = tokens_linear(x, &self.qkv)?
            .reshape((n, s, 3, self.heads, d))?
            .permute((2, 0, 3, 1, 4))?
            .contiguous()?;
        let (q, k, v) = (qkv.get(0)?, qkv.get(1)?, qkv.get(2)?);
        let attn = softmax_last_dim(&q.matmul(&k.t()?)?)?;
        let y = attn.matmul(&v)?.transpose(1, 2)?.reshape((n, s, w))?;
        tokens_linear(&y, &self.out)
    }
}

/// The first token of each sequence: `x[:, 0]` of [n, s, w], as a contiguous [n, w]. The view
/// alone strides by `s * w` between rows, which the CPU's matmul takes but CUDA's refuses
/// ("matmul is only supported for contiguous tensors"): the heads that follow are matmuls.
pub fn first_token(x: &Tensor) -> Result<Tensor> {
    x.narrow(1, 0, 1)?.squeeze(1)?.contiguous()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn the_first_token_is_a_contiguous_copy_as_cuda_matmuls_need() {
        // A classifier head multiplies it next: on CUDA a strided view fails there (seen on an
        // H200 with every BERT-family classifier), so the layout is what's checked.
        let x = Tensor::arange(0f32, 24.0, &Device::Cpu)
            .unwrap()
            .reshape((2, 3, 4))
            .unwrap();
        let first = first_token(&x).unwrap();
        assert!(first.is_contiguous());
        assert_eq!(
            first.to_vec2::<f32>().unwrap(),
            vec![vec![0.0, 1.0, 2.0, 3.0], vec![12.0, 13.0, 14.0, 15.0]]
        );
    }
}
