//! Datasets: a safetensors file with `inputs` (float [N, ...]) and `labels` (integers [N]), or images (a class folder tree or a CSV/JSONL list) decoded through [`crate::images`]; and [`Data`], one split as the model reads it, images or text ([`crate::text`]).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use model_soup::format::{Accumulator, Checkpoint};

use super::arch::{Architecture, Input, InputShape, Output};
use super::batch_memory::{self, Example};
use super::error::{Error, Result};
use super::images::{self, ImageList, LoadOptions, Samples};
use super::score::Task;
use super::text::TextData;

/// One split as the model reads it: images (or float inputs) for a vision model, token
/// sequences for a language model.
pub enum Data {
    /// Float inputs with class labels.
    Images(Dataset),
    /// Tokenised text for a sequence classifier or a next-token model.
    Text(TextData),
}

impl Data {
    /// The file or folder it came from.
    pub fn path(&self) -> &Path {
        match self {
            Data::Images(d) => &d.path,
            Data::Text(t) => &t.path,
        }
    }

    /// Examples: images, text examples, language-modelling windows or questions.
    pub fn len(&self) -> usize {
        match self {
            Data::Images(d) => d.len(),
            Data::Text(t) => t.len(),
        }
    }

    /// Whether the split has no examples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What is scored on it.
    pub fn task(&self) -> Task {
        match self {
            Data::Images(_) => Task::Classification,
            Data::Text(t) => t.task,
        }
    }
}

/// One split of a dataset, held as f32 inputs (in memory or in a cache file) and class labels.
pub struct Dataset {
    /// The file or folder it came from.
    pub path: PathBuf,
    /// Row-major inputs, `len() * sample_len()` values.
    pub inputs: Samples,
    /// The shape of one input, without the batch dimension.
    pub sample_shape: Vec<usize>,
    /// Class of each input, each in `0..classes`.
    pub labels: Vec<usize>,
    /// Class names in index order, when the data names them (an image folder's class
    /// folders, or a list's string labels).
    pub classes: Option<Vec<String>>,
    /// Images skipped with `--skip-bad-images`, with why.
    pub skipped: Vec<(PathBuf, String)>,
}

/// Which reader a dataset path needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// A `.safetensors` file of `inputs` and `labels`.
    Tensors,
    /// A folder of class folders of images.
    ImageFolder,
    /// A `.csv` list of `path,label`.
    Csv,
    /// A `.jsonl` list of `{"path", "label"}` objects.
    Jsonl,
}

impl Format {
    /// The format of `path`: a folder is an image folder, otherwise its extension decides
    /// (`.csv`, `.jsonl`, anything else is safetensors).
    pub fn of(path: &Path) -> Format {
        if path.is_dir() {
            return Format::ImageFolder;
        }
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("csv") => Format::Csv,
            Some("jsonl") => Format::Jsonl,
            _ => Format::Tensors,
        }
    }
}

impl Dataset {
    /// Row-major inputs already in memory, with their shape and labels.
    pub fn in_memory(
        path: PathBuf,
        inputs: Vec<f32>,
        sample_shape: Vec<usize>,
        labels: Vec<usize>,
    ) -> Dataset {
        Dataset {
            path,
            inputs: Samples::Memory(inputs),
            sample_shape,
            labels,
            classes: None,
            skipped: Vec::new(),
        }
    }

    /// Loads `path` with the default image options; see [`Dataset::open_with`].
    pub fn open(path: &Path, arch: &dyn Architecture) -> Result<Dataset> {
        Dataset::open_with(path, arch, &LoadOptions::default())
    }

    /// Loads `path` (any [`Format`]) and checks it against `arch`: input shape, labels in
    /// `0..num_classes`, and, for named classes, as many classes as the model's head.
    pub fn open_with(
        path: &Path,
        arch: &dyn Architecture,
        options: &LoadOptions,
    ) -> Result<Dataset> {
        Dataset::open_batched(path, arch, options, None)
    }

    /// [`Dataset::open_with`] for an evaluator that reads `batch_size` examples at a time:
    /// batches whose inputs would take more than [`batch_memory::check`] allows are refused,
    /// for image lists from the transform's size before any image is decoded.
    pub fn open_batched(
        path: &Path,
        arch: &dyn Architecture,
        options: &LoadOptions,
        batch_size: Option<usize>,
    ) -> Result<Dataset> {
        const SHRINK_IMAGES: &str = "a smaller --resize or --crop";
        let data = match Format::of(path) {
            Format::Tensors => Dataset::open_tensors(path)?,
            Format::ImageFolder | Format::Csv | Format::Jsonl => {
                let list = ImageList::open(path)?;
                // Every image is cropped to this: too small is known before any is decoded.
                if let Some((h, w)) = options.transform.fixed_size() {
                    check_size(path, arch, h, w)?;
                }
                if let (Some(batch), Some(((h, w), larger))) =
                    (batch_size, options.transform.least_size())
                {
                    let example = Example {
                        path,
                        bytes: images::transformed_bytes(h, w),
                        at_least: larger,
                        what: format!(
                            "images of {}3x{h}x{w}",
                            if larger { "at least " } else { "" }
                        ),
                        shrink: SHRINK_IMAGES,
                    };
                    batch_memory::check(batch, list.entries.len(), &example)?;
                }
                let loaded = images::load(&list, options)?;
                Dataset {
                    path: path.to_path_buf(),
                    inputs: loaded.samples,
                    sample_shape: loaded.sample_shape,
                    labels: loaded.labels,
                    classes: list.classes,
                    skipped: loaded.skipped,
                }
            }
        };
        data.check(arch)?;
        if let Some(batch) = batch_size {
            // What was decoded or read, whatever the transform said it would be.
            let dims: Vec<String> = data.sample_shape.iter().map(|d| d.to_string()).collect();
            let (what, shrink) = match Format::of(path) {
                Format::Tensors => (format!("inputs of {}", dims.join("x")), ""),
                _ => (format!("images of {}", dims.join("x")), SHRINK_IMAGES),
            };
            let example = Example {
                path,
                bytes: (data.sample_len() as u64).saturating_mul(4),
                at_least: false,
                what,
                shrink,
            };
            batch_memory::check(batch, data.len(), &example)?;
        }
        Ok(data)
    }

    /// Checks the inputs' shape and the labels against `arch`.
    fn check(&self, arch: &dyn Architecture) -> Result<()> {
        let bad = |reason: String| Error::Dataset {
            path: self.path.clone(),
            reason,
        };
        let expected = match arch.input() {
            Input::Image(shape) => shape,
            Input::Tokens(_) => {
                return Err(bad(format!(
                    "holds images or float inputs, but {} reads token ids; give it text data",
                    arch.describe()
                )))
            }
        };
        if let [c, h, w] = self.sample_shape[..] {
            if c == expected.channels {
                check_size(&self.path, arch, h, w)?;
            }
        }
        if !expected.accepts(&self.sample_shape) {
            let dims: Vec<String> = self.sample_shape.iter().map(|d| d.to_string()).collect();
            let what = match (Format::of(&self.path), expected.size) {
                (Format::Tensors, _) => {
                    format!("'inputs' has shape [{}, {}]", self.len(), dims.join(", "))
                }
                (_, size) => format!(
                    "the transformed images have shape [N, {}]{}",
                    dims.join(", "),
                    match size {
                        Some([h, w]) if h == w && expected.channels == 3 =>
                            format!(" (pass --crop {h})"),
                        _ => String::new(),
                    }
                ),
            };
            return Err(bad(format!(
                "{what}; {} expects {expected}",
                arch.describe(),
            )));
        }
        let Output::Classes(classes) = arch.output() else {
            return Err(bad(format!(
                "has class labels, but {} predicts tokens, not classes; give it text data",
                arch.describe()
            )));
        };
        if let Some(names) = &self.classes {
            if names.len() != classes {
                return Err(bad(format!(
                    "has {} classes ({}), but the model's head has {classes}; the data must have one class per output",
                    names.len(),
                    preview(names)
                )));
            }
        }
        if let Some((i, &label)) = self.labels.iter().enumerate().find(|(_, &l)| l >= classes) {
            return Err(bad(format!(
                "label {label} of input {i} is out of range; {} has classes 0..{}",
                arch.describe(),
                classes - 1
            )));
        }
        Ok(())
    }

    /// Numbers named classes as the model's own `label2id` (a Hugging Face `config.json`)
    /// does, when the data names exactly the model's classes. Sorted names are torchvision's
    /// convention (`ImageFolder`), but a model trained with classes in another order would
    /// otherwise be scored against the wrong labels without a word. Returns why nothing was
    /// renumbered when only some of the data's names are the model's: the labels are then
    /// ambiguous, and the caller warns.
    pub fn follow_label2id(&mut self, label2id: &BTreeMap<String, usize>) -> Option<String> {
        let names = self.classes.as_ref()?;
        let known: Vec<&String> = names.iter().filter(|n| label2id.contains_key(*n)).collect();
        let ids: BTreeSet<usize> = label2id.values().copied().collect();
        let permutation = ids.len() == names.len() && ids.iter().copied().eq(0..names.len());
        if known.len() == names.len() && label2id.len() == names.len() && permutation {
            let new: Vec<usize> = names.iter().map(|n| label2id[n]).collect();
            for label in &mut self.labels {
                *label = new[*label];
            }
            let mut renamed = names.clone();
            for (name, &id) in names.iter().zip(&new) {
                renamed[id] = name.clone();
            }
            self.classes = Some(renamed);
            return None;
        }
        if known.is_empty() {
            return None;
        }
        if known.len() == names.len() {
            return Some(format!(
                "{}: its class names are config.json's label2id's, but label2id doesn't number {} classes 0 to {} once each; classes are numbered in sorted order, as torchvision does, which may not be the model's; fix label2id",
                self.path.display(),
                names.len(),
                names.len() - 1
            ));
        }
        let unknown: Vec<String> = names
            .iter()
            .filter(|n| !label2id.contains_key(*n))
            .cloned()
            .collect();
        Some(format!(
            "{}: {} of its {} class names are in config.json's label2id, but not {}; classes are numbered in sorted order, as torchvision does, which may not be the model's; name the classes as label2id does",
            self.path.display(),
            known.len(),
            names.len(),
            preview(&unknown)
        ))
    }

    /// Reads a safetensors dataset of `inputs` and `labels`.
    fn open_tensors(path: &Path) -> Result<Dataset> {
        let file = Checkpoint::open(path)?;
        let bad = |reason: String| Error::Dataset {
            path: path.to_path_buf(),
            reason,
        };
        let inputs = file.tensor("inputs").ok_or_else(|| {
            bad("no 'inputs' tensor; a dataset holds 'inputs' (float [N, ...]) and 'labels' (integers [N])".into())
        })?;
        let labels = file.tensor("labels").ok_or_else(|| {
            bad("no 'labels' tensor; a dataset holds 'inputs' (float [N, ...]) and 'labels' (integers [N])".into())
        })?;
        if !inputs.info.dtype.is_averaged() {
            return Err(bad(format!(
                "'inputs' is {}; it must be a float tensor (F32, F16, BF16 or F64)",
                inputs.info.dtype
            )));
        }
        let Some(label_values) = labels.info.dtype.integers(labels.data) else {
            return Err(bad(format!(
                "'labels' is {}; it must be integers (I64, I32, ...): class indices from 0",
                labels.info.dtype
            )));
        };
        let shape: Vec<usize> = inputs.info.shape.iter().map(|&d| d as usize).collect();
        let Some(&n) = shape.first() else {
            return Err(bad("'inputs' is a scalar; it must be [N, ...]".into()));
        };
        if labels.info.shape != [n as u64] {
            return Err(bad(format!(
                "'labels' has shape {:?}; it must be [{n}], one label per input",
                labels.info.shape
            )));
        }
        if n == 0 {
            // Every score would be 0/0, and a greedy soup would be picked from no data.
            return Err(bad(
                "has no examples ('inputs' is [0, ...]); the split needs at least one".into(),
            ));
        }
        let mut values = vec![0f32; inputs.info.elements() as usize];
        f32::load(inputs.info.dtype, inputs.data, &mut values);
        // Refused, not warned about: one NaN or infinity makes every loss NaN, and candle's
        // ReLU and max-pool drop NaN where PyTorch propagates it, so the scores would look
        // plausible and mean nothing.
        let non_finite = values.iter().filter(|v| !v.is_finite()).count();
        if non_finite > 0 {
            let per = (values.len() / n).max(1);
            let first = values.iter().position(|v| !v.is_finite()).expect("counted") / per;
            return Err(bad(format!(
                "'inputs' holds {non_finite} NaN or infinite value(s) as f32 (the first in input {first}); a model's scores on them mean nothing: fix the data"
            )));
        }
        let labels = label_values
            .into_iter()
            .enumerate()
            .map(|(i, label)| {
                usize::try_from(label).map_err(|_| {
                    bad(format!("label {label} of input {i} is out of range; labels are class indices from 0"))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Dataset::in_memory(
            path.to_path_buf(),
            values,
            shape[1..].to_vec(),
            labels,
        ))
    }

    /// The inputs of examples `start..end`, row-major.
    pub fn batch(&self, start: usize, end: usize) -> Result<Cow<'_, [f32]>> {
        let per = self.sample_len();
        match &self.inputs {
            Samples::Memory(v) => Ok(Cow::Borrowed(&v[start * per..end * per])),
            Samples::Cache(file) => Ok(Cow::Owned(file.read(start * per, (end - start) * per)?)),
        }
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the split has no examples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Values per example.
    pub fn sample_len(&self) -> usize {
        self.sample_shape.iter().product()
    }
}

/// Refuses inputs of `h`x`w` that a fully convolutional `arch`'s downsampling layers leave
/// nothing of, where candle would fail mid-forward with an internal error, or panic.
fn check_size(path: &Path, arch: &dyn Architecture, h: usize, w: usize) -> Result<()> {
    let Input::Image(InputShape {
        size: None, min, ..
    }) = arch.input()
    else {
        return Ok(());
    };
    if h.min(w) >= min {
        return Ok(());
    }
    let fix = match Format::of(path) {
        Format::Tensors => format!("give 'inputs' of at least {min}x{min}"),
        _ => format!("pass --resize {min} --crop {min} or larger"),
    };
    Err(Error::Dataset {
        path: path.to_path_buf(),
        reason: format!(
            "inputs of {h}x{w} are too small for {}, whose downsampling layers need at least {min}x{min}; {fix}",
            arch.describe()
        ),
    })
}

/// The first few class names, for messages.
fn preview(names: &[String]) -> String {
    let mut shown: Vec<&str> = names.iter().take(5).map(String::as_str).collect();
    if names.len() > 5 {
        shown.push("...");
    }
    shown.join(", ")
}

/// The largest text dataset or image list read whole: bounded, so that a device given as a
/// dataset (`/dev/zero`) is an error, not the memory filled.
const MAX_TEXT_BYTES: u64 = 16 << 30;

/// The largest model configuration read (`config.json`, `preprocessor_config.json`), as
/// soup-merge caps a config it copies: the largest real ones (a label map of 21 000 classes)
/// are near 1 MiB, and a hostile model directory's 20 GB `config.json` must be an error, not
/// 20 GB of memory.
const MAX_CONFIG_BYTES: u64 = 8 << 20;

/// Reads a file whole: a regular file only (a FIFO is refused without blocking), of at most
/// `cap` bytes. `what` names it in messages.
pub(crate) fn read_regular(path: &Path, cap: u64, what: &str) -> Result<Vec<u8>> {
    model_soup::format::small_file::read(path, cap, what).map_err(|e| match e {
        model_soup::Error::Header { reason, .. } => Error::Dataset {
            path: path.to_path_buf(),
            reason,
        },
        model_soup::Error::Io { cause, .. } => Error::Io {
            path: path.to_path_buf(),
            source: cause,
        },
        other => Error::Dataset {
            path: path.to_path_buf(),
            reason: other.to_string(),
        },
    })
}

/// Whether a model directory's optional file (`what`, such as its tokenizer.json) is there:
/// `false` when nothing is at `path`, an error when something is but it is no regular file. A
/// FIFO or a device taken for missing was misreported, and read it would block or never end.
pub fn present(path: &Path, what: &str) -> Result<bool> {
    match std::fs::metadata(path) {
        Err(_) => Ok(false),
        Ok(m) if m.is_file() => Ok(true),
        Ok(m) => Err(not_a_file(
            path,
            &m,
            &format!("the model's {what} must be a file"),
        )),
    }
}

/// The refusal of what is at `path` (`meta`, links followed) where a regular file must be,
/// ending with `fix`: one wording for every file soup-eval finds by its name rather than
/// being given, so that none is taken for missing or opened (a FIFO would block).
pub(crate) fn not_a_file(path: &Path, meta: &std::fs::Metadata, fix: &str) -> Error {
    Error::Dataset {
        path: path.to_path_buf(),
        reason: format!(
            "is {}, not a regular file; {fix}",
            if meta.is_dir() {
                "a directory"
            } else {
                "a FIFO, socket or device"
            }
        ),
    }
}

/// Reads a text dataset or list whole (see [`read_regular`]) as UTF-8, without a leading
/// byte-order mark: Excel's "CSV UTF-8" and Windows editors write one, and left in it becomes
/// part of the first field, so a `path,label` header is taken for an image and a first JSON
/// line does not parse.
pub fn read_text(path: &Path, what: &str) -> Result<String> {
    text_of(path, read_regular(path, MAX_TEXT_BYTES, what)?)
}

/// `config.json`'s `label2id`: class names to indices, entries of another kind left out. An
/// index written as a string (`"cat": "1"`, as some exporters write it, which transformers
/// keeps as it is, its `id2label` saying `1: "cat"`) is that index.
pub fn label2id(config: &serde_json::Value) -> Option<BTreeMap<String, usize>> {
    let map = config.get("label2id")?.as_object()?;
    Some(
        map.iter()
            .filter_map(|(k, v)| {
                let id = match v {
                    serde_json::Value::String(s) => s.parse::<u64>().ok()?,
                    other => other.as_u64()?,
                };
                Some((k.clone(), usize::try_from(id).ok()?))
            })
            .collect(),
    )
}

/// Reads a model directory's configuration (`what`: "config", say) as [`read_text`] reads a
/// dataset, but of at most [`MAX_CONFIG_BYTES`].
pub fn read_config(path: &Path, what: &str) -> Result<String> {
    text_of(path, read_regular(path, MAX_CONFIG_BYTES, what)?)
}

/// `bytes` read from `path` as UTF-8 text, without a leading byte-order mark.
fn text_of(path: &Path, bytes: Vec<u8>) -> Result<String> {
    let mut text = String::from_utf8(bytes).map_err(|e| Error::Dataset {
        path: path.to_path_buf(),
        reason: format!(
            "is not UTF-8 text (invalid bytes at offset {}); convert it to UTF-8",
            e.utf8_error().valid_up_to()
        ),
    })?;
    if text.starts_with('\u{feff}') {
        text.drain(..'\u{feff}'.len_utf8());
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(names: &[&str], labels: Vec<usize>) -> Dataset {
        let n = labels.len();
        let mut data = Dataset::in_memory(PathBuf::from("val"), vec![0.0; n], vec![1], labels);
        data.classes = Some(names.iter().map(|s| s.to_string()).collect());
        data
    }

    fn map(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    /// Indices written as strings were left out, so a model numbering its classes otherwise
    /// than sorted was scored against sorted labels, without a warning.
    #[test]
    fn label2id_reads_indices_written_as_strings() {
        let config = serde_json::json!({"label2id": {"dog": "0", "eel": 1, "cat": "2", "fox": "x", "gnu": -1}});
        let read = label2id(&config).unwrap();
        assert_eq!(read, map(&[("dog", 0), ("eel", 1), ("cat", 2)]));
        let mut data = named(&["cat", "dog", "eel"], vec![0, 1, 2]);
        assert_eq!(data.follow_label2id(&read), None);
        assert_eq!(data.labels, [2, 0, 1]);
    }

    #[test]
    fn classes_follow_label2id_only_when_it_names_them_all_once() {
        // Sorted: cat, dog, eel; the model numbers them dog 0, eel 1, cat 2.
        let label2id = map(&[("dog", 0), ("eel", 1), ("cat", 2)]);
        let mut data = named(&["cat", "dog", "eel"], vec![0, 1, 2, 0]);
        assert_eq!(data.follow_label2id(&label2id), None);
        assert_eq!(data.labels, [2, 0, 1, 2]);
        assert_eq!(data.classes.as_deref().unwrap(), ["dog", "eel", "cat"]);
        // Names label2id doesn't have at all (ImageNet's synsets against its readable
        // names): sorted order, silently.
        let mut data = named(&["n01", "n02", "n03"], vec![0, 1, 2]);
        assert_eq!(data.follow_label2id(&label2id), None);
        assert_eq!(data.labels, [0, 1, 2]);
        // Some but not all: sorted order, and why.
        let mut data = named(&["cat", "dog", "fox"], vec![0, 1, 2]);
        let why = data.follow_label2id(&label2id).unwrap();
        assert!(
            why.contains("2 of its 3 class names") && why.contains("not fox"),
            "{why}"
        );
        assert_eq!(data.labels, [0, 1, 2]);
        // All named, but label2id numbers two classes alike.
        let twice = map(&[("dog", 0), ("eel", 0), ("cat", 2)]);
        let mut data = named(&["cat", "dog", "eel"], vec![0, 1, 2]);
        let why = data.follow_label2id(&twice).unwrap();
        assert!(why.contains("0 to 2 once each"), "{why}");
        assert_eq!(data.labels, [0, 1, 2]);
    }
}
