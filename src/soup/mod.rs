//! Merging: plans from headers, the weighted-sum kernel, and running plans to files or memory.

mod execute;
mod kernel;
mod plan;

pub use execute::{interrupt, to_memory, write, RunOptions, Soup, Warning};
pub use kernel::CHUNK_ELEMENTS;
pub use plan::{
    display_name, tool_version, Action, OnMissing, Plan, PlanOptions, TensorPlan, Term,
    META_INGREDIENTS, META_METHOD, META_TOOL, META_WEIGHTS,
};
