//! The sharded-checkpoint index, `model.safetensors.index.json`: parsing it into a validated
//! `ShardIndex`, and encoding one for a sharded output.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Component, Path};

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use crate::error::{printable, Error, Result};

/// The index file transformers reads for a sharded model.
pub const INDEX_NAME: &str = "model.safetensors.index.json";
/// The weights file of an unsharded model directory.
pub const SINGLE_NAME: &str = "model.safetensors";

/// Index files larger than this are refused. A trillion-parameter model's index is about 15 MB
/// (Kimi K2: some 140 000 tensors of about 100 bytes each, estimated from its tensor count);
/// parsed, an index takes up to 15 times its size (a `"3f":"s",` entry becomes two strings in
/// a map), so 64 MiB, the header cap, bounds that near 1 GB.
pub const MAX_INDEX_LEN: u64 = 64 * 1024 * 1024;

/// A parsed index: which shard file holds each tensor. Shard names are plain file names in the
/// index's directory; a `ShardIndex` that exists has no path separators or `..` in them and at
/// least one tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardIndex {
    /// `metadata.total_size`, when the index has it: bytes of tensor data over all shards.
    pub total_size: Option<u64>,
    /// Tensor name → shard file name.
    pub weight_map: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct RawIndex {
    #[serde(default)]
    metadata: Option<RawMetadata>,
    weight_map: UniqueMap,
}

#[derive(Deserialize)]
struct RawMetadata {
    #[serde(default)]
    total_size: Option<serde_json::Value>,
}

/// A JSON object of strings whose duplicate keys are an error, not silently the last one.
struct UniqueMap(BTreeMap<String, String>);

impl<'de> Deserialize<'de> for UniqueMap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = UniqueMap;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object mapping tensor names to shard file names")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<UniqueMap, A::Error> {
                let mut out = BTreeMap::new();
                while let Some((k, v)) = map.next_entry::<String, String>()? {
                    if out.contains_key(&k) {
                        return Err(de::Error::custom(format!(
                            "tensor '{}' is listed twice in weight_map",
                            printable(&k)
                        )));
                    }
                    out.insert(k, v);
                }
                Ok(UniqueMap(out))
            }
        }
        d.deserialize_map(V)
    }
}

impl ShardIndex {
    /// Parses and validates an index's bytes. `path` is only used in messages.
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<ShardIndex> {
        let raw: RawIndex = serde_json::from_slice(bytes).map_err(|e| {
            Error::header(
                path,
                format!("is not a valid safetensors index ({e}); it needs a \"weight_map\" object of tensor name to shard file"),
            )
        })?;
        let total_size = match raw.metadata.and_then(|m| m.total_size) {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => Some(
                v.as_u64()
                    .or_else(|| {
                        // Some writers store it as a float; accept it when it is a whole number.
                        v.as_f64()
                            .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < 2f64.powi(63))
                            .map(|f| f as u64)
                    })
                    .ok_or_else(|| {
                        Error::header(
                            path,
                            format!("metadata.total_size is {v}, not a byte count"),
                        )
                    })?,
            ),
        };
        if raw.weight_map.0.is_empty() {
            return Err(Error::header(
                path,
                "weight_map is empty; the index lists no tensors",
            ));
        }
        for (tensor, file) in &raw.weight_map.0 {
            // Read as a shard, the index would be reported as a corrupt safetensors file.
            if file == INDEX_NAME {
                return Err(Error::tensor(
                    path,
                    tensor,
                    format!("weight_map names the index itself, {INDEX_NAME}, as its shard; regenerate the index or re-download the model"),
                ));
            }
            if !is_plain_file_name(file) {
                return Err(Error::tensor(
                    path,
                    tensor,
                    format!(
                        "weight_map names shard '{}', which is not a file name in the index's directory",
                        printable(file)
                    ),
                ));
            }
        }
        Ok(ShardIndex {
            total_size,
            weight_map: raw.weight_map.0,
        })
    }

    /// Reads and parses the index file at `path`: a regular file of at most `MAX_INDEX_LEN`
    /// bytes (a FIFO swapped in after the directory was looked at would block a plain read).
    pub fn read(path: &Path) -> Result<ShardIndex> {
        let bytes = super::small_file::read(path, MAX_INDEX_LEN, "shard index")?;
        ShardIndex::parse(path, &bytes)
    }

    /// The shard file names, sorted and without repeats.
    pub fn shard_files(&self) -> Vec<&str> {
        let mut files: Vec<&str> = self.weight_map.values().map(String::as_str).collect();
        files.sort_unstable();
        files.dedup();
        files
    }

    /// The index as transformers writes it: `metadata.total_size` and `weight_map`, with
    /// sorted keys and two-space indentation.
    pub fn encode(&self) -> String {
        let mut metadata = serde_json::Map::new();
        if let Some(n) = self.total_size {
            metadata.insert("total_size".into(), n.into());
        }
        let value = serde_json::json!({
            "metadata": metadata,
            "weight_map": self.weight_map,
        });
        serde_json::to_string_pretty(&value).expect("strings and integers serialise") + "\n"
    }
}

/// A name with exactly one normal component: no directories, no `..`, not absolute.
fn is_plain_file_name(name: &str) -> bool {
    let mut parts = Path::new(name).components();
    matches!(
        (parts.next(), parts.next()),
        (Some(Component::Normal(_)), None)
    ) && !name.contains('/')
        && !name.contains('\\')
}

/// The file name transformers gives shard `n` (1-based) of `count`:
/// `model-00001-of-00003.safetensors`.
pub fn shard_file_name(n: usize, count: usize) -> String {
    format!("model-{n:05}-of-{count:05}.safetensors")
}

/// Whether `name` is one [`shard_file_name`] could give: `model-N-of-M.safetensors`, each
/// number of at least five digits.
pub fn is_shard_file_name(name: &str) -> bool {
    let number = |s: &str| s.len() >= 5 && s.bytes().all(|b| b.is_ascii_digit());
    name.strip_prefix("model-")
        .and_then(|s| s.strip_suffix(".safetensors"))
        .and_then(|s| s.split_once("-of-"))
        .is_some_and(|(n, count)| number(n) && number(count))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<ShardIndex> {
        ShardIndex::parse(Path::new("i.json"), s.as_bytes())
    }

    #[test]
    fn parses_and_round_trips() {
        let i =
            parse(r#"{"metadata":{"total_size":12},"weight_map":{"b":"s2","a":"s1","c":"s1"}}"#)
                .unwrap();
        assert_eq!(i.total_size, Some(12));
        assert_eq!(i.shard_files(), ["s1", "s2"]);
        assert_eq!(parse(&i.encode()).unwrap(), i);
    }

    #[test]
    fn refuses_duplicates_paths_and_empty_maps() {
        let e = parse(r#"{"weight_map":{"a":"s1","a":"s2"}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("listed twice"), "{e}");
        let e = parse(r#"{"weight_map":{"a":"../x.safetensors"}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a file name"), "{e}");
        let e = parse(r#"{"weight_map":{"a":"/etc/passwd"}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a file name"), "{e}");
        assert!(parse(r#"{"weight_map":{}}"#).is_err());
        assert!(parse(r#"{"metadata":{}}"#).is_err());
        assert!(parse(r#"{"metadata":{"total_size":"x"},"weight_map":{"a":"s"}}"#).is_err());
    }

    #[test]
    fn names_shards_as_transformers_does() {
        assert_eq!(shard_file_name(1, 3), "model-00001-of-00003.safetensors");
        for name in [shard_file_name(1, 3), shard_file_name(123456, 123456)] {
            assert!(is_shard_file_name(&name), "{name}");
        }
        for name in [
            "model-1-of-3.safetensors",
            "model-00001-of-00003.safetensors.bak",
            "model-0000a-of-00003.safetensors",
            "model-00001-of-.safetensors",
            "run-17-epoch-3.safetensors",
            "model.safetensors",
        ] {
            assert!(!is_shard_file_name(name), "{name}");
        }
    }
}
