//! Merge methods: what each one is called, which paper it comes from, which parameters it takes,
//! and what it needs to do per tensor. The registry below is the one list of them.
//!
//! A method never touches bytes. It turns one tensor's resolved parameters into a [`Work`]:
//!
//! - [`Work::Linear`]: a fixed linear combination of the inputs (linear, task arithmetic,
//!   passthrough). The executor runs these on its fused streaming kernel, chunk by chunk.
//! - [`Work::Statistics`]: dot products of some linear combinations of the inputs over the
//!   whole tensor (or over each row), then a linear combination whose coefficients come from
//!   them (SLERP, NuSLERP, Model Stock).
//! - [`Work::TaskVectors`]: task vectors (input minus base), each trimmed by a threshold or a
//!   seeded random mask over the whole tensor, then an element-wise combination with an
//!   optional sign election (TIES, DARE, DELLA, breadcrumbs).
//!
//! Adding a method is one new file with a type that implements [`Method`] (or, for one more
//! trim-and-combine variant, a `common::Trimmed` value), and one line in [`REGISTRY`].

mod breadcrumbs;
mod dare;
mod della;
pub mod draws;
mod layers;
mod linear;
mod model_stock;
mod nuslerp;
mod params;
mod passthrough;
mod slerp;
pub mod sparsify;
mod task_arithmetic;
mod ties;

pub use draws::{random_stream, uniform};
pub use layers::Layers;
pub use params::{declared, Given, Setting, Settings, TensorParams};
pub use sparsify::Sparsify;

/// Every merge method soup-merge knows, by name. One line per method.
pub static REGISTRY: &[&dyn Method] = &[
    &linear::Linear,
    &task_arithmetic::TaskArithmetic,
    &ties::TIES,
    &dare::DARE_LINEAR,
    &dare::DARE_TIES,
    &della::DELLA,
    &della::DELLA_LINEAR,
    &breadcrumbs::BREADCRUMBS,
    &breadcrumbs::BREADCRUMBS_TIES,
    &slerp::Slerp,
    &nuslerp::NuSlerp,
    &model_stock::ModelStock,
    &passthrough::Passthrough,
];

/// The method called `name`, if there is one.
pub fn find(name: &str) -> Option<&'static dyn Method> {
    REGISTRY.iter().copied().find(|m| m.name() == name)
}

/// The registered methods' names, for messages.
pub fn names() -> String {
    REGISTRY
        .iter()
        .map(|m| m.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A merge method: its identity, its parameters, and the work it asks for per tensor.
pub trait Method: Sync + Send {
    /// The name used by `--method` and a recipe's `merge_method` (mergekit's).
    fn name(&self) -> &'static str;

    /// The paper (or page) that defines it, for docs and model cards.
    fn paper(&self) -> &'static str;

    /// The parameters it reads. Flags and recipes are validated against this list: a parameter
    /// that isn't here is an error naming it.
    fn params(&self) -> &'static [Param];

    /// Whether it needs a base model (`--base`, a recipe's `base_model`).
    fn base(&self) -> BaseUse;

    /// Checks the number of models besides the base; the message says what is expected.
    fn check_models(&self, models: usize, has_base: bool) -> Result<(), String>;

    /// The work for one float tensor of `elements` elements and this `shape`, from its resolved
    /// parameters. Errors here (a density that keeps no element of a small tensor, say) are
    /// found from headers, before any tensor byte is read.
    fn work(&self, tensor: &TensorInfo<'_>, params: &TensorParams) -> Result<Work, String>;
}

/// What a method does with a base model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BaseUse {
    /// The method has no base; a given one only names the output's config and tokenizer source.
    Unused,
    /// The method uses a base when given one (NuSLERP's task-vector mode).
    Optional,
    /// The method can't run without one.
    Required,
}

/// Whether a parameter is set once for the merge or per model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Top-level `parameters:` or a flag such as `--t`.
    Global,
    /// `models[].parameters:`, with top-level `parameters:` as the default for every model.
    PerModel,
}

/// The values a parameter accepts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    /// A number in `min..=max`, with either end excluded when `open` says so.
    Number {
        min: f64,
        max: f64,
        min_open: bool,
        max_open: bool,
    },
    /// true or false.
    Bool,
}

impl Kind {
    /// Any finite number.
    pub const ANY: Kind = Kind::Number {
        min: f64::MIN,
        max: f64::MAX,
        min_open: false,
        max_open: false,
    };
    /// A fraction in (0, 1], like a density.
    pub const FRACTION: Kind = Kind::Number {
        min: 0.0,
        max: 1.0,
        min_open: true,
        max_open: false,
    };
    /// A number in [0, 1], like an interpolation factor.
    pub const UNIT: Kind = Kind::Number {
        min: 0.0,
        max: 1.0,
        min_open: false,
        max_open: false,
    };

    /// Checks one value, returning the range in words when it is outside.
    pub fn check(self, value: f64) -> Result<(), String> {
        match self {
            Kind::Bool => Ok(()),
            Kind::Number {
                min,
                max,
                min_open,
                max_open,
            } => {
                let low_ok = if min_open { value > min } else { value >= min };
                let high_ok = if max_open { value < max } else { value <= max };
                if value.is_finite() && low_ok && high_ok {
                    Ok(())
                } else {
                    Err(format!("is {}, outside {}", shown(value), self.range()))
                }
            }
        }
    }

    /// The accepted values in words: `(0, 1]`, `any number`, `true or false`.
    pub fn range(self) -> String {
        match self {
            Kind::Bool => "true or false".into(),
            Kind::Number { min, max, .. } if min == f64::MIN && max == f64::MAX => {
                "any finite number".into()
            }
            Kind::Number {
                min,
                max,
                min_open,
                max_open,
            } => format!(
                "{}{min}, {max}{}",
                if min_open { "(" } else { "[" },
                if max_open { ")" } else { "]" }
            ),
        }
    }
}

/// One parameter a method reads, with mergekit's name and default.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Param {
    pub name: &'static str,
    pub scope: Scope,
    pub kind: Kind,
    /// The value when none is given; `None` makes the parameter required. Bools are 0 or 1.
    pub default: Option<f64>,
    /// One line for `--help` and the README.
    pub doc: &'static str,
}

/// What a method may know about a tensor when planning it: headers only.
#[derive(Debug, Clone, Copy)]
pub struct TensorInfo<'a> {
    pub name: &'a str,
    pub shape: &'a [u64],
    pub elements: u64,
    /// The seed of the merge, for methods that drop elements at random.
    pub seed: u64,
}

/// A linear combination of the inputs: `(input, coefficient)`, where an input is the index
/// into [`Roles`]' order: the models in order, then the base when there is one.
pub type Combination = Vec<(usize, f64)>;

/// The statistics that [`Work::Statistics`] hands back: for each group, the dot products of
/// every pair of its vectors, `gram[a][b]` for `a <= b`, in f64.
#[derive(Debug, Clone, PartialEq)]
pub struct Gram {
    pub vectors: usize,
    /// Upper triangle, row by row: (0,0), (0,1), ..., (1,1), ...
    pub values: Vec<f64>,
}

impl Gram {
    /// `sum(v_a * v_b)`.
    pub fn dot(&self, a: usize, b: usize) -> f64 {
        let (a, b) = if a <= b { (a, b) } else { (b, a) };
        // Row a of the upper triangle starts after rows of lengths m, m-1, ..., m-a+1.
        let m = self.vectors;
        self.values[a * m - a * (a.saturating_sub(1)) / 2 + (b - a)]
    }

    /// The number of pairs for `vectors` vectors.
    pub fn pairs(vectors: usize) -> usize {
        vectors * (vectors + 1) / 2
    }
}

/// How the elements of a tensor fall into the vectors whose statistics a method needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grouping {
    /// The whole tensor is one vector.
    Flat,
    /// Every run of this many consecutive elements (a row of the last dimension) is a vector.
    Rows(u64),
    /// Every element `e` with the same `e % stride` is in one vector: the columns of the
    /// tensor seen as `[shape[0], stride]`, i.e. vectors along dimension 0.
    Columns(u64),
}

/// Turns one group's statistics into its linear combination.
pub type Finish = Box<dyn Fn(&Gram) -> Combination + Send + Sync>;

/// The work one tensor needs.
pub enum Work {
    /// `sum(c * input)`, known from the parameters.
    Linear(Combination),
    /// Dot products of `vectors` within each group, then the combination `finish` makes of them.
    Statistics {
        grouping: Grouping,
        vectors: Vec<Combination>,
        finish: Finish,
    },
    /// Task vectors trimmed and combined element-wise.
    TaskVectors(TaskVectors),
}

impl std::fmt::Debug for Work {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Work::Linear(c) => f.debug_tuple("Linear").field(c).finish(),
            Work::Statistics {
                grouping, vectors, ..
            } => f
                .debug_struct("Statistics")
                .field("grouping", grouping)
                .field("vectors", vectors)
                .finish_non_exhaustive(),
            Work::TaskVectors(t) => f.debug_tuple("TaskVectors").field(t).finish(),
        }
    }
}

/// mergekit's generalized task arithmetic for one tensor: with `d_i = x_i - base`,
/// `d_i' = sparsify(d_i)`, `out = base + lambda * mix(w_i * d_i')`, where `mix` is the plain
/// sum, or with `consensus` the sum of the terms whose sign agrees with the sign of their sum
/// (TIES' election); with `normalize` the mix is divided by the sum of the weights taking part
/// (per element under consensus, 1 where none does; else the total, 1 when it is below 1e-8).
#[derive(Debug, Clone, PartialEq)]
pub struct TaskVectors {
    /// One entry per model besides the base, in order.
    pub models: Vec<TaskVector>,
    pub sparsify: Option<Sparsify>,
    pub consensus: bool,
    pub normalize: bool,
    /// Scale each kept task vector so its L1 norm matches the untrimmed one's (mergekit's
    /// `rescale`; DARE's paper divides by the density instead).
    pub rescale: bool,
    pub lambda: f64,
}

impl TaskVectors {
    /// The mix as one linear combination of the inputs, where it is one (no trim, no
    /// election): `sum_i c_i x_i + (1 - sum_i c_i) base`, `c_i = lambda w_i / d`, the base
    /// being input `base`. That runs on the fused streaming kernel, reading each input once.
    /// It differs from mergekit's `base + lambda * sum_i w_i (x_i - base)` by rounding while
    /// both are finite, but not where either is not: an infinite base with `c_base` not 0
    /// gives an infinity where mergekit's `inf - inf` gives NaN, and the folded sum can
    /// overflow where the differences don't. So a chunk whose folded result is not finite is
    /// computed again in mergekit's form (see `execute`).
    pub fn folded(&self, base: usize) -> Option<Combination> {
        if self.sparsify.is_some() || self.consensus {
            return None;
        }
        let total: f64 = self.models.iter().map(|m| m.weight).sum();
        let divisor = if self.normalize && total.abs() >= 1e-8 {
            total
        } else {
            1.0
        };
        let mut combination: Combination = self
            .models
            .iter()
            .map(|m| (m.input, self.lambda * m.weight / divisor))
            .collect();
        let models: f64 = combination.iter().map(|(_, c)| c).sum();
        combination.push((base, 1.0 - models));
        Some(combination)
    }
}

/// One model's task vector in a [`TaskVectors`] merge.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskVector {
    /// The model's index in [`Roles`]' order.
    pub input: usize,
    pub weight: f64,
    /// The fraction kept; 1 keeps everything.
    pub density: f64,
    /// Breadcrumbs' fraction of largest magnitudes dropped.
    pub gamma: f64,
    /// DELLA's half-width of the keep probabilities.
    pub epsilon: f64,
    /// The random stream of this model's drops in this tensor (see [`random_stream`]).
    pub stream: u64,
}

/// The ten task-vector methods' shared parameters (mergekit's names and meanings).
mod common {
    use super::*;

    pub const WEIGHT: Param = Param {
        name: "weight",
        scope: Scope::PerModel,
        kind: Kind::ANY,
        default: None,
        doc: "the model's weight",
    };
    pub const DENSITY: Param = Param {
        name: "density",
        scope: Scope::PerModel,
        kind: Kind::FRACTION,
        default: Some(1.0),
        doc: "fraction of the task vector kept, in (0, 1]",
    };
    pub const LAMBDA: Param = Param {
        name: "lambda",
        scope: Scope::Global,
        kind: Kind::ANY,
        default: Some(1.0),
        doc: "scale of the merged task vector",
    };
    pub const INT8_MASK: Param = Param {
        name: "int8_mask",
        scope: Scope::Global,
        kind: Kind::Bool,
        default: Some(0.0),
        doc: "mergekit's memory saving for the sign mask; no effect on the result here",
    };

    pub const fn normalize(default: bool) -> Param {
        Param {
            name: "normalize",
            scope: Scope::Global,
            kind: Kind::Bool,
            default: Some(if default { 1.0 } else { 0.0 }),
            doc: "divide by the sum of the weights",
        }
    }

    pub const fn rescale(default: bool) -> Param {
        Param {
            name: "rescale",
            scope: Scope::Global,
            kind: Kind::Bool,
            default: Some(if default { 1.0 } else { 0.0 }),
            doc: "scale each trimmed task vector back to its L1 norm",
        }
    }

    pub const GAMMA: Param = Param {
        name: "gamma",
        scope: Scope::PerModel,
        kind: Kind::UNIT,
        default: Some(0.01),
        doc: "fraction of the largest magnitudes dropped, in [0, 1]",
    };
    pub const EPSILON: Param = Param {
        name: "epsilon",
        scope: Scope::PerModel,
        kind: Kind::UNIT,
        default: Some(0.15),
        doc: "half-width of the keep probabilities around density",
    };

    /// A trim-and-combine method (TIES, DARE, DELLA, breadcrumbs and their variants): a base,
    /// at least one other model, task vectors trimmed by `sparsify`, a sign elected when
    /// `elect_sign`, then summed. These differ only in these fields, so each is a value
    /// rather than an impl of its own.
    pub struct Trimmed {
        /// `--method` and `merge_method`.
        pub name: &'static str,
        /// The defining paper.
        pub paper: &'static str,
        /// The parameters it reads, with its defaults.
        pub params: &'static [Param],
        /// How each task vector is trimmed.
        pub sparsify: Sparsify,
        /// Whether each element's sign is elected before the sum (TIES' consensus).
        pub elect_sign: bool,
    }

    impl Method for Trimmed {
        fn name(&self) -> &'static str {
            self.name
        }
        fn paper(&self) -> &'static str {
            self.paper
        }
        fn params(&self) -> &'static [Param] {
            self.params
        }
        fn base(&self) -> BaseUse {
            BaseUse::Required
        }
        fn check_models(&self, models: usize, _: bool) -> Result<(), String> {
            check_task_vector_models(models)
        }
        fn work(&self, t: &TensorInfo<'_>, p: &TensorParams) -> Result<Work, String> {
            task_vectors(t, p, Some(self.sparsify), self.elect_sign)
        }
    }

    /// Every task-vector method needs a base and at least one other model.
    pub fn check_task_vector_models(models: usize) -> Result<(), String> {
        if models == 0 {
            return Err("needs at least one model besides the base".into());
        }
        Ok(())
    }

    /// The shared planning of the task-vector methods.
    pub fn task_vectors(
        tensor: &TensorInfo<'_>,
        params: &TensorParams,
        sparsify: Option<Sparsify>,
        consensus: bool,
    ) -> Result<Work, String> {
        let mut models = Vec::new();
        for m in 0..params.models() {
            let density = params.model_or(m, "density", 1.0);
            let gamma = params.model_or(m, "gamma", 0.0);
            let epsilon = params.model_or(m, "epsilon", 0.0);
            if let Some(s) = sparsify {
                s.check(tensor.shape, tensor.elements, density, gamma, epsilon)
                    .map_err(|e| format!("model {m}: {e}"))?;
            }
            let weight = params.model(m, "weight");
            // A model of weight 0 takes no part: it would add only zeros to the sums and to
            // TIES' election, and 0 x NaN would carry its NaNs into them. It is not read.
            if weight == 0.0 {
                continue;
            }
            models.push(TaskVector {
                input: m,
                weight,
                density,
                gamma,
                epsilon,
                stream: random_stream(tensor.seed, tensor.name, m),
            });
        }
        if models.is_empty() {
            // base + lambda * 0: the base, read alone (it follows the models in the inputs).
            return Ok(Work::Linear(vec![(params.models(), 1.0)]));
        }
        Ok(Work::TaskVectors(TaskVectors {
            models,
            sparsify,
            consensus,
            normalize: params.flag("normalize"),
            rescale: params.flag_or("rescale", false),
            lambda: params.global("lambda"),
        }))
    }
}

/// A parameter's value for a message: as written when short, in exponent form when its
/// decimal digits would run to hundreds (`--gamma 1e300`).
pub(crate) fn shown(value: f64) -> String {
    let plain = value.to_string();
    if plain.len() <= 24 {
        plain
    } else {
        format!("{value:e}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_names_are_unique_and_found() {
        for m in REGISTRY {
            assert!(std::ptr::addr_eq(*m, find(m.name()).unwrap()));
            let mut seen = std::collections::BTreeSet::new();
            for p in m.params() {
                assert!(
                    seen.insert(p.name),
                    "{} declares {} twice",
                    m.name(),
                    p.name
                );
                if let Some(d) = p.default {
                    p.kind.check(d).unwrap();
                }
            }
        }
        assert!(find("karcher").is_none());
    }

    #[test]
    fn gram_indexes_the_upper_triangle() {
        let g = Gram {
            vectors: 3,
            values: vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0],
        };
        assert_eq!([g.dot(0, 0), g.dot(0, 1), g.dot(0, 2)], [0.0, 1.0, 2.0]);
        assert_eq!([g.dot(1, 1), g.dot(2, 1), g.dot(2, 2)], [3.0, 4.0, 5.0]);
    }

    #[test]
    fn ranges_read_as_intervals() {
        assert!(Kind::FRACTION.check(0.0).is_err());
        assert!(Kind::FRACTION.check(1.0).is_ok());
        assert!(Kind::UNIT.check(1.01).unwrap_err().contains("[0, 1]"));
        assert!(Kind::ANY.check(f64::NAN).is_err());
    }
}
