//! `nuslerp`: weighted spherical interpolation, of the models or of their task vectors.

use super::{BaseUse, Gram, Grouping, Kind, Method, Param, Scope, TensorInfo, TensorParams, Work};

/// SLERP of two models at `t = w_1 / (w_0 + w_1)` (0.5 when the weights sum to almost 0; at
/// t = 0 or 1, one weight being 0, the other model as it is).
/// With a base model it interpolates the task vectors `x_i - base` and adds the base back.
/// `cos` is the dot product of the vectors divided by their norms (each at least 1e-7), and
/// when `|sin(theta)| < 1e-8` it interpolates linearly. `nuslerp_flatten` (default true) takes
/// each tensor as one vector; `false` takes each row of the last dimension, and
/// `nuslerp_row_wise: true` each column (vectors along dimension 0).
///
/// mergekit's NuSLERP (https://github.com/arcee-ai/mergekit, docs/merge_methods.md); there is
/// no paper. Dot products are summed in f64.
pub struct NuSlerp;

const PARAMS: &[Param] = &[
    Param {
        name: "weight",
        scope: Scope::PerModel,
        kind: Kind::ANY,
        default: None,
        doc: "the model's weight; t = w1 / (w0 + w1)",
    },
    Param {
        name: "nuslerp_flatten",
        scope: Scope::Global,
        kind: Kind::Bool,
        default: Some(1.0),
        doc: "one vector per tensor (else one per row)",
    },
    Param {
        name: "nuslerp_row_wise",
        scope: Scope::Global,
        kind: Kind::Bool,
        default: Some(0.0),
        doc: "without flatten, vectors along dimension 0 instead of the last",
    },
];

impl Method for NuSlerp {
    fn name(&self) -> &'static str {
        "nuslerp"
    }
    fn paper(&self) -> &'static str {
        "https://github.com/arcee-ai/mergekit/blob/main/docs/merge_methods.md"
    }
    fn params(&self) -> &'static [Param] {
        PARAMS
    }
    fn base(&self) -> BaseUse {
        BaseUse::Optional
    }
    fn check_models(&self, models: usize, _: bool) -> Result<(), String> {
        if models != 2 {
            return Err(format!(
                "interpolates exactly two models (plus an optional base), not {models}"
            ));
        }
        Ok(())
    }
    fn work(&self, tensor: &TensorInfo<'_>, p: &TensorParams) -> Result<Work, String> {
        let (w0, w1) = (p.model(0, "weight"), p.model(1, "weight"));
        let t = if (w0 + w1).abs() < 1e-6 {
            0.5
        } else {
            w1 / (w0 + w1)
        };
        // At an end, the interpolation is that model, exactly: the other one (of weight 0)
        // is not read, so its NaNs can't reach the norms and spoil every element. A base
        // stays in, at coefficient 0 (`base + (x - base)`): its NaN and infinities are the
        // soup's there, as they are at any other t, rather than unread and unwarned.
        if t == 0.0 || t == 1.0 {
            let mut end = vec![(usize::from(t == 1.0), 1.0)];
            if p.has_base() {
                end.push((2, 0.0));
            }
            return Ok(Work::Linear(end));
        }
        // With a base, input 2 is it and the vectors are the task vectors.
        let with_base = p.has_base();
        let vectors = if with_base {
            vec![vec![(0, 1.0), (2, -1.0)], vec![(1, 1.0), (2, -1.0)]]
        } else {
            vec![vec![(0, 1.0)], vec![(1, 1.0)]]
        };
        let grouping = match (p.flag("nuslerp_flatten"), p.flag("nuslerp_row_wise")) {
            (true, _) => Grouping::Flat,
            _ if tensor.shape.len() < 2 => Grouping::Flat,
            (false, false) => Grouping::Rows(*tensor.shape.last().expect("2 or more dims")),
            (false, true) => Grouping::Columns(tensor.elements / tensor.shape[0].max(1)),
        };
        let finish = move |g: &Gram| {
            let n0 = g.dot(0, 0).sqrt().max(1e-7);
            let n1 = g.dot(1, 1).sqrt().max(1e-7);
            // sqrt(|v0|^2 |v1|^2) rather than |v0| |v1|: for opposite vectors (v1 = -v0, as
            // when two fine-tunes move one parameter apart) the dot product is exactly
            // -|v0|^2, and only this form makes cos exactly -1, so sin(theta) falls below the
            // threshold. The product of two rounded roots left cos an ulp above -1 and sin
            // near 1e-8, and the coefficients near 1e8 then cancelled the base out of the
            // soup (the base folded in as 1 - a - b): zeros where mergekit keeps the base.
            let norms = (g.dot(0, 0) * g.dot(1, 1)).sqrt();
            let norms = if n0 > 1e-7 && n1 > 1e-7 && norms.is_normal() {
                norms
            } else {
                n0 * n1
            };
            let cos = (g.dot(0, 1) / norms).clamp(-1.0, 1.0);
            let theta = cos.acos();
            let sin = theta.sin();
            let (a, b) = if sin.abs() < 1e-8 {
                (1.0 - t, t)
            } else {
                (((1.0 - t) * theta).sin() / sin, (t * theta).sin() / sin)
            };
            if with_base {
                vec![(0, a), (1, b), (2, 1.0 - a - b)]
            } else {
                vec![(0, a), (1, b)]
            }
        };
        Ok(Work::Statistics {
            grouping,
            vectors,
            finish: Box::new(finish),
        })
    }
}
