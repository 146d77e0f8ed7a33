//! Image datasets: an image folder `root/<class>/<image>` or a CSV/JSONL list of `path,label`, decoded and transformed in parallel into f32 inputs, in memory or in a cache file.

use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::{BufRead, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use image::ImageDecoder;
use rayon::prelude::*;

use super::error::{Error, Result};
use super::transform::{Given, Resize, Transform};

/// File extensions an image folder's images have, as torchvision's `ImageFolder` lists them
/// (compared case-insensitively, with the dot, with the end of the file name). Other files are ignored. Every listed format decodes, as Pillow
/// decodes it, but palette TIFFs: a decode error (or skipped with `--skip-bad-images`).
pub const IMAGE_EXTENSIONS: &[&str] = &[
    "jpg", "jpeg", "png", "ppm", "bmp", "pgm", "tif", "tiff", "webp",
];

/// Images and their labels, before decoding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageList {
    /// Each image's path and class index, in dataset order.
    pub entries: Vec<(PathBuf, usize)>,
    /// Class names in index order, when the source names them (folders, or string labels);
    /// `None` for integer labels.
    pub classes: Option<Vec<String>>,
}

impl ImageList {
    /// Lists `path`: a folder of class folders, a `.csv` or a `.jsonl` list.
    pub fn open(path: &Path) -> Result<ImageList> {
        if path.is_dir() {
            return list_folder(path);
        }
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        let text = crate::dataset::read_text(path, "image list")?;
        let base = path.parent().unwrap_or(Path::new("."));
        let rows = match ext.as_deref() {
            Some("csv") => parse_csv(path, &text)?,
            Some("jsonl") => parse_jsonl(path, &text)?,
            _ => unreachable!("the caller dispatches on the extension"),
        };
        if rows.is_empty() {
            return Err(bad(path, "lists no images"));
        }
        labelled(path, base, rows)
    }
}

fn bad(path: &Path, reason: impl Into<String>) -> Error {
    Error::Dataset {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// `root/<class>/**/<image>`: classes are the sub-folders sorted by name, images each class
/// folder's files whose name ends with an image extension, as torchvision's `ImageFolder`
/// lists them: its `sorted(os.walk(class))` takes the folders in the order of their paths as
/// strings (`cat/sub-x` before `cat/sub/deep`), each folder's files sorted by name.
fn list_folder(root: &Path) -> Result<ImageList> {
    let io = |p: &Path, e: std::io::Error| Error::Io {
        path: p.to_path_buf(),
        source: e,
    };
    let mut classes = Vec::new();
    for entry in std::fs::read_dir(root).map_err(|e| io(root, e))? {
        let entry = entry.map_err(|e| io(root, e))?;
        if entry.path().is_dir() {
            let name = entry.file_name().into_string().map_err(|n| {
                bad(
                    root,
                    format!("class folder {n:?} is not valid UTF-8; rename it"),
                )
            })?;
            classes.push(name);
        }
    }
    classes.sort();
    if classes.is_empty() {
        return Err(bad(
            root,
            "has no class folders; an image folder is ROOT/<class>/<image>",
        ));
    }
    let mut entries = Vec::new();
    let mut scanned = Scanned::default();
    scanned.first_visit(root)?;
    for (label, class) in classes.iter().enumerate() {
        let dir = root.join(class);
        let before = entries.len();
        let mut folders = Vec::new();
        walk(&dir, &mut scanned, &mut folders)?;
        folders.sort_by(|a, b| {
            a.0.as_os_str()
                .as_encoded_bytes()
                .cmp(b.0.as_os_str().as_encoded_bytes())
        });
        for (_, images) in folders {
            entries.extend(images.into_iter().map(|p| (p, label)));
        }
        if entries.len() == before {
            return Err(bad(
                &dir,
                format!(
                    "class '{class}' has no images ({}); remove the folder or add images",
                    IMAGE_EXTENSIONS.join(", ")
                ),
            ));
        }
    }
    Ok(ImageList {
        entries,
        classes: Some(classes),
    })
}

/// The folders an image-folder scan has visited, by (device, inode), with the path each was
/// first reached by. Links to folders are followed, as `ImageFolder` does; a folder reached a
/// second time (a link loop, or two links to one folder) would count its images again, or
/// never end, so it is refused.
#[derive(Default)]
struct Scanned {
    folders: HashMap<(u64, u64), PathBuf>,
}

impl Scanned {
    /// Records `dir`, or refuses it, naming the link, if it was visited before.
    fn first_visit(&mut self, dir: &Path) -> Result<()> {
        let meta = std::fs::metadata(dir).map_err(|e| Error::Io {
            path: dir.to_path_buf(),
            source: e,
        })?;
        match self.folders.entry((meta.dev(), meta.ino())) {
            Entry::Vacant(v) => {
                v.insert(dir.to_path_buf());
                Ok(())
            }
            Entry::Occupied(first) => Err(bad(
                dir,
                format!(
                    "is the folder {} again (a symbolic link to a folder already scanned, or a loop); its images would be counted twice: remove the link",
                    first.get().display()
                ),
            )),
        }
    }
}

/// Whether `path`'s file name ends with `.` and an image extension, in any case, as
/// `ImageFolder`'s `has_file_allowed_extension` tests it (so a file named `.png` is one).
fn is_image(path: &Path) -> bool {
    let name = path
        .file_name()
        .map(|n| n.as_encoded_bytes().to_ascii_lowercase())
        .unwrap_or_default();
    IMAGE_EXTENSIONS.iter().any(|e| {
        name.len() > e.len()
            && name.ends_with(e.as_bytes())
            && name[name.len() - e.len() - 1] == b'.'
    })
}

/// Adds `dir` and every folder under it to `folders`, each with its files that [`is_image`],
/// sorted by name (the folders in the order they are met; the caller sorts them). A folder
/// met twice is refused (see [`Scanned`]).
fn walk(
    dir: &Path,
    scanned: &mut Scanned,
    folders: &mut Vec<(PathBuf, Vec<PathBuf>)>,
) -> Result<()> {
    scanned.first_visit(dir)?;
    let io = |e: std::io::Error| Error::Io {
        path: dir.to_path_buf(),
        source: e,
    };
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .map(|e| e.map(|e| e.path()).map_err(io))
        .collect::<Result<_>>()?;
    names.sort();
    // Links are followed, as ImageFolder follows them.
    let mut images = Vec::new();
    let mut subfolders = Vec::new();
    for p in &names {
        match std::fs::metadata(p) {
            Ok(m) if m.is_dir() => subfolders.push(p),
            Ok(m) if m.is_file() && is_image(p) => images.push(p.clone()),
            // Something named as an image that is no file: ImageFolder would list it and fail
            // to load it, and skipped it shrank the split unsaid. Refused from its type, never
            // opened: a FIFO would block the run.
            Ok(m) if is_image(p) => {
                return Err(crate::dataset::not_a_file(
                    p,
                    &m,
                    "an image folder's images must be files: remove it, or give it a name without an image extension",
                ))
            }
            Err(e) if is_image(p) => {
                return Err(bad(
                    p,
                    format!("cannot be read ({e}), so it is no image file (a symbolic link to nothing?): remove it or fix the link"),
                ))
            }
            // Anything else without an image's name is ignored, as other files are.
            _ => {}
        }
    }
    folders.push((dir.to_path_buf(), images));
    for p in subfolders {
        walk(p, scanned, folders)?;
    }
    Ok(())
}

/// One row of a list: the image path as written, and its label as written.
struct Row {
    line: usize,
    path: String,
    label: Label,
}

enum Label {
    Index(u64),
    Name(String),
}

/// Resolves rows into an [`ImageList`]: integer labels are class indices; string labels are
/// class names, numbered in sorted order. A list must not mix the two.
fn labelled(list: &Path, base: &Path, rows: Vec<Row>) -> Result<ImageList> {
    let names: BTreeSet<&str> = rows
        .iter()
        .filter_map(|r| match &r.label {
            Label::Name(n) => Some(n.as_str()),
            Label::Index(_) => None,
        })
        .collect();
    let classes: Option<Vec<String>> = if names.is_empty() {
        None
    } else if rows.iter().all(|r| matches!(r.label, Label::Name(_))) {
        Some(names.iter().map(|s| s.to_string()).collect())
    } else {
        let row = rows
            .iter()
            .find(|r| matches!(r.label, Label::Index(_)))
            .expect("mixed");
        return Err(bad(
            list,
            format!(
                "line {}: label is a number, but other lines name classes; use one kind of label",
                row.line
            ),
        ));
    };
    let entries = rows
        .iter()
        .map(|r| {
            let label = match (&r.label, &classes) {
                (Label::Index(i), _) => usize::try_from(*i)
                    .map_err(|_| bad(list, format!("line {}: label {i} is too large", r.line)))?,
                (Label::Name(n), Some(c)) => c.binary_search(n).expect("listed"),
                (Label::Name(_), None) => unreachable!("names give classes"),
            };
            let p = Path::new(&r.path);
            let path = if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            };
            Ok((path, label))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(ImageList { entries, classes })
}

fn label_of(text: &str) -> Label {
    match text.parse::<u64>() {
        Ok(i) => Label::Index(i),
        Err(_) => Label::Name(text.to_string()),
    }
}

/// `path,label` lines, an optional `path,label` header, RFC 4180 quoting (`"a,b.png",cat`).
fn parse_csv(file: &Path, text: &str) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let fields = split_csv(line)
            .ok_or_else(|| bad(file, format!("line {}: unbalanced quotes", i + 1)))?;
        if fields.len() != 2 {
            return Err(bad(
                file,
                format!(
                    "line {}: has {} fields; each line is path,label (quote a path with commas)",
                    i + 1,
                    fields.len()
                ),
            ));
        }
        if rows.is_empty() && i == first_line(text) && fields[0] == "path" && fields[1] == "label" {
            continue;
        }
        if fields[0].is_empty() || fields[1].is_empty() {
            return Err(bad(file, format!("line {}: empty path or label", i + 1)));
        }
        rows.push(Row {
            line: i + 1,
            path: fields[0].clone(),
            label: label_of(&fields[1]),
        });
    }
    Ok(rows)
}

fn first_line(text: &str) -> usize {
    text.lines().position(|l| !l.trim().is_empty()).unwrap_or(0)
}

/// Splits one CSV line; `None` for unbalanced quotes.
fn split_csv(line: &str) -> Option<Vec<String>> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    let mut at_start = true;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (false, '"') if at_start => {
                quoted = true;
                at_start = false;
            }
            (true, '"') => {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    field.push('"');
                } else {
                    quoted = false;
                }
            }
            (false, ',') => {
                fields.push(std::mem::take(&mut field));
                at_start = true;
            }
            (_, c) => {
                field.push(c);
                at_start = false;
            }
        }
    }
    if quoted {
        return None;
    }
    fields.push(field);
    Some(fields)
}

/// One JSON object per line: `{"path": "...", "label": 3}` or `"label": "cat"`.
fn parse_jsonl(file: &Path, text: &str) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = |reason: &str| bad(file, format!("line {}: {reason}", i + 1));
        let value: serde_json::Value =
            serde_json::from_str(line).map_err(|e| at(&format!("not JSON ({e})")))?;
        let path = value
            .get("path")
            .and_then(|p| p.as_str())
            .filter(|p| !p.is_empty())
            .ok_or_else(|| at("needs a \"path\" string"))?;
        let label = match value.get("label") {
            Some(serde_json::Value::Number(n)) => {
                // A whole float (`2.0`, as pandas writes an integer column with gaps) is that
                // index, as in text data.
                let whole = n
                    .as_f64()
                    .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < u64::MAX as f64)
                    .map(|f| f as u64);
                Label::Index(n.as_u64().or(whole).ok_or_else(|| {
                    at("\"label\" must be a non-negative integer or a class name")
                })?)
            }
            Some(serde_json::Value::String(s)) if !s.is_empty() => label_of(s),
            _ => return Err(at("needs a \"label\": a class index or a class name")),
        };
        rows.push(Row {
            line: i + 1,
            path: path.to_string(),
            label,
        });
    }
    Ok(rows)
}

/// How images are turned into inputs.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadOptions {
    /// The transform.
    pub transform: Transform,
    /// What the command line gave of the transform, when the rest should come from the
    /// model's `preprocessor_config.json` (see [`LoadOptions::for_model`]); `None` keeps
    /// `transform` whatever the model.
    pub given: Option<Given>,
    /// A split whose f32 inputs take more bytes than this is written to a cache file and
    /// read back one batch at a time.
    pub memory_limit: u64,
    /// Where cache files go (default: the system's temporary folder).
    pub cache_dir: Option<PathBuf>,
    /// Skip images that cannot be decoded, with a counted warning, instead of stopping.
    pub skip_bad_images: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            transform: Transform::default(),
            given: None,
            memory_limit: 4 << 30,
            cache_dir: None,
            skip_bad_images: false,
        }
    }
}

impl LoadOptions {
    /// The options for a run on `models`: with [`LoadOptions::given`], the transform the
    /// first model directory's `preprocessor_config.json` describes, with the given parts
    /// replaced, and the file it came from; else these options as they are. Every
    /// ingredient is scored on the same inputs, so directories whose files describe other
    /// transforms are refused, naming both.
    pub fn for_models(&self, models: &[PathBuf]) -> Result<(LoadOptions, Option<PathBuf>)> {
        let Some(given) = &self.given else {
            return Ok((self.clone(), None));
        };
        if given.complete() {
            return Ok((self.clone(), None));
        }
        let mut first: Option<(Transform, PathBuf)> = None;
        for model in models {
            let Some(processor) = crate::preprocessor::read(model)? else {
                continue;
            };
            let file = model.join(crate::preprocessor::FILE);
            match &first {
                None => first = Some((processor, file)),
                Some((t, f)) if given.over(t) != given.over(&processor) => {
                    return Err(Error::Dataset {
                        path: file,
                        reason: format!(
                            "describes other image preprocessing than {}, and every ingredient is scored on the same inputs; make the files agree, or pass --resize, --interpolation, --crop, --mean and --std",
                            f.display()
                        ),
                    })
                }
                Some(_) => {}
            }
        }
        let Some((processor, file)) = first else {
            return Ok((self.clone(), None));
        };
        let options = LoadOptions {
            transform: given.over(&processor),
            ..self.clone()
        };
        Ok((options, Some(file)))
    }
}

/// The most memory one transformed image may take as f32 values (3 x H x W x 4 bytes), and
/// the resized 8-bit image before its crop (3 x H x W bytes): as [`MAX_DECODE_BYTES`] bounds a
/// decoded one. 1 GiB passes 9000x9000, far above what image models are evaluated at; a
/// 16384-pixel size, within the flags' range, would make every image 3 GiB. The images of one
/// parallel round together stay within it too (see [`round_len`]), so the transformed images
/// in flight take at most this, whatever `--threads`.
pub const MAX_TRANSFORMED_BYTES: u64 = 1 << 30;

/// Bytes of the f32 values of a transformed `h` x `w` image.
pub(crate) fn transformed_bytes(h: usize, w: usize) -> u64 {
    12u64.saturating_mul(h as u64).saturating_mul(w as u64)
}

/// `bytes` in GiB or MiB, for messages.
pub(crate) fn size_text(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
    }
}

/// Images per parallel round for outputs of `bytes` each: [`ROUND`], fewer for large images,
/// so that a round's transformed images take at most [`MAX_TRANSFORMED_BYTES`] (at least one).
fn round_len(bytes: u64) -> usize {
    (MAX_TRANSFORMED_BYTES / bytes.max(1)).clamp(1, ROUND as u64) as usize
}

impl LoadOptions {
    /// Checks the transform's output size before any image is read: one transformed image
    /// within [`MAX_TRANSFORMED_BYTES`] (for a short-side resize without a crop, the square it
    /// makes at least), and, for a model that reads one size only (`expected`, a ViT's
    /// `image_size`), a size from the model's `preprocessor_config.json` (`source`) equal to
    /// it. A size given by a flag is a usage error naming the flag; one from the file names the
    /// file. `model` describes the architecture for messages.
    pub fn check_size(
        &self,
        source: Option<&Path>,
        expected: Option<[usize; 2]>,
        model: &str,
    ) -> Result<()> {
        let t = &self.transform;
        let given = self.given.clone().unwrap_or_default();
        // The size every image gets (or at least gets), and whether a flag set it.
        let (size, by_flag, flags, at_least) = match (t.crop, t.resize) {
            (Some(c), _) => ((c, c), given.crop.is_some(), format!("--crop {c}"), ""),
            (None, Some(Resize::Exact(h, w))) => (
                (h, w),
                given.resize.is_some(),
                format!("--resize {h}x{w} --crop none"),
                "",
            ),
            (None, Some(Resize::ShortSide(n))) => (
                (n, n),
                given.resize.is_some(),
                format!("--resize {n} --crop none"),
                " or more",
            ),
            (None, None) => return Ok(()),
        };
        let (h, w) = size;
        let bytes = transformed_bytes(h, w);
        let refuse = |reason: String| -> Result<()> {
            match source.filter(|_| !by_flag) {
                Some(file) => Err(Error::Dataset {
                    path: file.to_path_buf(),
                    reason,
                }),
                None => Err(Error::Format(model_soup::Error::Usage(format!(
                    "{flags}: {reason}"
                )))),
            }
        };
        if bytes > MAX_TRANSFORMED_BYTES {
            let what = if source.is_some() && !by_flag {
                "its size".to_string()
            } else {
                "it".to_string()
            };
            return refuse(format!(
                "{what} makes every image {h}x{w}{at_least}, {} of f32 values{at_least}, over the {} one transformed image may take; pass a smaller --resize or --crop (the model's own input size)",
                size_text(bytes),
                size_text(MAX_TRANSFORMED_BYTES)
            ));
        }
        if let (Some([eh, ew]), Some(file), false) = (expected, source, by_flag) {
            if t.fixed_size().is_some_and(|s| s != (eh, ew)) {
                return Err(Error::Dataset {
                    path: file.to_path_buf(),
                    reason: format!(
                        "makes images {h}x{w}, but {model} reads {eh}x{ew} only (config.json's image_size); make the two files agree, or pass --resize {eh}x{ew} --crop none"
                    ),
                });
            }
        }
        Ok(())
    }
}

/// Decoded, transformed inputs: in memory, or in a cache file.
pub enum Samples {
    /// Row-major f32 values.
    Memory(Vec<f32>),
    /// A file of row-major little-endian f32 values.
    Cache(CacheFile),
}

impl From<Vec<f32>> for Samples {
    fn from(values: Vec<f32>) -> Self {
        Samples::Memory(values)
    }
}

/// Preprocessed inputs on disk, removed when dropped (on Unix, unlinked as soon as it is
/// created, so that not even a killed process leaves it behind).
pub struct CacheFile {
    file: Mutex<File>,
    path: PathBuf,
    #[cfg(not(unix))]
    remove: bool,
}

impl CacheFile {
    fn create(dir: &Path) -> Result<CacheFile> {
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dir.join(format!(".soup-eval-cache-{}-{n}.f32", std::process::id()));
        let io = |e| Error::Io {
            path: path.clone(),
            source: e,
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io)?;
        #[cfg(unix)]
        std::fs::remove_file(&path).map_err(io)?;
        Ok(CacheFile {
            file: Mutex::new(file),
            path,
            #[cfg(not(unix))]
            remove: true,
        })
    }

    /// Reads `count` f32 values starting at value `start`.
    pub fn read(&self, start: usize, count: usize) -> Result<Vec<f32>> {
        let mut bytes = vec![0u8; count * 4];
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        file.seek(SeekFrom::Start(start as u64 * 4))
            .and_then(|_| file.read_exact(&mut bytes))
            .map_err(|e| Error::Io {
                path: self.path.clone(),
                source: e,
            })?;
        Ok(bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
            .collect())
    }
}

#[cfg(not(unix))]
impl Drop for CacheFile {
    fn drop(&mut self) {
        if self.remove {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Decoded images: inputs, their shape, labels, and the images skipped with their reasons.
pub struct Loaded {
    /// The transformed inputs.
    pub samples: Samples,
    /// The shape of one input, [3, H, W].
    pub sample_shape: Vec<usize>,
    /// The label of each input.
    pub labels: Vec<usize>,
    /// Images that could not be decoded, with why (only with `skip_bad_images`).
    pub skipped: Vec<(PathBuf, String)>,
}

/// One transformed image: its shape [3, H, W] and its values.
type Decoded = (Vec<usize>, Vec<f32>);

/// Images decoded and transformed per parallel round; bounds the memory of one round.
const ROUND: usize = 64;

/// Decodes and transforms every image of `list`, `ROUND` at a time on rayon's threads, in list
/// order (so the result does not depend on the thread count).
pub fn load(list: &ImageList, options: &LoadOptions) -> Result<Loaded> {
    let transform = &options.transform;
    let mut shape: Option<Vec<usize>> = None;
    let mut memory: Vec<f32> = Vec::new();
    let mut cache: Option<(CacheFile, BufWriter<File>)> = None;
    let mut labels = Vec::with_capacity(list.entries.len());
    let mut skipped = Vec::new();
    // A short-side resize without a crop makes each image at least this big.
    let smallest = transform
        .least_size()
        .map_or(0, |((h, w), _)| transformed_bytes(h, w));
    for round in list.entries.chunks(round_len(smallest)) {
        let decoded: Vec<std::result::Result<Decoded, String>> = round
            .par_iter()
            .map(|(path, _)| {
                let image = decode(path)?;
                let (ih, iw) = (image.height() as usize, image.width() as usize);
                let (rh, rw) = transform.resized(ih, iw);
                let (h, w) = transform.output_size(ih, iw);
                // Known from the image's size alone: refused before either is allocated.
                let bytes = transformed_bytes(h, w).max(transformed_bytes(rh, rw) / 4);
                if bytes > MAX_TRANSFORMED_BYTES {
                    return Err(format!(
                        "its {ih}x{iw} pixels become {h}x{w} (resized to {rh}x{rw}) after the transform, {} in memory, over the {} one transformed image may take; pass --crop N, or a smaller --resize",
                        size_text(bytes),
                        size_text(MAX_TRANSFORMED_BYTES)
                    ));
                }
                let mut out = vec![0f32; 3 * h * w];
                transform.apply(&image, &mut out);
                Ok((vec![3, h, w], out))
            })
            .collect();
        for ((path, label), result) in round.iter().zip(decoded) {
            let (s, values) = match result {
                Ok(v) => v,
                Err(reason) if options.skip_bad_images => {
                    skipped.push((path.clone(), reason));
                    continue;
                }
                Err(reason) => {
                    return Err(bad(
                        path,
                        format!(
                            "{reason}; pass --skip-bad-images to skip such images with a warning"
                        ),
                    ))
                }
            };
            match &shape {
                None => {
                    let bytes = (list.entries.len() as u64)
                        .saturating_mul(values.len() as u64)
                        .saturating_mul(4);
                    if bytes > options.memory_limit {
                        let dir = options
                            .cache_dir
                            .clone()
                            .unwrap_or_else(std::env::temp_dir);
                        let file = CacheFile::create(&dir)?;
                        let writer = file
                            .file
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .try_clone()
                            .map_err(|e| Error::Io {
                                path: file.path.clone(),
                                source: e,
                            })?;
                        cache = Some((file, BufWriter::with_capacity(1 << 20, writer)));
                    }
                    shape = Some(s);
                }
                Some(first) if *first != s => {
                    return Err(bad(
                        path,
                        format!(
                            "gives an input of shape {s:?} after the transform, unlike the {first:?} of the images before it; pass --crop N so that every image has one size"
                        ),
                    ))
                }
                Some(_) => {}
            }
            match &mut cache {
                Some((file, writer)) => {
                    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
                    writer.write_all(&bytes).map_err(|e| Error::Io {
                        path: file.path.clone(),
                        source: e,
                    })?;
                }
                None => memory.extend_from_slice(&values),
            }
            labels.push(*label);
        }
    }
    let Some(sample_shape) = shape else {
        return Err(Error::Dataset {
            path: list
                .entries
                .first()
                .map_or_else(PathBuf::new, |e| e.0.clone()),
            reason: format!(
                "none of the {} images could be decoded (first: {})",
                list.entries.len(),
                skipped.first().map_or("none", |s| s.1.as_str())
            ),
        });
    };
    let samples = match cache {
        Some((file, mut writer)) => {
            writer.flush().map_err(|e| Error::Io {
                path: file.path.clone(),
                source: e,
            })?;
            Samples::Cache(file)
        }
        None => Samples::Memory(memory),
    };
    Ok(Loaded {
        samples,
        sample_shape,
        labels,
        skipped,
    })
}

/// The widest and tallest image decoded, in pixels. Real datasets are far below it (ImageNet
/// photographs are a few hundred pixels a side, satellite tiles a few thousand); a PNG of
/// zeros a few hundred KB long can claim 20000x20000.
const MAX_SIDE: u32 = 16384;

/// The most memory one image may take while it is decoded: the decoder's buffer plus the
/// 8-bit RGB copy made from it. Images decode on every thread at once, so this times
/// `--threads` bounds the decoding memory. 1 GiB passes a 16384x16384 grey image and a
/// 16000x9000 RGBA one; `image`'s own default (512 MiB) counts the decoder's buffer only.
const MAX_DECODE_BYTES: u64 = 1 << 30;

/// Decodes one image to 8-bit RGB (grey is replicated, alpha dropped, as PIL's
/// `convert("RGB")` does). An image larger than [`MAX_SIDE`] or [`MAX_DECODE_BYTES`] is refused
/// from its header, before any pixel is decoded.
fn decode(path: &Path) -> std::result::Result<image::RgbImage, String> {
    // A regular file only: a FIFO in the list would block the whole evaluation.
    let file =
        model_soup::format::small_file::open_regular(path, "image").map_err(|e| match e {
            model_soup::Error::Header { reason, .. } => reason,
            other => format!("cannot open: {other}"),
        })?;
    let mut file = std::io::BufReader::new(file);
    let grey16 = png_is_grey16(&mut file).map_err(|e| format!("cannot read: {e}"))?;
    // zune-jpeg decodes a cut-short JPEG without an error, filling in what is missing; Pillow
    // refuses it ("image file is truncated"), so ImageFolder never scores it.
    if !jpeg_reaches_its_end(&mut file).map_err(|e| format!("cannot read: {e}"))? {
        return Err("is truncated: its JPEG data ends before the end-of-image marker, so part of the image is missing (Pillow refuses it too); replace the file".into());
    }
    let mut reader = image::ImageReader::new(file)
        .with_guessed_format()
        .map_err(|e| format!("cannot read: {e}"))?;
    let cannot = |e: image::ImageError| format!("cannot decode the image: {e}");
    // The PNG decoder takes its limits when it is made, for the chunks it reads before the
    // pixels; the size limits come after the header, so that the refusal can name the size.
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits.clone());
    let mut decoder = reader.into_decoder().map_err(cannot)?;
    let (w, h) = decoder.dimensions();
    let copy = match decoder.color_type() {
        image::ColorType::Rgb8 => 0,
        _ => 3 * u64::from(w) * u64::from(h),
    };
    let bytes = decoder.total_bytes().saturating_add(copy);
    if w > MAX_SIDE || h > MAX_SIDE || bytes > MAX_DECODE_BYTES {
        return Err(format!(
            "is {w}x{h} pixels, which takes {} MiB to decode; soup-eval decodes images of at most {MAX_SIDE} pixels a side and {} MiB (so that a small file can't fill the memory); shrink the image",
            bytes.div_ceil(1 << 20),
            MAX_DECODE_BYTES >> 20
        ));
    }
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.reserve(bytes).map_err(cannot)?;
    decoder.set_limits(limits).map_err(cannot)?;
    let image = image::DynamicImage::from_decoder(decoder).map_err(cannot)?;
    Ok(rgb8_as_pillow(image, grey16))
}

/// Whether `file` is a PNG of 16-bit grey (colour type 0), read from its header and rewound.
/// `image` gives one with a tRNS chunk as grey with alpha, like a grey-with-alpha PNG, but
/// Pillow reads it as mode `I;16` like any 16-bit grey PNG (clipped at 255 by `convert`).
fn png_is_grey16(file: &mut (impl Read + Seek)) -> std::io::Result<bool> {
    let mut header = [0u8; 26];
    let mut len = 0;
    while len < header.len() {
        match file.read(&mut header[len..])? {
            0 => break,
            n => len += n,
        }
    }
    file.seek(SeekFrom::Start(0))?;
    // Signature, IHDR's length and type, width, height, then bit depth and colour type.
    Ok(len == header.len()
        && header.starts_with(b"\x89PNG\r\n\x1a\n")
        && &header[12..16] == b"IHDR"
        && header[24..26] == [16, 0])
}

/// Whether `file`, when it is a JPEG, reaches its end-of-image marker (EOI): its segments are
/// skipped by their lengths and its entropy-coded data scanned for the next marker, so an EOI
/// inside a segment (an EXIF thumbnail's) doesn't count. A file that ends first is cut short.
/// Anything that is no JPEG is `true`, as are bytes after the marker; the file is rewound.
fn jpeg_reaches_its_end(file: &mut (impl BufRead + Seek)) -> std::io::Result<bool> {
    fn byte(file: &mut impl BufRead) -> std::io::Result<Option<u8>> {
        let Some(&b) = file.fill_buf()?.first() else {
            return Ok(None);
        };
        file.consume(1);
        Ok(Some(b))
    }
    /// Skips past the next 0xFF, a buffer at a time; `false` at the end of the file.
    fn past_next_ff(file: &mut impl BufRead) -> std::io::Result<bool> {
        loop {
            let buf = file.fill_buf()?;
            if buf.is_empty() {
                return Ok(false);
            }
            match buf.iter().position(|&b| b == 0xff) {
                Some(i) => {
                    file.consume(i + 1);
                    return Ok(true);
                }
                None => {
                    let n = buf.len();
                    file.consume(n);
                }
            }
        }
    }
    /// The marker after an 0xFF, past fill bytes (more 0xFF); `None` at the end of the file.
    fn marker(file: &mut impl BufRead) -> std::io::Result<Option<u8>> {
        loop {
            match byte(file)? {
                Some(0xff) => {}
                other => return Ok(other),
            }
        }
    }
    /// `Some(reached)` for a JPEG, `None` for another file.
    fn walk(file: &mut impl BufRead) -> std::io::Result<Option<bool>> {
        if (byte(file)?, byte(file)?) != (Some(0xff), Some(0xd8)) {
            return Ok(None);
        }
        let mut pending = None;
        loop {
            let found = match pending.take() {
                Some(m) => Some(m),
                // Past the next 0xFF (libjpeg skips extraneous bytes).
                None if past_next_ff(file)? => marker(file)?,
                None => None,
            };
            let Some(m) = found else {
                return Ok(Some(false));
            };
            match m {
                0xd9 => return Ok(Some(true)),
                0x00 | 0x01 | 0xd0..=0xd7 => continue,
                _ => {}
            }
            let (Some(hi), Some(lo)) = (byte(file)?, byte(file)?) else {
                return Ok(Some(false));
            };
            let skip = u64::from(u16::from_be_bytes([hi, lo])).saturating_sub(2);
            if std::io::copy(&mut file.take(skip), &mut std::io::sink())? < skip {
                return Ok(Some(false));
            }
            if m != 0xda {
                continue;
            }
            // A scan's entropy-coded data: 0xFF 0x00 is a data byte, RSTn stays in the scan;
            // any other marker ends it.
            loop {
                if !past_next_ff(file)? {
                    return Ok(Some(false));
                }
                match marker(file)? {
                    None => return Ok(Some(false)),
                    Some(0x00 | 0xd0..=0xd7) => {}
                    Some(other) => {
                        pending = Some(other);
                        break;
                    }
                }
            }
        }
    }
    let complete = walk(file)?.unwrap_or(true);
    file.seek(SeekFrom::Start(0))?;
    Ok(complete)
}

/// 8-bit RGB as Pillow's `convert("RGB")` makes it (what torchvision's `ImageFolder` loads),
/// which for 16-bit PNGs is not `image`'s rounding of v / 257: Pillow reads 16-bit colour and
/// grey-with-alpha PNGs by their high byte, and 16-bit grey ones as mode `I;16`, which
/// `convert` clips at 255. A model trained through torchvision saw those pixels, so they are
/// the ones that reproduce its scores. `grey16`: the file is a 16-bit grey PNG, which `image`
/// gives as grey with alpha when it has a tRNS chunk (see [`png_is_grey16`]).
fn rgb8_as_pillow(image: image::DynamicImage, grey16: bool) -> image::RgbImage {
    use image::DynamicImage as I;
    let (w, h) = (image.width(), image.height());
    let spread = |values: Vec<u8>, channels: usize, grey: bool| -> image::RgbImage {
        let pixels = values
            .chunks_exact(channels)
            .flat_map(|p| if grey { [p[0]; 3] } else { [p[0], p[1], p[2]] })
            .collect();
        image::RgbImage::from_raw(w, h, pixels).expect("w * h pixels of 3 channels")
    };
    let high = |raw: &[u16]| raw.iter().map(|v| (v >> 8) as u8).collect::<Vec<u8>>();
    let clipped = |raw: &[u16]| raw.iter().map(|&v| v.min(255) as u8).collect::<Vec<u8>>();
    match image {
        I::ImageLuma16(b) => spread(clipped(&b), 1, true),
        I::ImageLumaA16(b) if grey16 => spread(clipped(&b), 2, true),
        I::ImageLumaA16(b) => spread(high(&b), 2, true),
        I::ImageRgb16(b) => spread(high(&b), 3, false),
        I::ImageRgba16(b) => spread(high(&b), 4, false),
        other => other.into_rgb8(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_lines_split_with_quotes() {
        assert_eq!(split_csv("a.png,3").unwrap(), ["a.png", "3"]);
        assert_eq!(split_csv("\"a,b.png\",cat").unwrap(), ["a,b.png", "cat"]);
        assert_eq!(
            split_csv("\"say \"\"hi\"\".png\",1").unwrap(),
            ["say \"hi\".png", "1"]
        );
        assert!(split_csv("\"open,1").is_none());
    }

    #[test]
    fn string_labels_are_numbered_in_sorted_order_and_mixing_is_refused() {
        let p = Path::new("list.csv");
        let rows = parse_csv(p, "path,label\nx.png,dog\ny.png,cat\nz.png,dog\n").unwrap();
        let list = labelled(p, Path::new("/data"), rows).unwrap();
        assert_eq!(
            list.classes.as_deref(),
            Some(&["cat".to_string(), "dog".to_string()][..])
        );
        let labels: Vec<usize> = list.entries.iter().map(|e| e.1).collect();
        assert_eq!(labels, [1, 0, 1]);
        assert_eq!(list.entries[0].0, Path::new("/data/x.png"));
        let rows = parse_csv(p, "x.png,dog\ny.png,3\n").unwrap();
        let err = labelled(p, Path::new("."), rows).err().unwrap().to_string();
        assert!(
            err.contains("line 2") && err.contains("one kind of label"),
            "{err}"
        );
    }

    /// Excel's "CSV UTF-8" starts a file with a byte-order mark: the header is still a
    /// header, and a JSONL list's first line still JSON.
    #[test]
    fn a_byte_order_mark_is_not_part_of_the_first_line() {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in [
            ("list.csv", "\u{feff}path,label\na.png,0\nb.png,1\n"),
            (
                "list.jsonl",
                "\u{feff}{\"path\": \"a.png\", \"label\": 0}\n{\"path\": \"b.png\", \"label\": 1}\n",
            ),
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            let list = ImageList::open(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
            let expected = [(dir.path().join("a.png"), 0), (dir.path().join("b.png"), 1)];
            assert_eq!(list.entries, expected, "{name}");
            assert_eq!(list.classes, None, "{name}");
        }
    }

    /// A PNG that claims `w`x`h` pixels of `color` (PNG's colour type, 8 bits each), with a
    /// few bytes of pixel data: enough for a decoder to read the header.
    fn png_header(w: u32, h: u32, color: u8) -> Vec<u8> {
        fn crc(bytes: &[u8]) -> u32 {
            let mut c = !0u32;
            for &b in bytes {
                c ^= u32::from(b);
                for _ in 0..8 {
                    c = if c & 1 == 1 {
                        0xedb8_8320 ^ (c >> 1)
                    } else {
                        c >> 1
                    };
                }
            }
            !c
        }
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut ihdr = Vec::new();
        ihdr.extend(w.to_be_bytes());
        ihdr.extend(h.to_be_bytes());
        ihdr.extend([8, color, 0, 0, 0]);
        for (kind, data) in [
            (&b"IHDR"[..], &ihdr[..]),
            (b"IDAT", &[0x78, 0x9c, 0x03, 0x00]),
            (b"IEND", &[]),
        ] {
            out.extend((data.len() as u32).to_be_bytes());
            let body: Vec<u8> = kind.iter().chain(data).copied().collect();
            out.extend(&body);
            out.extend(crc(&body).to_be_bytes());
        }
        out
    }

    /// A few hundred KB of PNG can claim gigabytes of pixels: refused from the header, with
    /// the size, before any allocation.
    #[test]
    fn a_decompression_bomb_is_refused_from_its_header() {
        let dir = tempfile::tempdir().unwrap();
        // 400 MB of grey (1.2 GB as RGB) passes `image`'s default limit; too wide here.
        let wide = dir.path().join("wide.png");
        std::fs::write(&wide, png_header(20000, 20000, 0)).unwrap();
        let err = decode(&wide).unwrap_err();
        assert!(
            err.contains("20000x20000") && err.contains("16384"),
            "{err}"
        );
        // Within the sides, but grey+alpha (512 MB) and its RGB copy (768 MB) pass 1 GiB.
        let heavy = dir.path().join("heavy.png");
        std::fs::write(&heavy, png_header(16000, 16000, 4)).unwrap();
        let err = decode(&heavy).unwrap_err();
        assert!(
            err.contains("16000x16000") && err.contains("1024 MiB"),
            "{err}"
        );
    }

    /// 16-bit PNGs as Pillow converts them (checked with Pillow 13): colour by the high byte
    /// (1000 is 3, where v / 257 rounds to 4), grey clipped at 255 (30000 is 255, not 117).
    #[test]
    fn sixteen_bit_images_are_converted_as_pillow_does() {
        let rgb = image::ImageBuffer::<image::Rgb<u16>, _>::from_raw(
            2,
            1,
            vec![1000, 30000, 65535, 257 * 7, 257 * 200, 0],
        )
        .unwrap();
        let got = rgb8_as_pillow(image::DynamicImage::ImageRgb16(rgb), false);
        assert_eq!(got.into_raw(), [3, 117, 255, 7, 200, 0]);
        let grey =
            image::ImageBuffer::<image::Luma<u16>, _>::from_raw(4, 1, vec![1000, 30000, 200, 0])
                .unwrap();
        let got = rgb8_as_pillow(image::DynamicImage::ImageLuma16(grey), true);
        assert_eq!(
            got.into_raw(),
            [255, 255, 255, 255, 255, 255, 200, 200, 200, 0, 0, 0]
        );
        let grey_alpha =
            image::ImageBuffer::<image::LumaA<u16>, _>::from_raw(1, 1, vec![1000, 7]).unwrap();
        let got = rgb8_as_pillow(image::DynamicImage::ImageLumaA16(grey_alpha), false);
        assert_eq!(got.into_raw(), [3, 3, 3]);
    }

    #[test]
    fn jsonl_rows_need_a_path_and_a_label() {
        let p = Path::new("list.jsonl");
        let rows = parse_jsonl(p, "{\"path\": \"a.png\", \"label\": 2}\n\n").unwrap();
        assert_eq!(rows.len(), 1);
        for bad_line in [
            "{\"label\": 2}",
            "{\"path\": \"a.png\"}",
            "{\"path\": \"a.png\", \"label\": -1}",
            "{\"path\": \"a.png\", \"label\": 1.5}",
            "{\"path\": \"a.png\", \"label\": -1.0}",
            "nope",
        ] {
            let err = parse_jsonl(p, bad_line).err().unwrap().to_string();
            assert!(err.contains("line 1"), "{bad_line}: {err}");
        }
        // pandas' float labels: 2.0 is index 2, as in text data.
        let rows = parse_jsonl(p, "{\"path\": \"a.png\", \"label\": 2.0}").unwrap();
        assert!(matches!(rows[0].label, Label::Index(2)));
    }
}
