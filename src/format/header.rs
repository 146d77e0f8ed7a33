//! Parsing and validating a safetensors header into a `Header` that is known to be sound.
//!
//! Everything here works on the header bytes and the file length alone, with checked arithmetic,
//! so a lying file is rejected before any tensor byte is read or any claimed size is allocated.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::Path;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use super::dtype::Dtype;
use crate::error::{printable, Error, Result};

/// Headers larger than this are refused. Real checkpoints' headers are kilobytes to a few
/// megabytes (a 70B shard has ~1000 entries of ~150 bytes), so this only stops abuse.
pub const MAX_HEADER_LEN: u64 = 64 * 1024 * 1024;

/// Tensors with more dimensions than this are refused; real models use at most 6 or so.
pub const MAX_RANK: usize = 32;

/// One tensor's entry, validated: its byte span matches its shape and dtype.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<u64>,
    /// Byte range within the data section (after the 8-byte length and the header).
    pub begin: u64,
    pub end: u64,
}

impl TensorInfo {
    pub fn len_bytes(&self) -> u64 {
        self.end - self.begin
    }

    /// Number of elements. Fits in u64: validation checked the product.
    pub fn elements(&self) -> u64 {
        self.shape.iter().product()
    }
}

/// A validated header: metadata, tensors in file order, and where the data section starts.
#[derive(Debug, Clone)]
pub struct Header {
    pub metadata: BTreeMap<String, String>,
    /// Tensors sorted by their offset in the file.
    pub tensors: Vec<TensorInfo>,
    /// Absolute offset of the data section in the file: 8 + header length.
    pub data_start: u64,
}

impl Header {
    /// Parses and validates a header given the file's first bytes and its total length.
    ///
    /// `prefix` must hold at least the 8-byte length and the header it announces; pass the whole
    /// mapped file. `path` is only used in messages.
    pub fn parse(path: &Path, file: &[u8]) -> Result<Header> {
        Header::parse_safetensors(path, file).map_err(|e| match foreign_format(path, file) {
            Some(what) => Error::header(path, what),
            None => e,
        })
    }

    fn parse_safetensors(path: &Path, file: &[u8]) -> Result<Header> {
        let file_len = file.len() as u64;
        let len_bytes: [u8; 8] = file.get(..8).and_then(|b| b.try_into().ok()).ok_or_else(|| {
            Error::header(
                path,
                format!("file is {file_len} bytes, too short to be safetensors (a header needs at least 8); is it the right file?"),
            )
        })?;
        let header_len = u64::from_le_bytes(len_bytes);
        if header_len > MAX_HEADER_LEN {
            return Err(Error::header(
                path,
                format!("header claims {header_len} bytes, more than the {MAX_HEADER_LEN}-byte limit; the file is corrupt or not safetensors"),
            ));
        }
        let data_start = 8 + header_len;
        if data_start > file_len {
            return Err(Error::header(
                path,
                format!("header claims {header_len} bytes but the file has only {} after the length; the file is truncated or not safetensors", file_len - 8),
            ));
        }
        let json = &file[8..data_start as usize];
        let raw = parse_json(path, json)?;
        let data_len = file_len - data_start;
        validate(path, raw, data_start, data_len)
    }
}

/// What a file that is not safetensors is, with how to convert it, when its first bytes (or,
/// for ONNX, which has no magic number, its extension) say: the formats a user is likely to
/// pass by mistake. Only consulted once parsing has failed, so no safetensors file is
/// misnamed.
fn foreign_format(path: &Path, file: &[u8]) -> Option<String> {
    const CONVERT: &str = "convert it first: safetensors.torch.save_file(state_dict, \"model.safetensors\") with state_dict = torch.load(PATH, map_location=\"cpu\") (a Lightning .ckpt: its [\"state_dict\"]; a whole pickled model: its .state_dict())";
    let what = if file.starts_with(b"PK\x03\x04") {
        format!("is a zip archive, as torch.save writes (.pt, .pth, .bin, .ckpt), not safetensors; {CONVERT}")
    } else if file.len() >= 2 && file[0] == 0x80 && (2..=5).contains(&file[1]) {
        format!("is a Python pickle, as older torch.save writes (.pt, .bin), not safetensors; {CONVERT}")
    } else if file.starts_with(b"version https://git-lfs") {
        "is a Git LFS pointer, not the weights: the repository was cloned without Git LFS; run git lfs pull in it (or download the file itself)".to_string()
    } else if file.starts_with(b"GGUF") {
        "is a GGUF file (llama.cpp), not safetensors; average the original Hugging Face model directories, then convert the soup".to_string()
    } else if file.starts_with(b"\x89HDF") {
        "is an HDF5 file (Keras .h5), not safetensors; save the weights with safetensors instead"
            .to_string()
    } else if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("onnx"))
    {
        "is an ONNX model (judging by its name), not safetensors; average the PyTorch weights it was exported from: safetensors.torch.save_file(model.state_dict(), \"model.safetensors\")".to_string()
    } else {
        return None;
    };
    Some(what)
}

fn parse_json(path: &Path, json: &[u8]) -> Result<RawHeader> {
    if json.first() != Some(&b'{') {
        return Err(Error::header(
            path,
            "header is not a JSON object; the file is corrupt or not safetensors",
        ));
    }
    let text = std::str::from_utf8(json).map_err(|e| {
        Error::header(
            path,
            format!("header is not valid UTF-8 ({e}); the file is corrupt"),
        )
    })?;
    serde_json::from_str::<RawHeader>(text).map_err(|e| {
        Error::header(
            path,
            format!("header JSON is invalid: {e}; the file is corrupt or not safetensors"),
        )
    })
}

fn validate(path: &Path, raw: RawHeader, data_start: u64, data_len: u64) -> Result<Header> {
    let mut tensors = Vec::with_capacity(raw.tensors.len());
    for (name, entry) in raw.tensors {
        tensors.push(validate_tensor(path, name, entry)?);
    }
    tensors.sort_by_key(|t| (t.begin, t.end));

    let mut cursor = 0u64;
    for t in &tensors {
        if t.begin != cursor {
            let what = if t.begin < cursor {
                "overlaps the previous tensor"
            } else {
                "leaves a gap after the previous tensor"
            };
            return Err(Error::tensor(
                path,
                &t.name,
                format!("data_offsets [{}, {}] {what} (expected to start at {cursor}); the file is corrupt", t.begin, t.end),
            ));
        }
        cursor = t.end;
    }
    if cursor != data_len {
        let reason = if cursor > data_len {
            format!("tensor data needs {cursor} bytes but the file has {data_len} after the header; the file is truncated (re-download it)")
        } else {
            format!("{} bytes after the last tensor's data are not claimed by any tensor; the file is corrupt", data_len - cursor)
        };
        return Err(Error::header(path, reason));
    }
    Ok(Header {
        metadata: raw.metadata,
        tensors,
        data_start,
    })
}

fn validate_tensor(path: &Path, name: String, raw: RawTensor) -> Result<TensorInfo> {
    if name.is_empty() || name.chars().any(char::is_control) {
        return Err(Error::tensor(
            path,
            &name,
            "name is empty or contains control characters; the file is corrupt",
        ));
    }
    let dtype = Dtype::parse(&raw.dtype).ok_or_else(|| {
        Error::tensor(
            path,
            &name,
            format!(
                "unknown dtype '{}'; supported: BOOL, U8, I8, F8_E5M2, F8_E4M3, F8_E8M0, I16, U16, F16, BF16, I32, U32, F32, F64, I64, U64, C64",
                printable(&raw.dtype)
            ),
        )
    })?;
    if raw.shape.len() > MAX_RANK {
        return Err(Error::tensor(
            path,
            &name,
            format!(
                "has {} dimensions, more than {MAX_RANK}; the file is corrupt",
                raw.shape.len()
            ),
        ));
    }
    let bytes = raw
        .shape
        .iter()
        .try_fold(dtype.size() as u64, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| {
            Error::tensor(
                path,
                &name,
                format!(
                    "shape {:?} overflows a 64-bit size; the file is corrupt",
                    raw.shape
                ),
            )
        })?;
    let [begin, end] = raw.data_offsets;
    if end < begin || end - begin != bytes {
        return Err(Error::tensor(
            path,
            &name,
            format!(
                "data_offsets [{begin}, {end}] don't match shape {:?} of {dtype}, which needs {bytes} bytes; the file is corrupt",
                raw.shape
            ),
        ));
    }
    Ok(TensorInfo {
        name,
        dtype,
        shape: raw.shape,
        begin,
        end,
    })
}

/// The header as written: parsed with duplicate keys rejected, not yet validated.
struct RawHeader {
    metadata: BTreeMap<String, String>,
    tensors: Vec<(String, RawTensor)>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTensor {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: [u64; 2],
}

const METADATA_KEY: &str = "__metadata__";

impl<'de> Deserialize<'de> for RawHeader {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct HeaderVisitor;
        impl<'de> Visitor<'de> for HeaderVisitor {
            type Value = RawHeader;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of tensor names to entries")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawHeader, A::Error> {
                let mut seen = HashSet::new();
                let mut metadata = None;
                let mut tensors = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    if !seen.insert(key.clone()) {
                        return Err(de::Error::custom(format!(
                            "duplicate key '{}'",
                            printable(&key)
                        )));
                    }
                    if key == METADATA_KEY {
                        metadata = Some(map.next_value::<Metadata>()?.0);
                    } else {
                        let entry = map.next_value::<RawTensor>().map_err(|e| {
                            de::Error::custom(format!("tensor '{}': {e}", printable(&key)))
                        })?;
                        tensors.push((key, entry));
                    }
                }
                Ok(RawHeader {
                    metadata: metadata.unwrap_or_default(),
                    tensors,
                })
            }
        }
        d.deserialize_map(HeaderVisitor)
    }
}

/// `__metadata__`: strings to strings only, no duplicates.
struct Metadata(BTreeMap<String, String>);

impl<'de> Deserialize<'de> for Metadata {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct MetadataVisitor;
        impl<'de> Visitor<'de> for MetadataVisitor {
            type Value = Metadata;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("__metadata__ as a map of strings to strings (the name __metadata__ is reserved and cannot be a tensor)")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Metadata, A::Error> {
                let mut out = BTreeMap::new();
                while let Some(key) = map.next_key::<String>()? {
                    let value = map.next_value::<serde_json::Value>()?;
                    let serde_json::Value::String(value) = value else {
                        return Err(de::Error::custom(format!(
                            "__metadata__ value for '{}' is not a string (safetensors metadata is strings only)",
                            printable(&key)
                        )));
                    };
                    if out.insert(key.clone(), value).is_some() {
                        return Err(de::Error::custom(format!(
                            "duplicate __metadata__ key '{}'",
                            printable(&key)
                        )));
                    }
                }
                Ok(Metadata(out))
            }
        }
        d.deserialize_map(MetadataVisitor)
    }
}
