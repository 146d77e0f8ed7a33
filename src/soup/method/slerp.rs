//! `slerp`: spherical interpolation between the base and one other model.

use super::{BaseUse, Gram, Grouping, Kind, Method, Param, Scope, TensorInfo, TensorParams, Work};

/// Spherical linear interpolation from the base (`t = 0`) to the other model (`t = 1`), per
/// tensor: with `cos = <a, b> / (|a| |b|)` (a norm at or below 1e-8 is taken as 1) and
/// `theta = acos(cos)`, `out = sin((1 - t) theta) / sin(theta) * a + sin(t theta) / sin(theta) * b`;
/// when `|cos| > 0.9995` the vectors are nearly colinear and it is `(1 - t) a + t b`.
///
/// Shoemake 1985, "Animating rotation with quaternion curves", as mergekit applies it to
/// flattened weight tensors (https://en.wikipedia.org/wiki/Slerp). The norms and the dot
/// product are summed in f64 here, where mergekit uses float32.
pub struct Slerp;

const PARAMS: &[Param] = &[Param {
    name: "t",
    scope: Scope::Global,
    kind: Kind::UNIT,
    default: None,
    doc: "interpolation factor, 0 = base, 1 = the other model",
}];

/// mergekit's threshold for "nearly colinear".
const DOT_THRESHOLD: f64 = 0.9995;
/// Norms at or below this are not divided by.
const EPS: f64 = 1e-8;

impl Method for Slerp {
    fn name(&self) -> &'static str {
        "slerp"
    }
    fn paper(&self) -> &'static str {
        "https://en.wikipedia.org/wiki/Slerp"
    }
    fn params(&self) -> &'static [Param] {
        PARAMS
    }
    fn base(&self) -> BaseUse {
        BaseUse::Required
    }
    fn check_models(&self, models: usize, _: bool) -> Result<(), String> {
        if models != 1 {
            return Err(format!(
                "interpolates between exactly two models, the base and one other, but got the base and {models} others; use nuslerp or linear for more"
            ));
        }
        Ok(())
    }
    fn work(&self, _: &TensorInfo<'_>, p: &TensorParams) -> Result<Work, String> {
        let t = p.global("t");
        // Input 0 is the model, input 1 the base.
        let finish = move |g: &Gram| {
            let norm = |x: f64| {
                let n = x.sqrt();
                if n > EPS {
                    n
                } else {
                    1.0
                }
            };
            let dot = g.dot(0, 1) / (norm(g.dot(0, 0)) * norm(g.dot(1, 1)));
            let (a, b) = if dot.abs() > DOT_THRESHOLD {
                (1.0 - t, t)
            } else {
                let theta = dot.acos();
                let sin = theta.sin();
                ((theta - theta * t).sin() / sin, (theta * t).sin() / sin)
            };
            vec![(1, a), (0, b)]
        };
        Ok(Work::Statistics {
            grouping: Grouping::Flat,
            vectors: vec![vec![(1, 1.0)], vec![(0, 1.0)]],
            finish: Box::new(finish),
        })
    }
}
