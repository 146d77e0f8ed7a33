//! Hugging Face model directories: finding a directory's weights (`model.safetensors`, or the
//! index and its shards, cross-checked) and the non-weight files that travel with them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::checkpoint::{Checkpoint, Shard};
use super::dtype::Dtype;
use super::index::{ShardIndex, INDEX_NAME, SINGLE_NAME};
use super::small_file::SourceFile;
use crate::error::{printable, Error, Result};

/// Files a model directory carries besides its weights, copied from the first input (or
/// `--base`) into a directory output: the config, generation config, tokenizer and chat
/// template, by the names transformers and tokenizers save them under.
pub const COMPANION_FILES: &[&str] = &[
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "chat_template.jinja",
    "chat_template.json",
    "preprocessor_config.json",
    "processor_config.json",
];

/// The companion files that describe the model rather than its tokenizer; every other one
/// belongs to the tokenizer (or its chat template), which a recipe's `tokenizer_source` takes
/// from another model.
const MODEL_DESCRIPTION_FILES: &[&str] = &[
    "config.json",
    "generation_config.json",
    "preprocessor_config.json",
    "processor_config.json",
];

/// Whether companion file `name` is part of the tokenizer.
pub fn is_tokenizer_file(name: &str) -> bool {
    !MODEL_DESCRIPTION_FILES.contains(&name)
}

/// Opens a model directory's weights as one checkpoint. Like transformers, it prefers
/// `model.safetensors` and otherwise reads `model.safetensors.index.json` and its shards.
pub fn open(dir: &Path) -> Result<Checkpoint> {
    let single = dir.join(SINGLE_NAME);
    if single.is_file() {
        return Checkpoint::from_shards(dir, vec![Shard::open(&single)?]);
    }
    let index_path = dir.join(INDEX_NAME);
    if index_path.is_file() {
        return open_sharded(dir, &index_path);
    }
    // Present but unreadable is not "without": saying so would send the user to pass a
    // shard alone.
    for path in [single, index_path] {
        if let Some(reason) = unusable_reason(&path) {
            return Err(Error::header(&path, reason));
        }
    }
    Err(Error::header(dir, missing_weights_reason(dir)))
}

/// Why a weights file or index that is there, but is not a regular file, can't be read; `None`
/// when nothing is there.
fn unusable_reason(path: &Path) -> Option<String> {
    path.symlink_metadata().ok()?;
    Some(match std::fs::metadata(path) {
        Err(_) => "is a link to nothing (an interrupted download?); fetch the model again".into(),
        Ok(m) if m.is_dir() => {
            "is a directory, not a weights file; the model directory is malformed".into()
        }
        Ok(_) => "is not a regular file (a FIFO, socket or device?); a model directory's weights are regular files".into(),
    })
}

/// Opens the shards an index names and checks the index against what they hold.
fn open_sharded(dir: &Path, index_path: &Path) -> Result<Checkpoint> {
    let index = ShardIndex::read(index_path)?;
    let mut shards = Vec::new();
    for file in index.shard_files() {
        let path = dir.join(file);
        if std::fs::metadata(&path).is_err() {
            let listed: Vec<&str> = index
                .weight_map
                .iter()
                .filter(|(_, f)| f.as_str() == file)
                .map(|(t, _)| t.as_str())
                .collect();
            return Err(Error::header(
                index_path,
                format!(
                    "lists shard {} (for {} tensor(s), such as '{}') but {} does not exist; the download is incomplete, fetch the missing shard",
                    printable(file),
                    listed.len(),
                    printable(listed[0]),
                    path.display()
                ),
            ));
        }
        shards.push(Shard::open(&path)?);
    }
    // A tensor in two shards is refused here, before the index is consulted.
    let ck = Checkpoint::from_shards(dir, shards)?;
    for t in ck.tensors() {
        let here = file_name(ck.shard_path(&t));
        match index.weight_map.get(t.name()) {
            None => {
                return Err(Error::tensor(
                    ck.shard_path(&t),
                    t.name(),
                    format!(
                        "is not listed in {}; the index and the shards disagree (an extra or stale shard?)",
                        index_path.display()
                    ),
                ))
            }
            Some(listed) if *listed != here => {
                return Err(Error::tensor(
                    index_path,
                    t.name(),
                    format!(
                        "weight_map says it is in {} but it is stored in {}; regenerate the index or re-download the model",
                        printable(listed),
                        printable(&here)
                    ),
                ))
            }
            Some(_) => {}
        }
    }
    if let Some((name, file)) = index.weight_map.iter().find(|(n, _)| !ck.contains(n)) {
        return Err(Error::tensor(
            index_path,
            name,
            format!(
                "weight_map says it is in {}, which does not hold it; the shard is incomplete or the index is wrong",
                printable(file)
            ),
        ));
    }
    Ok(ck)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Why a directory has no weights we can read, with what to do instead.
fn missing_weights_reason(dir: &Path) -> String {
    let mut found: BTreeSet<String> = BTreeSet::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".safetensors") || name.ends_with(".bin") || name.ends_with(".pt") {
                found.insert(name);
            }
        }
    }
    let base = format!("is a directory without {SINGLE_NAME} or {INDEX_NAME}");
    // A PEFT adapter's directory holds adapter_model.safetensors: its LoRA factors are no
    // model's weights, and averaging A and B factors separately is not averaging the updates.
    if dir.join("adapter_config.json").exists() {
        return format!(
            "{base}; it is a PEFT adapter (adapter_config.json), not a model: merge it into its base model first (PeftModel.from_pretrained(base, ADAPTER_DIR).merge_and_unload().save_pretrained(OUT_DIR)) and pass OUT_DIR"
        );
    }
    let safetensors: Vec<&String> = found
        .iter()
        .filter(|n| n.ends_with(".safetensors"))
        .collect();
    if let Some(first) = safetensors.first() {
        format!(
            "{base}; it has {}: pass the file itself, e.g. {}",
            safetensors.len(),
            dir.join(first).display()
        )
    } else if !found.is_empty() {
        format!(
            "{base}; only safetensors weights are read, convert {} to safetensors first",
            found.iter().next().expect("not empty")
        )
    } else {
        format!("{base}; pass a .safetensors file or a Hugging Face model directory")
    }
}

/// A companion file of a model directory, and whether it may travel into an output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Companion {
    /// Safe to copy: `from` is the regular file it resolves to, inside the model directory (or
    /// in the same Hugging Face cache repository's `blobs/`).
    Copy { name: &'static str, from: PathBuf },
    /// Not copied: `path` resolves outside the model directory, or to no regular file.
    Skipped {
        name: &'static str,
        path: PathBuf,
        reason: String,
    },
}

impl Companion {
    /// The file's name, as transformers saves it.
    pub fn name(&self) -> &'static str {
        match self {
            Companion::Copy { name, .. } | Companion::Skipped { name, .. } => name,
        }
    }
}

/// The companion files present in `dir`, in `COMPANION_FILES` order. A symbolic link is
/// followed only when it stays inside the directory, or, for a Hugging Face cache snapshot
/// (`.../snapshots/REV/`), points into the same repository's `blobs/`: a link elsewhere could
/// carry any file on the machine (a private key, say) into a model that gets published.
pub fn companion_files(dir: &Path) -> Vec<Companion> {
    let Ok(root) = std::fs::canonicalize(dir) else {
        return Vec::new();
    };
    let blobs = root
        .parent()
        .filter(|p| p.file_name().is_some_and(|n| n == "snapshots"))
        .and_then(Path::parent)
        .map(|repo| repo.join("blobs"));
    let mut found = Vec::new();
    for &name in COMPANION_FILES {
        let path = dir.join(name);
        if path.symlink_metadata().is_err() {
            continue;
        }
        let skip = |reason: String| Companion::Skipped {
            name,
            path: path.clone(),
            reason,
        };
        let Ok(from) = std::fs::canonicalize(&path) else {
            found.push(skip("is a link to nothing".into()));
            continue;
        };
        if !std::fs::metadata(&from).is_ok_and(|m| m.is_file()) {
            found.push(skip(format!(
                "resolves to {}, which is not a regular file",
                from.display()
            )));
            continue;
        }
        let inside = from.starts_with(&root)
            || blobs
                .as_ref()
                .is_some_and(|b| from.parent() == Some(b.as_path()));
        if inside {
            found.push(Companion::Copy { name, from });
        } else {
            found.push(skip(format!(
                "is a link to {}, outside the model directory",
                from.display()
            )));
        }
    }
    found
}

/// The Python modules a model directory's custom code lives in: the local files that the
/// `auto_map` of its `config.json` and `tokenizer_config.json` name (`"AutoModel":
/// "modeling_x.XModel"` is `modeling_x.py`; a `"repo--modeling_x.XModel"` lives in another
/// repository). transformers' `trust_remote_code` loads them from the model's own folder, so
/// an output without them does not load; the files are not copied (code is no companion this
/// tool vouches for), and the caller warns instead. Unreadable or odd configs name none: their
/// own checks report them.
pub fn remote_code(dir: &Path) -> Vec<String> {
    let mut modules = Vec::new();
    for config in ["config.json", "tokenizer_config.json"] {
        let Ok(bytes) = super::small_file::read(
            &dir.join(config),
            super::small_file::MAX_CONFIG_BYTES,
            "config",
        ) else {
            continue;
        };
        let Ok(json) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
            continue;
        };
        let Some(map) = json.get("auto_map").and_then(|m| m.as_object()) else {
            continue;
        };
        // A tokenizer's entry is a [slow, fast] pair, either of which may be null.
        let refs = map.values().flat_map(|v| match v {
            serde_json::Value::Array(pair) => pair.iter().filter_map(|r| r.as_str()).collect(),
            other => other.as_str().into_iter().collect::<Vec<_>>(),
        });
        for class in refs.filter(|r| !r.contains("--")) {
            if let Some((module, _)) = class.rsplit_once('.') {
                let file = format!("{}.py", module.replace('.', "/"));
                if !modules.contains(&file) {
                    modules.push(file);
                }
            }
        }
    }
    modules
}

/// The PyTorch name transformers writes in `config.json` for a dtype, if it has one.
pub fn torch_name(dtype: Dtype) -> Option<&'static str> {
    match dtype {
        Dtype::F32 => Some("float32"),
        Dtype::F16 => Some("float16"),
        Dtype::BF16 => Some("bfloat16"),
        Dtype::F64 => Some("float64"),
        _ => None,
    }
}

/// A `config.json` with its dtype set to `dtype` (a PyTorch name such as `bfloat16`): the
/// `torch_dtype` key, and `dtype` where transformers 5 writes that instead. Written back with
/// sorted keys and two-space indentation, as transformers writes configs.
pub fn config_with_dtype(path: &Path, bytes: &[u8], dtype: &str) -> Result<Vec<u8>> {
    let mut config: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
        Error::header(
            path,
            format!("is not valid JSON ({e}); fix it, or take the config from another directory with --base"),
        )
    })?;
    let map = config.as_object_mut().ok_or_else(|| {
        Error::header(
            path,
            "is not a JSON object; fix it, or take the config from another directory with --base",
        )
    })?;
    let mut set = false;
    for key in ["torch_dtype", "dtype"] {
        if let Some(v) = map.get_mut(key) {
            *v = dtype.into();
            set = true;
        }
    }
    if !set {
        map.insert("torch_dtype".into(), dtype.into());
    }
    let mut text = serde_json::to_string_pretty(&config).expect("values from JSON serialise");
    text.push('\n');
    Ok(text.into_bytes())
}

/// The chat template a tokenizer's files give it, as transformers loads it:
/// `chat_template.jinja` when there is one, else `tokenizer_config.json`'s `chat_template`
/// (the one named `default` when it holds several), with the file it came from as read.
/// Unreadable or odd files give none.
pub fn chat_template(
    jinja: Option<&Path>,
    tokenizer_config: Option<&Path>,
) -> Option<(String, SourceFile)> {
    let read = |p: &Path, what| {
        super::small_file::read_source(p, super::small_file::MAX_CONFIG_BYTES, what).ok()
    };
    if let Some((bytes, from)) = jinja.and_then(|p| read(p, "chat template")) {
        return String::from_utf8(bytes).ok().map(|t| (t, from));
    }
    let (bytes, from) = read(tokenizer_config?, "tokenizer config")?;
    let config: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let template = match config.get("chat_template")? {
        serde_json::Value::String(t) => Some(t.clone()),
        serde_json::Value::Array(named) => named
            .iter()
            .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
            .and_then(|t| t.get("template")?.as_str().map(str::to_string)),
        serde_json::Value::Object(named) => named.get("default")?.as_str().map(str::to_string),
        _ => None,
    };
    template.map(|t| (t, from))
}

/// A `tokenizer_config.json` whose `chat_template` is `template`, written back as
/// [`config_with_dtype`] writes, so that a transformers older than `chat_template.jinja`
/// (4.43) reads the template the output's `chat_template.jinja` holds. `None` when it has no
/// such key (then the `.jinja` file alone carries the template) or is not a JSON object.
pub fn tokenizer_config_with_template(bytes: &[u8], template: &str) -> Option<Vec<u8>> {
    let mut config: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let slot = config.as_object_mut()?.get_mut("chat_template")?;
    *slot = template.into();
    let mut text = serde_json::to_string_pretty(&config).expect("values from JSON serialise");
    text.push('\n');
    Some(text.into_bytes())
}

/// Whether two paths name one model: the same file or directory (through links, `..` or a hard
/// link), or a model directory and its own weights file (`a` and `a/model.safetensors`, or its
/// index), or two model directories whose weights are one file.
pub fn same_model(a: &Path, b: &Path) -> bool {
    model_key(a) == model_key(b)
}

/// What [`same_model`] compares, as a value to hash: repeats among n paths are then found with
/// n look-ups, where comparing every pair costs n² of them (minutes for a few thousand).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ModelKey {
    /// The device and inode of the model's weights: a directory's `model.safetensors` or
    /// index, else the file or directory itself.
    Found { dev: u64, ino: u64 },
    /// A path that doesn't exist, as written: only the same text is the same model.
    Missing(PathBuf),
}

/// The [`ModelKey`] of a path.
pub fn model_key(path: &Path) -> ModelKey {
    use std::os::unix::fs::MetadataExt;
    let weights = path
        .is_dir()
        .then(|| {
            [SINGLE_NAME, INDEX_NAME]
                .iter()
                .map(|n| path.join(n))
                .find(|f| f.is_file())
        })
        .flatten();
    match std::fs::metadata(weights.as_deref().unwrap_or(path)) {
        Ok(m) => ModelKey::Found {
            dev: m.dev(),
            ino: m.ino(),
        },
        Err(_) => ModelKey::Missing(path.to_path_buf()),
    }
}
