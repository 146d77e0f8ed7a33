//! Running a `Plan`: every output tensor, chunk by chunk in parallel, into the files of a
//! `Layout` (one file, or a model directory of shards) through the atomic writers, or into
//! memory for the evaluator.

use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use rayon::prelude::*;
use serde::Serialize;

use super::kernel::{self, Scratch, Source, CHUNK_ELEMENTS};
use super::layout::Layout;
use super::plan::{Action, Plan, TensorPlan};
use super::whole::{self, Prepared};
use crate::error::{printable, Error, Result};
use crate::format::small_file::SourceFile;
use crate::format::Dtype;
use crate::format::{
    start_writeback, AtomicDir, AtomicFile, Destination, HeaderEntry, Reads, INDEX_NAME,
};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Asks running merges to stop at their next chunk and remove their temporaries, and merges
/// started later in this process to stop before their first (a Ctrl-C while headers are still
/// being read must not be forgotten). Safe to call from a signal handler thread.
pub fn interrupt() {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Whether [`interrupt`] was called: long waits outside a merge (an external scorer) poll it.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        return Err(Error::Interrupted);
    }
    Ok(())
}

/// Sees each written chunk: the tensor's index in the plan, the chunk's first element, its bytes.
pub type Observer<'a> = dyn Fn(usize, usize, &[u8]) + Sync + 'a;

/// How to treat findings about the data, and where progress goes.
#[derive(Clone, Copy)]
pub struct RunOptions<'a> {
    /// Turn every warning into an error, and so refuse to publish the output.
    pub strict: bool,
    /// Called with the number of output bytes each finished chunk produced.
    pub progress: &'a (dyn Fn(u64) + Sync),
    /// Called with each output chunk once it is written: the tensor's index in the plan, the
    /// chunk's first element and its bytes (`--verify` records their digests).
    pub observe: Option<&'a Observer<'a>>,
}

impl Default for RunOptions<'_> {
    fn default() -> Self {
        RunOptions {
            strict: false,
            progress: &|_| {},
            observe: None,
        }
    }
}

/// Something the user should know: the merge went on. Every warning either tool prints is one
/// of these, so its text and `--json` always agree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Warning {
    /// The tensor concerned, as named in the files; null for a warning about no one tensor.
    pub tensor: Option<String>,
    /// The input concerned, when it is one input's doing.
    #[serde(serialize_with = "crate::json_path::option")]
    pub input: Option<PathBuf>,
    /// What kind of finding, stable for machines: `integers-differ`,
    /// `batches-tracked-differ`, `non-finite-input`, `non-finite-output`, `no-config`,
    /// `companion-skipped`, `remote-code`, `repeated-input`, `chat-template`.
    pub kind: &'static str,
    /// One line for people.
    pub message: String,
}

impl Warning {
    /// A warning about the output as a whole rather than one tensor.
    pub fn general(kind: &'static str, input: Option<PathBuf>, message: String) -> Warning {
        Warning {
            tensor: None,
            input,
            kind,
            message,
        }
    }
}

/// BatchNorm's step counters: integers that differ between any two fine-tunes trained for
/// different numbers of steps, and that no model reads at inference.
fn is_batches_tracked(w: &Warning) -> bool {
    w.kind == "integers-differ"
        && w.tensor
            .as_deref()
            .is_some_and(|t| t.ends_with("num_batches_tracked"))
}

/// Folds the expected `num_batches_tracked` differences into one line per run; any other
/// finding stays as it is.
fn summarise_batches_tracked(warnings: Vec<Warning>) -> Vec<Warning> {
    let (counters, mut rest): (Vec<Warning>, Vec<Warning>) =
        warnings.into_iter().partition(is_batches_tracked);
    let mut names: Vec<&str> = counters
        .iter()
        .filter_map(|w| w.tensor.as_deref())
        .collect();
    names.sort_unstable();
    names.dedup();
    if !names.is_empty() {
        rest.push(Warning::general(
            "batches-tracked-differ",
            None,
            format!(
                "{} BatchNorm num_batches_tracked counter(s) differ between the inputs, as they do between fine-tunes trained for different numbers of steps; the first input's values were copied (inference doesn't read them)",
                names.len()
            ),
        ));
    }
    rest
}

/// A merge's output held in memory: the header entries, in output order, and the data section.
pub struct Soup {
    pub entries: Vec<HeaderEntry>,
    pub data: Vec<u8>,
    pub metadata: std::collections::BTreeMap<String, String>,
}

impl Soup {
    /// One tensor's entry and bytes.
    pub fn tensor(&self, name: &str) -> Option<(&HeaderEntry, &[u8])> {
        let e = self.entries.iter().find(|e| e.name == name)?;
        Some((e, &self.data[e.begin as usize..e.end as usize]))
    }
}

/// A fixed-size piece of one output tensor: elements `start..end` of tensor `tensor`, which
/// goes to output file `file` of the layout.
struct Job {
    tensor: usize,
    file: usize,
    start: usize,
    end: usize,
}

/// The tensors in the order the first input stores them: reading each input front to back
/// lets read-ahead work, and the pages the kernel maps past a tensor's end belong to the next
/// tensor processed, which releases them. Each chunk writes only its own output bytes, so the
/// order changes no result.
fn storage_order(plan: &Plan) -> Vec<usize> {
    let mut order: Vec<usize> = (0..plan.tensors.len()).collect();
    order.sort_by_key(|&t| {
        let tensor = &plan.tensors[t];
        let first = tensor.action.inputs()[0];
        plan.ingredients[first].position(&tensor.name)
    });
    order
}

/// The chunks of tensor `t`.
fn chunks(plan: &Plan, layout: Option<&Layout>, t: usize) -> impl Iterator<Item = Job> {
    let n = plan.tensors[t].elements() as usize;
    let file = layout.map_or(0, |l| l.owner(t));
    (0..n).step_by(CHUNK_ELEMENTS).map(move |start| Job {
        tensor: t,
        file,
        start,
        end: (start + CHUNK_ELEMENTS).min(n),
    })
}

/// A file to put in an output directory beside the weights.
#[derive(Debug, Clone)]
pub enum ExtraFile {
    /// Copy this file (following symbolic links).
    Copy { name: String, from: PathBuf },
    /// Write these bytes, made from the input files `from` (none for a model card): a config
    /// read at plan time with its dtype set, say. Like a copied file, each is checked again
    /// before the output is published, and one that changed since it was read stops it.
    Bytes {
        name: String,
        bytes: Vec<u8>,
        from: Vec<SourceFile>,
    },
}

impl ExtraFile {
    pub fn name(&self) -> &str {
        match self {
            ExtraFile::Copy { name, .. } | ExtraFile::Bytes { name, .. } => name,
        }
    }
}

/// Runs `plan` and publishes the result at `dest`, atomically. The plan's own inputs are
/// checked against the destination once more, whatever the caller's policy check saw.
pub fn write(plan: &Plan, dest: &Destination, options: RunOptions<'_>) -> Result<Vec<Warning>> {
    let dest = dest.with_reads(&plan_reads(plan))?;
    let layout = Layout::single(plan, "");
    layout.check_header_sizes(plan)?;
    let file = &layout.files[0];
    let out = AtomicFile::create(&dest)?;
    // The header goes first: it is the mark that lets a later run remove this temporary if
    // this one dies.
    out.write_at(0, &file.header)?;
    out.allocate(file.len())?;
    let warnings = run(plan, Some(&layout), options, |job, bytes| {
        let tensor = &plan.tensors[job.tensor];
        let offset = file.offset(tensor) + (job.start * tensor.dtype.size()) as u64;
        out.write_at(offset, bytes)?;
        kick_writeback(out.file(), offset, bytes.len() as u64);
        Ok(())
    })?;
    for ingredient in &plan.ingredients {
        ingredient.check_unchanged()?;
    }
    check_interrupted()?;
    out.commit()?;
    Ok(warnings)
}

/// Runs `plan` into memory.
pub fn to_memory(plan: &Plan, options: RunOptions<'_>) -> Result<(Soup, Vec<Warning>)> {
    let data = Mutex::new(vec![0u8; plan.data_len() as usize]);
    // Jobs are disjoint, so the lock is held only for a memcpy of one chunk.
    let warnings = run(plan, None, options, |job, bytes| {
        let offset = plan.tensors[job.tensor].begin as usize
            + job.start * plan.tensors[job.tensor].dtype.size();
        data.lock().expect("no job panics while holding it")[offset..offset + bytes.len()]
            .copy_from_slice(bytes);
        Ok(())
    })?;
    let soup = Soup {
        entries: plan.entries(),
        data: data.into_inner().expect("no job panics"),
        metadata: plan.metadata.clone(),
    };
    Ok((soup, warnings))
}

/// Runs `plan` into a model directory at `dest`: the shards of `layout`, their index when
/// there are several, and `extra` files, all built in a temporary sibling directory that is
/// renamed into place only when complete. The plan's own inputs are checked against the
/// destination once more, whatever the caller's policy check saw.
pub fn write_dir(
    plan: &Plan,
    layout: &Layout,
    dest: &Destination,
    extra: &[ExtraFile],
    options: RunOptions<'_>,
) -> Result<Vec<Warning>> {
    let dest = dest.with_reads(&plan_reads(plan))?;
    layout.check_header_sizes(plan)?;
    let dir = AtomicDir::create(&dest)?;
    let files = layout
        .files
        .iter()
        .map(|f| {
            let file = dir.create_file(&f.name)?;
            crate::format::allocate(&file, f.len()).map_err(|e| dir.write_error(&f.name, e))?;
            file.write_all_at(&f.header, 0)
                .map_err(|e| dir.write_error(&f.name, e))?;
            Ok(file)
        })
        .collect::<Result<Vec<_>>>()?;
    // The index and the companion files first: a full disk or an unreadable tokenizer fails
    // before the merge's work, not after it.
    if let Some(index) = layout.index(plan) {
        dir.write_file(INDEX_NAME, index.encode().as_bytes())?;
    }
    for f in extra {
        match f {
            ExtraFile::Copy { name, from } => dir.copy_file(from, name)?,
            ExtraFile::Bytes { name, bytes, from } => dir.write_made_from(name, bytes, from)?,
        }
    }
    let warnings = run(plan, Some(layout), options, |job, bytes| {
        let tensor = &plan.tensors[job.tensor];
        let spec = &layout.files[job.file];
        let offset = spec.offset(tensor) + (job.start * tensor.dtype.size()) as u64;
        let file = &files[job.file];
        file.write_all_at(bytes, offset)
            .map_err(|e| dir.write_error(&spec.name, e))?;
        kick_writeback(file, offset, bytes.len() as u64);
        Ok(())
    })?;
    for ingredient in &plan.ingredients {
        ingredient.check_unchanged()?;
    }
    for (file, spec) in files.iter().zip(&layout.files) {
        file.sync_all()
            .map_err(|e| dir.write_error(&spec.name, e))?;
    }
    check_interrupted()?;
    dir.commit()?;
    Ok(warnings)
}

/// Runs every chunk: first those of the tensors computed chunk by chunk (averages and copies),
/// all in parallel, then each whole-tensor method's tensors one at a time, each prepared over
/// the whole tensor and then computed chunk by chunk in parallel.
fn run(
    plan: &Plan,
    layout: Option<&Layout>,
    options: RunOptions<'_>,
    sink: impl Fn(&Job, &[u8]) -> Result<()> + Sync,
) -> Result<Vec<Warning>> {
    let findings = Mutex::new(Vec::new());
    let order = storage_order(plan);
    let is_whole = |t: usize| matches!(plan.tensors[t].action, Action::Whole(_));
    let streamed: Vec<Job> = order
        .iter()
        .filter(|&&t| !is_whole(t))
        .flat_map(|&t| chunks(plan, layout, t))
        .collect();
    let one = |scratch: &mut Scratch, job: &Job, prepared: Option<&Prepared>| -> Result<()> {
        if INTERRUPTED.load(Ordering::Relaxed) {
            return Err(Error::Interrupted);
        }
        let tensor = &plan.tensors[job.tensor];
        advise_inputs(plan, tensor, job, Pages::Populate);
        let (bytes, found) = compute(plan, tensor, job, scratch, prepared);
        if let Some(w) = found {
            if options.strict {
                return Err(strict_error(&w));
            }
            findings
                .lock()
                .expect("no panics while held")
                .push((job.tensor, job.start, w));
        }
        sink(job, bytes)?;
        if let Some(observe) = options.observe {
            observe(job.tensor, job.start, bytes);
        }
        advise_inputs(plan, tensor, job, Pages::Release);
        (options.progress)(bytes.len() as u64);
        Ok(())
    };
    // Rayon calls an init closure for every piece of work it splits off, not once per thread:
    // the buffers come from a pool rather than being allocated (and zeroed) for each piece.
    // One per thread, made before any work: a process that can't have them (a `ulimit -v`)
    // stops with an error here instead of aborting on a failed allocation midway.
    let threads = rayon::current_num_threads();
    let mut scratches = Vec::with_capacity(threads);
    for _ in 0..threads {
        scratches.push(Scratch::try_new().ok_or_else(|| {
            Error::Resources(format!(
                "cannot allocate the merge's buffers (about {} MiB for {threads} worker threads); give fewer with RAYON_NUM_THREADS, or raise the process's limits (ulimit -v)",
                (threads * (CHUNK_ELEMENTS * 8 + (64 << 10))) >> 20
            ))
        })?);
    }
    let pool = Mutex::new(scratches);
    streamed.par_iter().try_for_each_init(
        || Pooled::take(&pool),
        |pooled, job| one(pooled.scratch(), job, None),
    )?;
    // Whole tensors run one after another, each on every thread. The next is prepared while
    // one is computed, where their inputs' bytes together are at most the largest tensor's: a
    // preparation's serial steps (sorting a sample, selecting among the keys it gathered) and
    // each pass's tail would otherwise leave a thread idle, and the pages mapped at once stay
    // within one tensor's bound, however large the others are.
    let wholes: Vec<usize> = order.iter().copied().filter(|&t| is_whole(t)).collect();
    let bytes = |t: usize| -> usize {
        let tensor = &plan.tensors[t];
        let input = |i: usize| {
            plan.ingredients[i]
                .tensor(&tensor.name)
                .map_or(0, |x| x.data.len())
        };
        tensor.action.inputs().into_iter().map(input).sum()
    };
    let largest = wholes.iter().map(|&t| bytes(t)).max().unwrap_or(0);
    let prepare = |t: usize| -> Result<Prepared> {
        check_interrupted()?;
        let tensor = &plan.tensors[t];
        let Action::Whole(w) = &tensor.action else {
            unreachable!("filtered")
        };
        whole::check_memory(tensor, w)?;
        Ok(whole::prepare(plan, tensor, w))
    };
    let mut next = None;
    for (i, &t) in wholes.iter().enumerate() {
        let prepared = match next.take() {
            Some(p) => p,
            None => prepare(t)?,
        };
        let jobs: Vec<Job> = chunks(plan, layout, t).collect();
        let ahead = wholes
            .get(i + 1)
            .filter(|&&u| bytes(t) + bytes(u) <= largest);
        let (ran, following) = rayon::join(
            || {
                jobs.par_iter().try_for_each_init(
                    || Pooled::take(&pool),
                    |pooled, job| one(pooled.scratch(), job, Some(&prepared)),
                )
            },
            || ahead.map(|&u| prepare(u)).transpose(),
        );
        ran?;
        next = following?;
    }
    let mut findings = findings.into_inner().expect("no panics while held");
    findings.sort_by_key(|(t, start, w)| (*t, w.input.clone(), *start));
    // One warning per tensor and input and kind, however many chunks saw it.
    findings.dedup_by(|a, b| a.0 == b.0 && a.2.input == b.2.input && a.2.kind == b.2.kind);
    Ok(summarise_batches_tracked(
        findings.into_iter().map(|(_, _, w)| w).collect(),
    ))
}

/// A [`Scratch`] borrowed from a pool, and given back when dropped.
struct Pooled<'p> {
    scratch: Option<Scratch>,
    pool: &'p Mutex<Vec<Scratch>>,
}

impl<'p> Pooled<'p> {
    fn take(pool: &'p Mutex<Vec<Scratch>>) -> Pooled<'p> {
        let scratch = pool.lock().expect("no panics while held").pop();
        Pooled {
            scratch: Some(scratch.unwrap_or_default()),
            pool,
        }
    }

    fn scratch(&mut self) -> &mut Scratch {
        self.scratch.as_mut().expect("held until dropped")
    }
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        if let (Some(s), Ok(mut pool)) = (self.scratch.take(), self.pool.lock()) {
            pool.push(s);
        }
    }
}

fn strict_error(w: &Warning) -> Error {
    Error::Plan(format!(
        "{} (--strict makes this an error, so nothing was written)",
        w.message
    ))
}

/// One chunk's output bytes, and what it found wrong with the data, if anything.
fn compute<'s>(
    plan: &Plan,
    tensor: &TensorPlan,
    job: &Job,
    scratch: &'s mut Scratch,
    prepared: Option<&Prepared>,
) -> (&'s [u8], Option<Warning>) {
    match &tensor.action {
        Action::Whole(w) => {
            let prepared = prepared.expect("whole tensors are prepared first");
            let out = whole::chunk(plan, tensor, w, prepared, job.start..job.end, scratch);
            let sources: Vec<Source<'_>> = w
                .inputs
                .iter()
                .map(|&i| {
                    let t = plan.ingredients[i].tensor(&tensor.name).expect("planned");
                    Source {
                        dtype: t.info.dtype,
                        data: t.data,
                        weight: 1.0,
                    }
                })
                .collect();
            // The inputs are checked even when the output is finite: a trim or a sign
            // election can hide a NaN (it votes the sign negative) without passing it on.
            let any_input = || {
                sources.iter().any(|s| {
                    let size = s.dtype.size();
                    s.dtype
                        .any_non_finite(&s.data[job.start * size..job.end * size])
                })
            };
            let found = if tensor.dtype.any_non_finite(out) || any_input() {
                let terms: Vec<super::plan::Term> = w
                    .inputs
                    .iter()
                    .map(|&i| super::plan::Term {
                        ingredient: i,
                        weight: 1.0,
                    })
                    .collect();
                Some(explain_non_finite(plan, tensor, job, &sources, &terms))
            } else {
                None
            };
            (out, found)
        }
        Action::Average {
            terms,
            wide,
            unfolded,
        } => {
            let sources: Vec<Source<'_>> = terms
                .iter()
                .map(|term| {
                    let t = plan.ingredients[term.ingredient]
                        .tensor(&tensor.name)
                        .expect("planned");
                    Source {
                        dtype: t.info.dtype,
                        data: t.data,
                        weight: term.weight,
                    }
                })
                .collect();
            let range = job.start..job.end;
            let folded = kernel::average(&sources, range.clone(), tensor.dtype, *wide, scratch);
            let (finite, len) = (!tensor.dtype.any_non_finite(folded), folded.len());
            // A folded sum that is not finite can differ in kind from mergekit's unfolded one
            // (see `TaskVectors::folded`): such a chunk is computed again, unfolded.
            let out: &[u8] = match unfolded {
                Some(w) if !finite => {
                    let prepared = whole::prepare(plan, tensor, w);
                    whole::chunk(plan, tensor, w, &prepared, range, scratch)
                }
                _ => scratch.out(len),
            };
            let found = if !finite && tensor.dtype.any_non_finite(out) {
                Some(explain_non_finite(plan, tensor, job, &sources, terms))
            } else {
                None
            };
            (out, found)
        }
        Action::Copy { from, others } => {
            let size = tensor.dtype.size();
            let range = job.start * size..job.end * size;
            let src = &plan.ingredients[*from]
                .tensor(&tensor.name)
                .expect("planned")
                .data[range.clone()];
            let differs = others.iter().find(|&&i| {
                plan.ingredients[i]
                    .tensor(&tensor.name)
                    .expect("planned")
                    .data[range.clone()]
                    != *src
            });
            let found = differs.map(|&i| Warning {
                tensor: Some(tensor.name.clone()),
                input: Some(plan.ingredients[i].path().to_path_buf()),
                kind: "integers-differ",
                message: format!(
                    "tensor '{}' ({}) differs between {} and {}; non-float tensors are not merged, so the soup takes the first one's value",
                    printable(&tensor.name),
                    tensor.dtype,
                    plan.ingredients[*from].path().display(),
                    plan.ingredients[i].path().display()
                ),
            });
            let out = scratch.out(src.len());
            out.copy_from_slice(src);
            (out, found)
        }
    }
}

fn explain_non_finite(
    plan: &Plan,
    tensor: &TensorPlan,
    job: &Job,
    sources: &[Source<'_>],
    terms: &[super::plan::Term],
) -> Warning {
    let culprit = sources.iter().zip(terms).find(|(s, _)| {
        let size = s.dtype.size();
        s.dtype
            .any_non_finite(&s.data[job.start * size..job.end * size])
    });
    match culprit {
        Some((_, term)) => {
            let path = plan.ingredients[term.ingredient].path();
            Warning {
                tensor: Some(tensor.name.clone()),
                input: Some(path.to_path_buf()),
                kind: "non-finite-input",
                message: format!(
                    "tensor '{}' has NaN or infinite values in {}; the soup inherits them",
                    printable(&tensor.name),
                    path.display()
                ),
            }
        }
        None => Warning {
            tensor: Some(tensor.name.clone()),
            input: None,
            kind: "non-finite-output",
            message: format!(
                "tensor '{}' has infinite or NaN values although the inputs are finite: {}",
                printable(&tensor.name),
                non_finite_cause(tensor.dtype, matches!(tensor.action, Action::Whole(_)))
            ),
        },
    }
}

/// Why finite inputs gave a non-finite output of `dtype`, and what helps: a wider type only
/// where one exists, and the method's own arithmetic when a method beyond the weighted sum
/// made it.
fn non_finite_cause(dtype: Dtype, by_method: bool) -> String {
    let method = "the merge method's own arithmetic (a large lambda, say); check the method's parameters and inputs";
    let wider = match dtype {
        Dtype::F16 => Some("bf16, f32 or f64"),
        Dtype::BF16 | Dtype::F32 => Some("f64"),
        _ => None,
    };
    match (wider, by_method) {
        (Some(w), false) => format!("the weighted sum overflowed {dtype}'s range; use --dtype {w}"),
        (Some(w), true) => {
            format!("beyond {dtype}'s range (then --dtype {w} helps), or from {method}")
        }
        (None, false) => {
            "the weighted sum overflowed even at float64; scale the weights down".to_string()
        }
        (None, true) => format!("from {method}"),
    }
}

/// What the executor does with an input's pages around a chunk.
#[derive(Clone, Copy)]
enum Pages {
    /// Map them all at once before reading.
    Populate,
    /// Give them back once read.
    Release,
}

fn advise_inputs(plan: &Plan, tensor: &TensorPlan, job: &Job, pages: Pages) {
    for i in tensor.action.inputs() {
        let ck = &plan.ingredients[i];
        let t = ck.tensor(&tensor.name).expect("planned");
        let size = t.info.dtype.size();
        let range = job.start * size..job.end * size;
        match pages {
            Pages::Populate => ck.populate(&t, range),
            Pages::Release => ck.release(&t, range),
        }
    }
}

/// Starts writeback once per 8 MiB of output rather than per chunk: the system call and the
/// disk's doorbell cost more per call than a chunk's worth of data justifies.
fn kick_writeback(file: &std::fs::File, offset: u64, len: u64) {
    const WINDOW: u64 = 8 << 20;
    let end = offset + len;
    if end / WINDOW > offset / WINDOW {
        let boundary = end / WINDOW * WINDOW;
        start_writeback(file, boundary.saturating_sub(WINDOW), WINDOW);
    }
}

/// Everything a plan reads.
fn plan_reads(plan: &Plan) -> Reads {
    let mut reads = Reads::new();
    for ck in &plan.ingredients {
        reads.add_checkpoint(ck);
    }
    reads
}
