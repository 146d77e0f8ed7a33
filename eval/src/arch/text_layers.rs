//! Layers the language models share, computed as transformers computes them: attention with additive masks and an f32 softmax, RMSNorm in f32, activations by their config name.

use candle_core::{DType, Device, Result, Tensor, D};
use candle_nn::Linear;

use super::hf_config::{key_name, HfConfig};
use super::{ConfigError, TensorSpec};

/// What transformers adds to a masked attention score: the most negative f32, so a row whose
/// every key is masked still gets a (uniform) softmax instead of NaN.
const MASKED: f32 = f32::MIN;

/// An MLP activation, as transformers' `ACT2FN` names it in `config.json` (`hidden_act`),
/// for the text families and the Hugging Face vision ones alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `silu` / `swish`: x·sigmoid(x).
    Silu,
    /// `gelu`: the exact (erf) GELU.
    Gelu,
    /// `gelu_pytorch_tanh` / `gelu_new` / `gelu_fast`: the tanh approximation.
    GeluTanh,
    /// `relu`.
    Relu,
    /// `tanh` (BERT's pooler and RoBERTa's classification head).
    Tanh,
}

impl Activation {
    /// Parses the activation named by `config.json` key `key` (the error names the key).
    pub fn parse(name: &str, key: &str) -> std::result::Result<Activation, ConfigError> {
        match name {
            "silu" | "swish" => Ok(Activation::Silu),
            "gelu" => Ok(Activation::Gelu),
            "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast" => Ok(Activation::GeluTanh),
            "relu" => Ok(Activation::Relu),
            "tanh" => Ok(Activation::Tanh),
            other => Err(ConfigError::new(
                key_name(key),
                format!("is \"{other}\", which soup-eval does not implement; it has silu, gelu, gelu_pytorch_tanh, gelu_new, gelu_fast, relu and tanh"),
            )),
        }
    }

    /// The activation `key` of `config` names, `default` when absent.
    pub fn read(
        config: &HfConfig,
        key: &str,
        default: &str,
    ) -> std::result::Result<Activation, ConfigError> {
        Activation::parse(config.opt_str(key)?.unwrap_or(default), key)
    }

    /// Applies the activation.
    pub fn apply(self, x: &Tensor) -> Result<Tensor> {
        match self {
            Activation::Silu => candle_nn::ops::silu(x),
            Activation::Gelu => x.gelu_erf(),
            Activation::GeluTanh => x.gelu(),
            Activation::Relu => x.relu(),
            Activation::Tanh => x.tanh(),
        }
    }
}

/// transformers' RMSNorm: normalise in f32, round to the model's dtype, then scale by the
/// weight (Llama) or, for Gemma, scale by (1 + weight) in f32 and round once.
#[derive(Clone, Debug)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
    one_plus: bool,
}

impl RmsNorm {
    /// A norm with `weight` [dim]; `one_plus` for Gemma's (1 + weight).
    pub fn new(weight: Tensor, eps: f64, one_plus: bool) -> Result<RmsNorm> {
        let weight = if one_plus {
            (weight.to_dtype(DType::F32)? + 1.0)?
        } else {
            weight
        };
        Ok(RmsNorm {
            weight,
            eps,
            one_plus,
        })
    }

    /// Normalises the last dimension of `x`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let x32 = x.to_dtype(DType::F32)?;
        let mean_square = x32.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = x32.broadcast_div(&(mean_square + self.eps)?.sqrt()?)?;
        if self.one_plus {
            normed.broadcast_mul(&self.weight)?.to_dtype(dtype)
        } else {
            normed.to_dtype(dtype)?.broadcast_mul(&self.weight)
        }
    }
}

/// `torch.nn.LayerNorm` over the last dimension, computed in f32 in two passes (mean, then
/// the variance of the centred values, as PyTorch does) and rounded once to the input's dtype.
#[derive(Clone, Debug)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    /// The norm at `vb`'s prefix (`weight` and `bias`, [dim]).
    pub fn load(dim: usize, eps: f64, vb: candle_nn::VarBuilder) -> Result<LayerNorm> {
        Ok(LayerNorm {
            weight: vb.get(dim, "weight")?.to_dtype(DType::F32)?,
            bias: vb.get(dim, "bias")?.to_dtype(DType::F32)?,
            eps,
        })
    }

    /// Normalises the last dimension of `x`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x32 = x.to_dtype(DType::F32)?;
        let centred = x32.broadcast_sub(&x32.mean_keepdim(D::Minus1)?)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        centred
            .broadcast_div(&(var + self.eps)?.sqrt()?)?
            .broadcast_mul(&self.weight)?
            .broadcast_add(&self.bias)?
            .to_dtype(x.dtype())
    }
}

/// The tensors of a `torch.nn.LayerNorm(dim)` at `prefix`.
pub fn layer_norm_specs(prefix: &str, dim: usize, out: &mut Vec<TensorSpec>) {
    out.push(TensorSpec::float(&format!("{prefix}.weight"), &[dim]));
    out.push(TensorSpec::float(&format!("{prefix}.bias"), &[dim]));
}

/// The tensors of a `torch.nn.Linear(input, output)` at `prefix`, with or without a bias.
pub fn linear_specs(
    prefix: &str,
    input: usize,
    output: usize,
    bias: bool,
    out: &mut Vec<TensorSpec>,
) {
    out.push(TensorSpec::float(
        &format!("{prefix}.weight"),
        &[output, input],
    ));
    if bias {
        out.push(TensorSpec::float(&format!("{prefix}.bias"), &[output]));
    }
}

/// A `torch.nn.Linear(input, output)` at `vb`'s prefix, with or without a bias.
pub fn linear(
    input: usize,
    output: usize,
    bias: bool,
    vb: candle_nn::VarBuilder,
) -> Result<Linear> {
    if bias {
        candle_nn::linear(input, output, vb)
    } else {
        candle_nn::linear_no_bias(input, output, vb)
    }
}

/// The additive causal mask [1, 1, T, T] (f32): query i sees key j when j <= i and, with a
/// sliding window w, i - j < w (transformers' `sliding_window_overlay`).
pub fn causal_mask(t: usize, window: Option<usize>, device: &Device) -> Result<Tensor> {
    let w = window.unwrap_or(usize::MAX);
    let values: Vec<f32> = (0..t)
        .flat_map(|i| (0..t).map(move |j| if j <= i && i - j < w { 0.0 } else { MASKED }))
        .collect();
    Tensor::from_vec(values, (1, 1, t, t), device)
}

/// The additive key-padding mask [B, 1, 1, T] (f32) of an attention mask [B, T] (1 = real
/// token, 0 = padding): padded keys are masked for every query.
pub fn padding_mask(attention_mask: &Tensor) -> Result<Tensor> {
    let (b, t) = attention_mask.dims2()?;
    let real = attention_mask.ne(0u32)?.to_dtype(DType::F32)?;
    // (1 - real) * MASKED: 0 for a real key, MASKED for a padded one.
    ((real - 1.0)? * (-(MASKED as f64)))?.reshape((b, 1, 1, t))
}

/// Scaled dot-product attention as transformers' eager path computes it: scores in the model's
/// dtype, mask and softmax in f32, the weighted sum in the model's dtype. `q` [B, H, T, D];
/// `k`, `v` [B, KV, T, D] with KV dividing H (grouped-query attention repeats each key/value
/// head H/KV times); `mask` f32, broadcastable to [B, H, T, T]. Returns [B, T, H·D].
pub fn attend(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, scale: f64) -> Result<Tensor> {
    let (b, h, t, d) = q.dims4()?;
    let k = repeat_kv(k, h)?;
    let v = repeat_kv(v, h)?;
    let scores = (q.matmul(&k.t()?)? * scale)?;
    let dtype = scores.dtype();
    let probs =
        candle_nn::ops::softmax_last_dim(&scores.to_dtype(DType::F32)?.broadcast_add(mask)?)?
            .to_dtype(dtype)?;
    probs
        .matmul(&v.contiguous()?)?
        .transpose(1, 2)?
        .reshape((b, t, h * d))
}

/// [B, KV, T, D] → [B, H, T, D], each key/value head repeated H/KV times in place (as
/// transformers' `repeat_kv`).
fn repeat_kv(x: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, kv, t, d) = x.dims4()?;
    if kv == heads {
        return Ok(x.clone());
    }
    x.unsqueeze(2)?
        .broadcast_as((b, kv, heads / kv, t, d))?
        .reshape((b, heads, t, d))
}

/// [B, T, H·D] → [B, H, T, D], contiguous.
pub fn split_heads(x: &Tensor, heads: usize, head_dim: usize) -> Result<Tensor> {
    let (b, t, _) = x.dims3()?;
    x.reshape((b, t, heads, head_dim))?
        .transpose(1, 2)?
        .contiguous()
}

/// Checks a batch of token ids (U32 [B, T]) against the embedding's `vocab` rows, so an
/// out-of-range id is an error on every device rather than a wrong row.
pub fn check_ids(ids: &Tensor, vocab: usize) -> Result<()> {
    if ids.dtype() != DType::U32 {
        candle_core::bail!("token ids must be U32, not {:?}", ids.dtype());
    }
    ids.dims2()?;
    if ids.elem_count() == 0 {
        return Ok(());
    }
    let max = ids.flatten_all()?.max(0)?.to_scalar::<u32>()? as usize;
    if max >= vocab {
        candle_core::bail!(
            "token id {max} is outside the model's vocabulary of {vocab}; was the data tokenised for another model?"
        );
    }
    Ok(())
}

/// The attention mask of a batch: the given one (U32 [B, T], checked against the ids' shape),
/// or all ones.
pub fn mask_or_ones(ids: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    match mask {
        Some(m) => {
            if m.dims() != ids.dims() {
                candle_core::bail!(
                    "the attention mask has shape {:?}, but the token ids have {:?}",
                    m.dims(),
                    ids.dims()
                );
            }
            m.to_dtype(DType::U32)
        }
        None => Tensor::ones(ids.dims(), DType::U32, ids.device()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_causal_mask_keeps_the_window_of_the_last_w_keys() {
        let m = causal_mask(5, Some(2), &Device::Cpu).unwrap();
        let rows: Vec<Vec<f32>> = m.squeeze(0).unwrap().squeeze(0).unwrap().to_vec2().unwrap();
        let seen: Vec<Vec<usize>> = rows
            .iter()
            .map(|r| (0..5).filter(|&j| r[j] == 0.0).collect())
            .collect();
        assert_eq!(
            seen,
            vec![vec![0], vec![0, 1], vec![1, 2], vec![2, 3], vec![3, 4]]
        );
        let full = causal_mask(3, None, &Device::Cpu).unwrap();
        let rows: Vec<Vec<f32>> = full
            .squeeze(0)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec2()
            .unwrap();
        assert_eq!(rows[2], vec![0.0, 0.0, 0.0]);
        assert_eq!(rows[0][1], MASKED);
    }

    #[test]
    fn padded_keys_get_the_masked_score() {
        let m = Tensor::new(&[[1u32, 1, 0], [1, 0, 0]], &Device::Cpu).unwrap();
        let p: Vec<f32> = padding_mask(&m)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(p, vec![0.0, 0.0, MASKED, 0.0, MASKED, MASKED]);
    }

    #[test]
    fn grouped_query_attention_repeats_each_head_in_place() {
        let x = Tensor::arange(0f32, 4.0, &Device::Cpu)
            .unwrap()
            .reshape((1, 2, 1, 2))
            .unwrap();
        let r: Vec<f32> = repeat_kv(&x, 4)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(r, vec![0.0, 1.0, 0.0, 1.0, 2.0, 3.0, 2.0, 3.0]);
    }

    #[test]
    fn out_of_vocabulary_ids_are_an_error() {
        let ids = Tensor::new(&[[1u32, 9]], &Device::Cpu).unwrap();
        assert!(check_ids(&ids, 10).is_ok());
        let err = check_ids(&ids, 9).unwrap_err().to_string();
        assert!(err.contains("token id 9"), "{err}");
    }

    #[test]
    fn unknown_activations_name_the_key() {
        let err = Activation::parse("quick_gelu", "hidden_act").unwrap_err();
        assert_eq!(err.tensor, "config.json:hidden_act");
        assert!(err.reason.contains("quick_gelu"));
        // transformers' three names for the tanh approximation are one activation.
        for name in ["gelu_new", "gelu_pytorch_tanh", "gelu_fast"] {
            assert_eq!(
                Activation::parse(name, "hidden_act").unwrap(),
                Activation::GeluTanh
            );
        }
        assert_eq!(
            Activation::parse("tanh", "hidden_act").unwrap(),
            Activation::Tanh
        );
    }
}
