//! Where a plan's tensors land on disk: one safetensors file, or transformers-style shards of
//! at most a given number of bytes, each a complete safetensors file with its own header.

use std::collections::BTreeMap;
use std::ops::Range;

use serde::Serialize;

use super::plan::{Plan, TensorPlan};
use crate::error::{Error, Result};
use crate::format::{
    encode_header, shard_file_name, HeaderEntry, ShardIndex, MAX_HEADER_LEN, SINGLE_NAME,
};

/// transformers' and mergekit's default largest shard: 5 GB (decimal).
pub const DEFAULT_SHARD_SIZE: u64 = 5_000_000_000;

/// One output file: a run of the plan's tensors (in output order) with its header.
#[derive(Debug, Clone)]
pub struct OutputFile {
    /// File name within the output directory (or of the single output file).
    pub name: String,
    /// Indices into `Plan::tensors`.
    pub tensors: Range<usize>,
    /// The encoded header: length, JSON and padding.
    pub header: Vec<u8>,
    /// Offset in the plan's data section where this file's first tensor begins.
    pub data_start: u64,
    /// Bytes of tensor data in this file.
    pub data_len: u64,
}

impl OutputFile {
    /// Size of the file, header included.
    pub fn len(&self) -> u64 {
        self.header.len() as u64 + self.data_len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Where `tensor` (one of this file's) starts in the file.
    pub fn offset(&self, tensor: &TensorPlan) -> u64 {
        self.header.len() as u64 + (tensor.begin - self.data_start)
    }
}

/// The output files of a plan, and which file each tensor goes to.
#[derive(Debug, Clone)]
pub struct Layout {
    pub files: Vec<OutputFile>,
    /// `owner[t]` is the index in `files` of the file holding tensor `t`.
    owner: Vec<usize>,
}

/// One output file in a summary or dry run.
#[derive(Debug, Clone, Serialize)]
pub struct FileSummary {
    /// File name.
    pub name: String,
    /// Number of tensors in it.
    pub tensors: usize,
    /// Size of the file, header included.
    pub bytes: u64,
}

impl Layout {
    /// Everything in one file: the plan's own header and data section, byte for byte.
    pub fn single(plan: &Plan, name: &str) -> Layout {
        let file = OutputFile {
            name: name.to_string(),
            tensors: 0..plan.tensors.len(),
            header: plan.header(),
            data_start: 0,
            data_len: plan.data_len(),
        };
        Layout {
            files: vec![file],
            owner: vec![0; plan.tensors.len()],
        }
    }

    /// Shards of at most `max_bytes` of tensor data, filled in the plan's output order as
    /// transformers fills them in its own: a tensor that would overflow the current shard starts the next, and a tensor
    /// larger than `max_bytes` gets a shard of its own. One shard is `model.safetensors`; more
    /// are `model-00001-of-0000N.safetensors`. Every shard gets the plan's `__metadata__`.
    pub fn sharded(plan: &Plan, max_bytes: u64) -> Layout {
        let mut runs: Vec<Range<usize>> = Vec::new();
        let mut start = 0;
        let mut size = 0u64;
        for (i, t) in plan.tensors.iter().enumerate() {
            let len = t.end - t.begin;
            if i > start && size + len > max_bytes {
                runs.push(start..i);
                start = i;
                size = 0;
            }
            size += len;
        }
        runs.push(start..plan.tensors.len());
        let count = runs.len();
        let mut owner = vec![0; plan.tensors.len()];
        let files = runs
            .into_iter()
            .enumerate()
            .map(|(k, run)| {
                let name = if count == 1 {
                    SINGLE_NAME.to_string()
                } else {
                    shard_file_name(k + 1, count)
                };
                owner[run.clone()].iter_mut().for_each(|o| *o = k);
                shard(plan, name, run)
            })
            .collect();
        Layout { files, owner }
    }

    /// Refuses a layout with a header over [`MAX_HEADER_LEN`]: readers refuse such a file (this
    /// tool as an input, and `--verify` after publishing it), and it can be reached from inputs
    /// whose own headers are within it, by the tool's metadata added to theirs.
    pub fn check_header_sizes(&self, plan: &Plan) -> Result<()> {
        let Some(file) = self
            .files
            .iter()
            .find(|f| f.header.len() as u64 - 8 > MAX_HEADER_LEN)
        else {
            return Ok(());
        };
        let len = file.header.len() - 8;
        let metadata: usize = plan.metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
        // Every shard carries the whole __metadata__, but only its own tensors' entries.
        let fix = if metadata * 2 > len {
            "strip the large __metadata__ entries from the first input"
        } else {
            "write a model directory of smaller shards (a name without .safetensors, --shard-size), each with a header of its own"
        };
        Err(Error::Plan(format!(
            "the output's header{} would be {len} bytes, over the {MAX_HEADER_LEN} bytes a safetensors header may have here, so no run of this tool could read the soup back ({metadata} of them __metadata__, the first input's and the tool's): {fix}",
            if file.name.is_empty() { String::new() } else { format!(" ({})", file.name) },
        )))
    }

    /// The file that holds tensor `t`.
    pub fn file_of(&self, t: usize) -> &OutputFile {
        &self.files[self.owner[t]]
    }

    /// The index of the file that holds tensor `t`.
    pub fn owner(&self, t: usize) -> usize {
        self.owner[t]
    }

    /// The `model.safetensors.index.json` for a layout of several shards; `None` for one file,
    /// which transformers loads without an index.
    pub fn index(&self, plan: &Plan) -> Option<ShardIndex> {
        if self.files.len() < 2 {
            return None;
        }
        let weight_map: BTreeMap<String, String> = plan
            .tensors
            .iter()
            .enumerate()
            .map(|(t, tensor)| (tensor.name.clone(), self.file_of(t).name.clone()))
            .collect();
        Some(ShardIndex {
            total_size: Some(plan.data_len()),
            weight_map,
        })
    }

    /// Bytes of all output files, headers included.
    pub fn total_len(&self) -> u64 {
        self.files.iter().map(OutputFile::len).sum()
    }

    pub fn summary(&self) -> Vec<FileSummary> {
        self.files
            .iter()
            .map(|f| FileSummary {
                name: f.name.clone(),
                tensors: f.tensors.len(),
                bytes: f.len(),
            })
            .collect()
    }
}

fn shard(plan: &Plan, name: String, run: Range<usize>) -> OutputFile {
    let tensors = &plan.tensors[run.clone()];
    let data_start = tensors.first().map_or(0, |t| t.begin);
    let data_end = tensors.last().map_or(0, |t| t.end);
    let entries: Vec<HeaderEntry> = tensors
        .iter()
        .map(|t| HeaderEntry {
            name: t.name.clone(),
            dtype: t.dtype,
            shape: t.shape.clone(),
            begin: t.begin - data_start,
            end: t.end - data_start,
        })
        .collect();
    OutputFile {
        name,
        tensors: run,
        header: encode_header(&plan.metadata, &entries),
        data_start,
        data_len: data_end - data_start,
    }
}

/// Parses a shard size as transformers does: `5GB`, `500MB`, `2GiB`, `100kB` or plain bytes.
/// Decimal units are powers of 1000, binary ones (`KiB`, `MiB`, `GiB`, `TiB`) of 1024.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let unit = unit.trim();
    let scale: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" | "k" => 1_000,
        "mb" | "m" => 1_000_000,
        "gb" | "g" => 1_000_000_000,
        "tb" | "t" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => {
            return Err(format!(
                "unknown unit '{unit}' in '{text}'; use B, KB, MB, GB, TB or KiB, MiB, GiB, TiB (e.g. 5GB)"
            ))
        }
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a size; write it like 5GB or 500MB"))?;
    let bytes = value * scale as f64;
    if bytes.is_nan() || bytes < 1.0 {
        return Err(format!("shard size '{text}' must be at least 1 byte"));
    }
    if bytes >= 2f64.powi(63) {
        return Err(format!(
            "shard size '{text}' is over 8 EiB; give a smaller size, or leave --shard-size out for one file"
        ));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_like_transformers() {
        assert_eq!(parse_size("5GB"), Ok(5_000_000_000));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("500mb"), Ok(500_000_000));
        assert_eq!(parse_size("1.5KB"), Ok(1500));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("5XB").is_err());
        assert!(parse_size("0").unwrap_err().contains("at least 1 byte"));
        assert!(parse_size("18446744073709551615")
            .unwrap_err()
            .contains("over 8 EiB"));
        assert!(parse_size("GB").is_err());
    }
}
