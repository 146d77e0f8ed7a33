//! The search log: every scored candidate appended to a JSON Lines file and fsynced, so that a
//! search killed at any point restarts with `--resume` where it stopped.
//!
//! The first line describes the search (the scorer, how its score is read and compared, and
//! each ingredient's sha256); `--resume` refuses a log whose description differs from the
//! current one, since its scores would then be of other models or on another scale. Options
//! that can't change a score (`--jobs`, `--speculate`, `--scorer-timeout`, `--retries`,
//! `--work-dir`) may differ. Each further line is one candidate. A line cut short by a crash
//! is dropped when the log is resumed.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::error::{Error, Result};

/// The log format's version, in its first line.
pub const VERSION: u32 = 1;

/// The largest `--resume` log read: a line per candidate is a few hundred bytes, so this is
/// millions of candidates, and a device or a wrong file can't fill the memory.
const MAX_LOG_BYTES: u64 = 1 << 30;

/// What a log's scores depend on: compared field by field by `--resume`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Description {
    /// The log format (`soup-eval-search-log`).
    pub format: String,
    /// [`VERSION`].
    pub version: u32,
    /// The `--scorer` template.
    pub scorer: String,
    /// Whether it runs through `sh -c` (`--shell`).
    pub shell: bool,
    /// `--scorer-json`'s path, or `null` for the last line of stdout.
    pub scorer_json: Option<String>,
    /// Whether lower scores are better (`--minimize`).
    pub minimize: bool,
    /// Whether a tie joins the soup (`--accept-ties`).
    pub accept_ties: bool,
    /// The ingredients in command-line order, with their sha256.
    pub ingredients: Vec<LoggedIngredient>,
    /// The soup-eval version that started the log (not compared).
    pub tool: String,
}

/// One ingredient of a logged search.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoggedIngredient {
    /// The path as given when the log was started (not compared: files may move).
    pub path: String,
    /// The sha256 of the file, or of a model directory's files (see `candidate::sha256`).
    pub sha256: String,
}

/// One scored (or failed) candidate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// The candidate's id (`{name}`).
    pub name: String,
    /// Ingredient indices, in merge order.
    pub members: Vec<usize>,
    /// The ingredients' file names, in merge order.
    pub ingredients: Vec<String>,
    /// The weight of each member (uniform).
    pub weights: Vec<f64>,
    /// The score, or `null` when every attempt failed.
    pub score: Option<f64>,
    /// Wall seconds the successful scorer run took (or the last failed one).
    pub seconds: f64,
    /// Seconds spent writing the candidate.
    pub write_seconds: f64,
    /// The scorer's exit status (`null` when it was killed or never ran).
    pub exit_status: Option<i32>,
    /// Attempts made (`--retries`).
    pub attempts: u32,
    /// The sha256 of the candidate that was scored.
    pub sha256: String,
    /// Why it failed, for a failed candidate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When the score was logged, in seconds since the Unix epoch.
    pub unix_time: f64,
}

/// The refusal of a `--log` that already exists.
fn already_exists(path: &Path) -> Error {
    Error::Log {
        path: path.to_path_buf(),
        reason: "already exists; pass --resume with it to continue that search, or remove it"
            .into(),
    }
}

/// An open log, appended to by any thread.
pub struct SearchLog {
    path: PathBuf,
    file: Mutex<File>,
}

impl SearchLog {
    /// Refuses a `--log` path where something already is (it may be a search to resume), so
    /// a run can say so before it creates anything; [`SearchLog::create`] refuses it again.
    pub fn check_new(path: &Path) -> Result<()> {
        match std::fs::symlink_metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            _ => Err(already_exists(path)),
        }
    }

    /// Starts a new log at `path` with `description`; an existing file is refused (it may be
    /// a search to resume).
    pub fn create(path: &Path, description: &Description) -> Result<SearchLog> {
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(path)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    return already_exists(path);
                }
                Error::Log {
                    path: path.to_path_buf(),
                    reason: format!("cannot create the --log file: {e}"),
                }
            })?;
        let log = SearchLog {
            path: path.to_path_buf(),
            file: Mutex::new(file),
        };
        log.append_line(&serde_json::to_string(description).expect("serialises"))?;
        // The new name must survive a crash too.
        let parent = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if let Ok(dir) = File::open(parent) {
            let _ = dir.sync_all();
        }
        Ok(log)
    }

    /// Opens the log at `path` to continue it: checks its description against `description`
    /// and returns the scored candidates by their members. A last line without its newline
    /// (the process died while writing it) is cut off.
    pub fn resume(
        path: &Path,
        description: &Description,
    ) -> Result<(SearchLog, HashMap<Vec<usize>, Entry>)> {
        let bad = |reason: String| Error::Log {
            path: path.to_path_buf(),
            reason,
        };
        // A regular file only, of bounded size: a FIFO must not block (its open ignored
        // Ctrl-C), nor /dev/zero fill the memory.
        let bytes = model_soup::format::small_file::read(path, MAX_LOG_BYTES, "--resume log")
            .map_err(|e| match e {
                model_soup::Error::Header { reason, .. } => bad(reason),
                model_soup::Error::Io { cause, .. } => {
                    bad(format!("cannot read the --resume log: {cause}"))
                }
                other => bad(other.to_string()),
            })?;
        let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let text = std::str::from_utf8(&bytes[..complete])
            .map_err(|_| bad("is not a soup-eval search log (not UTF-8)".into()))?;
        let mut lines = text.lines().enumerate();
        let Some((_, first)) = lines.next() else {
            return Err(bad("is empty; it is not a soup-eval search log".into()));
        };
        let logged: Description = serde_json::from_str(first)
            .ok()
            .filter(|d: &Description| d.format == description.format)
            .ok_or_else(|| {
                bad(
                    "is not a soup-eval search log (its first line is not a search description)"
                        .into(),
                )
            })?;
        if logged.version != VERSION {
            return Err(bad(format!(
                "is a version {} log; this soup-eval reads version {VERSION}",
                logged.version
            )));
        }
        if let Some((i, _)) = logged
            .ingredients
            .iter()
            .enumerate()
            .find(|(_, g)| !is_sha256(&g.sha256))
        {
            return Err(bad(format!(
                "ingredient {}'s sha256 in the log is not 64 hex digits; the log was edited or damaged: start a new --log",
                i + 1
            )));
        }
        check_same(&logged, description).map_err(bad)?;
        let mut scored = HashMap::new();
        for (n, line) in lines {
            if line.trim().is_empty() {
                continue;
            }
            let entry: Entry = serde_json::from_str(line).map_err(|e| {
                bad(format!(
                    "line {} is not a candidate entry ({e}); the log was edited or damaged",
                    n + 1
                ))
            })?;
            if entry.members.is_empty()
                || entry
                    .members
                    .iter()
                    .any(|&m| m >= description.ingredients.len())
            {
                return Err(bad(format!(
                    "line {} names ingredients that the search doesn't have",
                    n + 1
                )));
            }
            if entry.score.is_some_and(|s| s.is_finite()) {
                scored.insert(entry.members.clone(), entry);
            }
        }
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| bad(format!("cannot append to the --resume log: {e}")))?;
        if complete < bytes.len() {
            // A partial line from a crash: drop it so the next entry starts a line of its own.
            file.set_len(complete as u64)
                .and_then(|_| file.sync_all())
                .map_err(|e| bad(format!("cannot cut off its incomplete last line: {e}")))?;
        }
        drop(file);
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| bad(format!("cannot append to the --resume log: {e}")))?;
        Ok((
            SearchLog {
                path: path.to_path_buf(),
                file: Mutex::new(file),
            },
            scored,
        ))
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `entry` and waits until it is on disk.
    pub fn append(&self, entry: &Entry) -> Result<()> {
        self.append_line(&serde_json::to_string(entry).expect("serialises"))
    }

    fn append_line(&self, line: &str) -> Result<()> {
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let mut bytes = line.as_bytes().to_vec();
        bytes.push(b'\n');
        // One write per line, in append mode: lines from several threads never interleave.
        file.write_all(&bytes)
            .and_then(|_| file.sync_data())
            .map_err(|e| Error::Log {
                path: self.path.clone(),
                reason: format!("cannot append to the log: {e}"),
            })
    }
}

/// Says which part of the description differs, and how to fix it.
fn check_same(logged: &Description, now: &Description) -> std::result::Result<(), String> {
    let differs = |what: &str, was: String, is: String| {
        Err(format!(
            "was logged with {what} {was}, but this run has {is}; resume with the same {what}, or start a new --log"
        ))
    };
    if logged.scorer != now.scorer {
        return differs(
            "--scorer",
            format!("{:?}", logged.scorer),
            format!("{:?}", now.scorer),
        );
    }
    if logged.shell != now.shell {
        return differs("--shell", logged.shell.to_string(), now.shell.to_string());
    }
    if logged.scorer_json != now.scorer_json {
        return differs(
            "--scorer-json",
            format!("{:?}", logged.scorer_json),
            format!("{:?}", now.scorer_json),
        );
    }
    if logged.minimize != now.minimize {
        return differs(
            "--minimize",
            logged.minimize.to_string(),
            now.minimize.to_string(),
        );
    }
    if logged.accept_ties != now.accept_ties {
        return differs(
            "--accept-ties",
            logged.accept_ties.to_string(),
            now.accept_ties.to_string(),
        );
    }
    if logged.ingredients.len() != now.ingredients.len() {
        return differs(
            "number of ingredients",
            logged.ingredients.len().to_string(),
            now.ingredients.len().to_string(),
        );
    }
    for (i, (was, is)) in logged.ingredients.iter().zip(&now.ingredients).enumerate() {
        if was.sha256 != is.sha256 {
            return Err(format!(
                "ingredient {} ({}) has sha256 {} in the log, but {} now has {}; give the same ingredients, unchanged and in the same order, or start a new --log",
                i + 1,
                was.path,
                prefix(&was.sha256),
                is.path,
                prefix(&is.sha256),
            ));
        }
    }
    Ok(())
}

/// Whether `s` is a sha256 as this tool writes it: 64 lowercase hex digits.
fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The first 16 characters of a sha256, for messages (by characters: a damaged log's text
/// may hold any).
fn prefix(s: &str) -> String {
    s.chars().take(16).collect()
}

/// The `format` field of every log.
pub const FORMAT: &str = "soup-eval-search-log";

#[cfg(test)]
mod tests {
    /// A resumed search compares logged scores with new ones exactly: a score read back a few
    /// ulps off turned an exact tie into "better", and the resumed soup differed.
    #[test]
    fn scores_read_back_bit_for_bit() {
        let mut x = 0.1f64;
        for i in 0..2000 {
            x = (x * 1.618_033_988_749_895 + i as f64 * 1e-7).fract() - 0.5;
            let scaled = x * 10f64.powi(i % 40 - 20);
            let text = serde_json::to_string(&scaled).unwrap();
            let back: f64 = serde_json::from_str(&text).unwrap();
            assert_eq!(back.to_bits(), scaled.to_bits(), "{text}");
        }
    }
}
