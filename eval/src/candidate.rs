//! Candidate soups on disk for an external scorer: their stable names, writing them through the
//! core's writers (a file, or a model directory when the ingredients are directories), their
//! sha256, and removing them once scored, whatever way the run ends.

use std::io::Read;
use std::path::{Path, PathBuf};

use model_soup::format::{Checkpoint, Request, Role};
use model_soup::soup::{self, Merge, MergeRequest, Plan, PlanOptions, Warning};
use sha2::{Digest, Sha256};

use super::error::{Error, Result};

/// The ingredients of a search by an external scorer, checked to be averageable.
#[derive(Clone, Debug)]
pub struct Ingredients {
    /// Paths as given, in command-line order.
    pub paths: Vec<PathBuf>,
    /// Whether they are model directories (candidates are then directories too).
    pub dirs: bool,
}

impl Ingredients {
    /// Opens every ingredient and plans their uniform soup, from headers alone, so that any
    /// mismatch is found before a scorer runs.
    pub fn open(paths: &[PathBuf]) -> Result<Ingredients> {
        if paths.is_empty() {
            return Err(Error::NoIngredients);
        }
        let is_dir = |p: &PathBuf| std::fs::metadata(p).is_ok_and(|m| m.is_dir());
        let dirs = is_dir(&paths[0]);
        if let Some(odd) = paths.iter().find(|p| is_dir(p) != dirs) {
            return Err(Error::Dataset {
                path: odd.clone(),
                reason: format!(
                    "is {} while {} is {}; give only .safetensors files or only model directories, so every candidate has one form",
                    if dirs { "not a directory" } else { "a directory" },
                    paths[0].display(),
                    if dirs { "a directory" } else { "a file" },
                ),
            });
        }
        let ingredients = Ingredients {
            paths: paths.to_vec(),
            dirs,
        };
        let all: Vec<usize> = (0..paths.len()).collect();
        ingredients.plan(&all)?;
        Ok(ingredients)
    }

    /// The core's plan for the uniform soup of `members`, in that order: exactly what
    /// `soup-merge` of those inputs does.
    pub fn plan(&self, members: &[usize]) -> Result<Plan> {
        let checkpoints = members
            .iter()
            .map(|&i| Checkpoint::open(&self.paths[i]))
            .collect::<model_soup::Result<Vec<_>>>()?;
        let k = members.len();
        Ok(Plan::new(
            checkpoints,
            vec![1.0 / k as f64; k],
            &PlanOptions::default(),
        )?)
    }

    /// The ingredients' display names, in command-line order.
    pub fn names(&self) -> Vec<String> {
        soup::display_names(&self.paths.iter().map(|p| p.as_path()).collect::<Vec<_>>())
    }

    /// Writes the uniform soup of `members` to `dest` through the core's merge, exactly as
    /// `soup-merge` of those inputs writes it: a file when `dest` ends in `.safetensors`, else a
    /// model directory with the first member's config and tokenizer and a model card. An
    /// existing `dest` is replaced only with `force`, and only if soup-merge could have
    /// written it; `also` are the run's other outputs (`--plot`), checked against it.
    pub fn write(
        &self,
        members: &[usize],
        dest: &Path,
        force: bool,
        also: &[Request],
    ) -> Result<Vec<Warning>> {
        let request = MergeRequest {
            inputs: members.iter().map(|&i| self.paths[i].clone()).collect(),
            output: Some(dest.to_path_buf()),
            force,
            also_reads: self
                .paths
                .iter()
                .map(|p| (Role::Ingredient, p.clone()))
                .collect(),
            also_writes: also.to_vec(),
            ..Default::default()
        };
        Ok(Merge::plan(&request)?.run(&|_| {})?.warnings)
    }

    /// Where candidate `name` goes in `work_dir`.
    pub fn candidate_path(&self, work_dir: &Path, name: &str) -> PathBuf {
        if self.dirs {
            work_dir.join(name)
        } else {
            work_dir.join(format!("{name}.safetensors"))
        }
    }
}

/// The stable id of the soup of `members` (in join order): `ingredient-3` for one ingredient,
/// `soup-3-0-5` for a soup, or `soup-K-<hash>` when the list would make a long file name.
pub fn name(members: &[usize]) -> String {
    if let [one] = members {
        return format!("ingredient-{one}");
    }
    let list = members
        .iter()
        .map(|m| m.to_string())
        .collect::<Vec<_>>()
        .join("-");
    if list.len() <= 100 {
        return format!("soup-{list}");
    }
    let digest = Sha256::digest(list.as_bytes());
    format!("soup-{}-{}", members.len(), &hex(&digest)[..16])
}

/// Whether `file_name` is one a candidate soup can have in the work folder, for a file or a
/// model directory: `soup-` then two or more numbers joined by `-` (the last may be the
/// 16-digit hex of a long list), then `.safetensors` or nothing. A user's `soup-search.jsonl`
/// is not one.
pub fn is_name(file_name: &str) -> bool {
    let stem = file_name.strip_suffix(".safetensors").unwrap_or(file_name);
    let Some(list) = stem.strip_prefix("soup-") else {
        return false;
    };
    let parts: Vec<&str> = list.split('-').collect();
    let number = |p: &&str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    let hash =
        |p: &&str| p.len() == 16 && p.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    match parts.split_last() {
        Some((last, rest)) => {
            !rest.is_empty() && rest.iter().all(number) && (number(last) || hash(last))
        }
        None => false,
    }
}

/// A candidate written to the work folder, removed when dropped unless kept: after its score,
/// on an error, on Ctrl-C (the scorer is stopped first), and in a panic's unwinding.
#[derive(Debug)]
pub struct Written {
    /// The candidate's path.
    pub path: PathBuf,
    keep: bool,
}

impl Written {
    /// Writes the soup of `members` to `path` (replacing a leftover of a killed run).
    pub fn create(
        ingredients: &Ingredients,
        members: &[usize],
        path: PathBuf,
        keep: bool,
    ) -> Result<(Written, Vec<Warning>)> {
        // A leftover of a killed run at this path is replaced, once its mark shows soup-eval
        // wrote it; anything else there is the user's (a shared --work-dir), and stays.
        check_leftover(&path)?;
        let warnings = ingredients
            .write(members, &path, true, &[])
            .map_err(|e| full_work_dir(e, &path))?;
        Ok((Written { path, keep }, warnings))
    }
}

/// Checks that whatever is at candidate path `path` is a leftover of a killed run (it carries
/// the tool's mark), which may be replaced or removed; nothing there is fine too. Anything
/// else is the user's, such as a file in a shared `--work-dir`, and is an error naming it.
pub fn check_leftover(path: &Path) -> Result<()> {
    if path.symlink_metadata().is_ok() && !model_soup::format::written_by_this_tool(path) {
        return Err(model_soup::Error::Output {
            path: path.to_path_buf(),
            reason: "is where a candidate soup goes, but it is not a soup this tool wrote (a killed run's leftover would be); move it away or choose another --work-dir".into(),
        }
        .into());
    }
    Ok(())
}

/// Removes a killed run's leftover candidate at `path`, after [`check_leftover`]: only a
/// file or model directory that carries the tool's mark goes; anything else stops the run.
pub fn remove_leftover(path: &Path) -> Result<()> {
    let Ok(meta) = path.symlink_metadata() else {
        return Ok(());
    };
    check_leftover(path)?;
    let removed = if meta.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    match removed {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(
                e.kind(),
                format!("cannot remove this killed run's leftover candidate: {e}"),
            ),
        }),
        _ => Ok(()),
    }
}

/// A full disk while writing a candidate names the flag that moves candidates, `--work-dir`,
/// not `-o` (which the core's writer suggests for an output).
fn full_work_dir(e: Error, path: &Path) -> Error {
    match e {
        Error::Format(model_soup::Error::Output { path: p, reason })
            if p == path && reason.starts_with("no space left on device") =>
        {
            model_soup::Error::Output {
                path: p,
                reason: "no space left on device for this candidate soup; free some space or give --work-dir a folder with room for the candidates".into(),
            }
            .into()
        }
        other => other,
    }
}

impl Drop for Written {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        let _ = if self.path.is_dir() {
            std::fs::remove_dir_all(&self.path)
        } else {
            std::fs::remove_file(&self.path)
        };
    }
}

/// The sha256 of a checkpoint on disk: of the file, or for a directory, of the list of its
/// regular files' sha256 and names (`sha256sum` lines, sorted by name).
pub fn sha256(path: &Path) -> Result<String> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    if !path.is_dir() {
        return sha256_file(path);
    }
    let mut names = Vec::new();
    for entry in std::fs::read_dir(path).map_err(io)? {
        let entry = entry.map_err(io)?;
        if entry.path().is_file() {
            names.push(entry.file_name());
        }
    }
    names.sort();
    let mut manifest = String::new();
    for name in names {
        let digest = sha256_file(&path.join(&name))?;
        manifest.push_str(&format!("{digest}  {}\n", name.to_string_lossy()));
    }
    Ok(hex(&Sha256::digest(manifest.as_bytes())))
}

fn sha256_file(path: &Path) -> Result<String> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        if soup::interrupted() {
            return Err(model_soup::Error::Interrupted.into());
        }
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io(e)),
        };
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_stable_and_short() {
        assert_eq!(name(&[3]), "ingredient-3");
        assert_eq!(name(&[3, 0, 5]), "soup-3-0-5");
        let many: Vec<usize> = (0..60).collect();
        let long = name(&many);
        assert!(long.starts_with("soup-60-") && long.len() == "soup-60-".len() + 16);
        assert_eq!(long, name(&many));
        assert_ne!(name(&[0, 1]), name(&[1, 0]));
        for members in [&[3, 0, 5][..], &[0, 1], &many] {
            assert!(is_name(&name(members)));
            assert!(is_name(&format!("{}.safetensors", name(members))));
        }
        for other in [
            "soup-search.jsonl",
            "soup-final.safetensors",
            "soup-3",
            "soup-",
            "soup--1",
            "soup-1-",
            "ingredient-3",
            "soup-0-1.safetensors.log",
        ] {
            assert!(!is_name(other), "{other}");
        }
    }

    #[test]
    fn sha256_of_a_file_is_the_standard_digest() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(
            sha256(&p).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
