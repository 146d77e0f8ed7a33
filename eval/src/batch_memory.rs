//! The memory one batch's inputs take, bounded before any model runs (for image lists, before
//! any image is decoded), so that `--batch-size` with a large `--resize` is a usage error
//! naming the batch size that fits, not an OOM kill.

use std::path::Path;

use super::error::{Error, Result};
use super::images::size_text;

/// The most one batch's inputs may take, whatever the machine: 2 GiB. A forward pass holds
/// several times its inputs in activations (a ResNet's first convolution alone turns 3
/// channels into 64 at half the resolution, over 5 times the input), so a batch past this
/// needs tens of GiB; and none that large is faster: 2 GiB is over 3000 images at 224x224,
/// where a few hundred already keep a GPU busy. Fixed, so that a command accepted on one
/// machine is accepted on another with as much memory free.
pub const MAX_BATCH_BYTES: u64 = 2 << 30;

/// Bytes of one token of a text batch on its way to the device: its id, its attention mask
/// and its segment id, u32 each (see `text::tokens::batch`).
pub const TOKEN_BYTES: u64 = 12;

/// One example of a split, as a batch holds it.
#[derive(Clone, Debug)]
pub struct Example<'a> {
    /// The split, named in the refusal.
    pub path: &'a Path,
    /// Bytes of one example's inputs, or the least they can be (see `at_least`).
    pub bytes: u64,
    /// Whether examples can be larger than `bytes` (a short-side resize without a crop gives
    /// the square or larger images).
    pub at_least: bool,
    /// What an example is, for the message: "images of 3x2048x2048".
    pub what: String,
    /// The flags that make an example smaller, for the message: "a smaller --resize or
    /// --crop"; empty when none do (a safetensors dataset's inputs).
    pub shrink: &'static str,
}

/// How much one batch's inputs may take here: [`MAX_BATCH_BYTES`], or less when the machine
/// has less memory available; with the words that say which.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limit {
    /// Bytes.
    pub bytes: u64,
    /// Whether the machine's available memory set it, rather than [`MAX_BATCH_BYTES`].
    pub available: bool,
}

impl Limit {
    /// The limit on this machine, read once per process.
    pub fn here() -> Limit {
        static LIMIT: std::sync::OnceLock<Limit> = std::sync::OnceLock::new();
        *LIMIT.get_or_init(|| match available_memory() {
            Some(free) if free < MAX_BATCH_BYTES => Limit {
                bytes: free,
                available: true,
            },
            _ => Limit {
                bytes: MAX_BATCH_BYTES,
                available: false,
            },
        })
    }
}

/// `/proc/meminfo`'s MemAvailable: what the kernel can give without swapping. A few hundred
/// bytes from procfs, which never blocks; `None` where there is none (not Linux). A cgroup's
/// own limit (a container's) is not in it, and then only the fixed cap applies.
fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Refuses a split whose batches of `batch_size` (never more than its `examples`) would take
/// more than this machine's [`Limit`]: a usage error naming the largest `--batch-size` that
/// fits.
pub fn check(batch_size: usize, examples: usize, example: &Example) -> Result<()> {
    match refusal(batch_size, examples, example, Limit::here()) {
        None => Ok(()),
        Some(message) => Err(Error::Format(model_soup::Error::Usage(message))),
    }
}

/// The refusal [`check`] gives under `limit`, if any.
fn refusal(batch_size: usize, examples: usize, example: &Example, limit: Limit) -> Option<String> {
    let n = batch_size.min(examples) as u64;
    let bytes = n.saturating_mul(example.bytes);
    if bytes <= limit.bytes {
        return None;
    }
    let over = if limit.available {
        format!(
            "the {} of memory this machine has available (MemAvailable)",
            size_text(limit.bytes)
        )
    } else {
        format!("the {} one batch's inputs may take", size_text(limit.bytes))
    };
    let fits = limit.bytes / example.bytes.max(1);
    let fix = match (fits, example.shrink) {
        (0, "") => "not even one fits: free some memory".to_string(),
        (0, shrink) => format!("not even one fits: pass {shrink}"),
        (k, "") => format!("pass --batch-size {k} or less"),
        (k, shrink) => format!("pass --batch-size {k} or less, or {shrink}"),
    };
    Some(format!(
        "{}: a batch of {n} {} takes {}{} of inputs, over {over}; {fix}",
        example.path.display(),
        example.what,
        if example.at_least { "at least " } else { "" },
        size_text(bytes)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(side: u64) -> Example<'static> {
        Example {
            path: Path::new("val.csv"),
            bytes: 12 * side * side,
            at_least: false,
            what: format!("images of 3x{side}x{side}"),
            shrink: "a smaller --resize or --crop",
        }
    }

    const CAP: Limit = Limit {
        bytes: MAX_BATCH_BYTES,
        available: false,
    };

    #[test]
    fn the_batch_is_never_larger_than_the_split() {
        // 256 images of 2048x2048 are 12 GiB; 10 of them are 480 MiB.
        assert!(refusal(256, 10, &image(2048), CAP).is_none());
        let line = refusal(256, 1000, &image(2048), CAP).unwrap();
        assert_eq!(
            line,
            "val.csv: a batch of 256 images of 3x2048x2048 takes 12.0 GiB of inputs, over the 2.0 GiB one batch's inputs may take; pass --batch-size 42 or less, or a smaller --resize or --crop"
        );
        // Exactly at the cap is allowed.
        assert!(refusal(42, 1000, &image(2048), CAP).is_none());
        assert!(refusal(43, 1000, &image(2048), CAP).is_some());
    }

    #[test]
    fn less_available_memory_lowers_the_limit_and_says_so() {
        let limit = Limit {
            bytes: 10 << 20,
            available: true,
        };
        let line = refusal(256, 1000, &image(2048), limit).unwrap();
        assert!(
            line.contains("10.0 MiB of memory this machine has available"),
            "{line}"
        );
        assert!(
            line.contains("not even one fits: pass a smaller --resize"),
            "{line}"
        );
        let tensors = Example {
            shrink: "",
            ..image(2048)
        };
        let line = refusal(256, 1000, &tensors, limit).unwrap();
        assert!(
            line.ends_with("not even one fits: free some memory"),
            "{line}"
        );
    }
}
