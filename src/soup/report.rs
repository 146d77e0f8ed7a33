//! What a merge reports: the `--json` summary of `soup-merge` (and of a dry run), built from
//! the plan and the run. The text soup-merge prints comes from the same structs.

use std::path::PathBuf;

use serde::Serialize;

use super::execute::Warning;
use super::layout::FileSummary;
use super::verify::Verified;

/// The `--json` summary of a merge (or of a plan, with `--dry-run`).
#[derive(Debug, Serialize)]
pub struct MergeReport {
    /// The output path as given, or null for a dry run without -o.
    #[serde(serialize_with = "crate::json_path::option")]
    pub output: Option<PathBuf>,
    /// Whether this was a dry run: nothing was read beyond headers, nothing written.
    pub dry_run: bool,
    /// Inputs in command-line order, with the weights actually used.
    pub inputs: Vec<InputReport>,
    /// Output tensors.
    pub tensors: usize,
    /// Tensors averaged (float dtypes).
    pub averaged: usize,
    /// Tensors copied (non-float dtypes).
    pub copied: usize,
    /// Tensors not in every input (handled by --on-missing).
    pub missing: Vec<String>,
    /// Bytes of tensor data read from the inputs.
    pub bytes_read: u64,
    /// Size of the output file, header included, as planned.
    pub output_bytes: u64,
    /// Bytes actually written (0 in a dry run).
    pub bytes_written: u64,
    /// Wall-clock seconds from start to the output being in place.
    pub seconds: f64,
    /// Findings about the inputs and the output; the merge went on. Every warning printed on
    /// stderr is here, and nothing else.
    pub warnings: Vec<Warning>,
    /// Parameters (elements) in the output's tensors.
    pub parameters: u64,
    /// Output tensors per dtype: count and bytes.
    pub dtypes: Vec<DtypeSummary>,
    /// The output's safetensors files: one, or the shards of a model directory.
    pub files: Vec<FileSummary>,
    /// Non-weight files written beside the shards of a directory output (config, tokenizer,
    /// model card).
    pub extra_files: Vec<String>,
    /// The recipe file, with --config.
    #[serde(serialize_with = "crate::json_path::option")]
    pub config: Option<PathBuf>,
    /// The plan per tensor, with --dry-run only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<Vec<PlannedTensor>>,
    /// With --verify: the output as read back, with the sha256 of each file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verified: Option<Verified>,
}

/// Output tensors of one dtype.
#[derive(Debug, Serialize)]
pub struct DtypeSummary {
    /// The dtype's safetensors name.
    pub dtype: String,
    /// Number of tensors.
    pub tensors: usize,
    /// Parameters (elements) in them.
    pub parameters: u64,
    /// Bytes of tensor data.
    pub bytes: u64,
}

/// One input in the summary.
#[derive(Debug, Serialize)]
pub struct InputReport {
    /// The file or model directory, as given.
    #[serde(serialize_with = "crate::json_path::path")]
    pub path: PathBuf,
    /// The weight used, after --normalize.
    pub weight: f64,
    /// Number of safetensors files it is stored in (1 for a file or model.safetensors).
    pub shards: usize,
}

/// One output tensor in a dry run.
#[derive(Debug, Serialize)]
pub struct PlannedTensor {
    /// The tensor's name, as the inputs spell it.
    pub name: String,
    /// The output dtype.
    pub dtype: String,
    /// The shape.
    pub shape: Vec<u64>,
    /// `average` or `copy`.
    pub action: &'static str,
    /// Indices of the inputs used, with their weights (1 for a copy).
    pub terms: Vec<(usize, f64)>,
}
