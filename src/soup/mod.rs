//! Merging: merge methods, plans from headers, the element-wise kernels, and running plans to
//! files or memory.

mod card;
mod chat;
mod execute;
mod kernel;
mod layout;
mod merge;
pub mod method;
mod plan;
mod recipe;
mod report;
pub mod room;
mod verify;
pub mod weights;
mod whole;

pub use card::{model_name, Card};
pub use execute::{
    interrupt, interrupted, to_memory, write, write_dir, ExtraFile, RunOptions, Soup, Warning,
};
pub use kernel::CHUNK_ELEMENTS;
pub use layout::{parse_size, FileSummary, Layout, OutputFile, DEFAULT_SHARD_SIZE};
pub use merge::{
    check_named_streams, output_kind, repeated_models, Merge, MergeRequest, PARAMETER_FLAGS,
};
pub use plan::{
    display_name, display_names, tool_version, Action, MethodMerge, OnMissing, Plan, PlanOptions,
    TensorPlan, Term, Whole, META_BASE, META_INGREDIENTS, META_METHOD, META_PARAMETERS,
    META_RECIPE, META_SEED, META_TOOL, META_WEIGHTS,
};
pub use recipe::Recipe;
pub use report::{DtypeSummary, InputReport, MergeReport, PlannedTensor};
pub use verify::{Record, Verified, VerifiedFile};
