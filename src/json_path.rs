//! How paths appear in `--json` output, losslessly.
//!
//! A path that is valid UTF-8 is a JSON string. Any other path (Linux paths are bytes) is an
//! object `{"utf8_lossy": "...", "bytes_hex": "..."}`: the lossy text for people, and every
//! byte of the path in lowercase hex for programs. Serialising never fails, so a report with
//! such a path never panics.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde::ser::SerializeStruct;
use serde::Serializer;

/// One path.
pub fn path<S: Serializer>(path: &Path, s: S) -> Result<S::Ok, S::Error> {
    match path.to_str() {
        Some(text) => s.serialize_str(text),
        None => {
            let bytes = path.as_os_str().as_bytes();
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            let mut object = s.serialize_struct("Path", 2)?;
            object.serialize_field("utf8_lossy", &path.to_string_lossy())?;
            object.serialize_field("bytes_hex", &hex)?;
            object.end()
        }
    }
}

/// A path that may be absent (`null`).
pub fn option<S: Serializer>(value: &Option<PathBuf>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(p) => path(p, s),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    #[derive(serde::Serialize)]
    struct Report {
        #[serde(serialize_with = "super::path")]
        path: std::path::PathBuf,
    }

    #[test]
    fn utf8_paths_are_strings_and_others_keep_every_byte() {
        let plain = Report {
            path: "a/b.safetensors".into(),
        };
        assert_eq!(
            serde_json::to_string(&plain).unwrap(),
            r#"{"path":"a/b.safetensors"}"#
        );
        let odd = Report {
            path: std::path::PathBuf::from(<OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(
                b"x\xff.st",
            )),
        };
        let v: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(&odd).unwrap()).unwrap();
        assert_eq!(v["path"]["bytes_hex"], "78ff2e7374");
        assert_eq!(v["path"]["utf8_lossy"], "x\u{fffd}.st");
    }
}
