//! Paths and arguments as shell words: quoted bytes for the scorer's `sh -c` scripts, and text
//! a user can paste back into a shell for the commands that messages and reports show.

use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// `s` in single quotes for `sh`, whatever bytes it holds: a script's arguments stay data.
pub fn quote(s: &OsStr) -> Vec<u8> {
    let mut out = vec![b'\''];
    for &b in s.as_bytes() {
        if b == b'\'' {
            out.extend_from_slice(b"'\\''");
        } else {
            out.push(b);
        }
    }
    out.push(b'\'');
    out
}

/// `s` as one word of text that bash, zsh and ksh read back as the same bytes: bare when no
/// character needs quoting, in single quotes when it is UTF-8 without control characters,
/// else in `$'...'` with every byte that isn't printable UTF-8 as `\xNN`. A lossy form
/// (U+FFFD for the bytes) would name another file, and a raw newline would split a message.
pub fn word(s: &OsStr) -> String {
    let bytes = s.as_bytes();
    let bare = |b: &u8| b.is_ascii_alphanumeric() || b"-_./+=:,@%".contains(b);
    if !bytes.is_empty() && bytes.iter().all(bare) {
        return s.to_string_lossy().into_owned();
    }
    if let Some(text) = s.to_str().filter(|t| !t.chars().any(char::is_control)) {
        return format!("'{}'", text.replace('\'', r"'\''"));
    }
    let mut out = String::from("$'");
    let hex = |out: &mut String, b: u8| {
        let _ = write!(out, "\\x{b:02x}");
    };
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '\'' || c == '\\' || c.is_control() {
                for b in c.encode_utf8(&mut [0; 4]).bytes() {
                    hex(&mut out, b);
                }
            } else {
                out.push(c);
            }
        }
        for &b in chunk.invalid() {
            hex(&mut out, b);
        }
    }
    out.push('\'');
    out
}

/// A command line as text, each argument a [`word`].
pub fn command(argv: &[OsString]) -> String {
    argv.iter().map(|a| word(a)).collect::<Vec<_>>().join(" ")
}

/// The soup-merge command that writes the soup of `members` to `output` (`placeholder` when
/// the run wrote none).
pub fn merge_command<'a>(
    members: impl IntoIterator<Item = &'a Path>,
    output: Option<&Path>,
    placeholder: &str,
) -> String {
    let mut argv: Vec<OsString> = vec!["soup-merge".into()];
    argv.extend(members.into_iter().map(|p| p.as_os_str().to_owned()));
    argv.push("-o".into());
    argv.push(output.map_or_else(|| placeholder.into(), |p| p.as_os_str().to_owned()));
    command(&argv)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStringExt;

    /// What bash makes of `text` as one argument.
    fn bash_reads(text: &str) -> Vec<u8> {
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg(format!("printf '%s' {text}"))
            .output()
            .expect("bash runs");
        assert!(out.status.success(), "{text}");
        out.stdout
    }

    #[test]
    fn every_word_reads_back_as_the_same_bytes() {
        let cases: &[&[u8]] = &[
            b"runs/ft-1.safetensors",
            b"with space.safetensors",
            b"it's",
            b"new\nline",
            b"tab\there",
            b"/tmp/\xff\xfe.safetensors",
            "caf\u{e9} \u{fc}n\u{ef}code".as_bytes(),
            b"back\\slash'quote\xff",
            b"$HOME `id` $(id) *?[a]",
            b"\x7fdel\xc2\x85nel",
            b"\xffe",
            b"-o",
        ];
        for &bytes in cases {
            let s = OsString::from_vec(bytes.to_vec());
            let text = word(&s);
            assert!(!text.contains('\n'), "{text}");
            assert_eq!(bash_reads(&text), bytes, "{text}");
        }
        assert_eq!(word(OsStr::new("")), "''");
        assert_eq!(bash_reads(&word(OsStr::new(""))), b"");
        assert_eq!(word(OsStr::new("a/b.safetensors")), "a/b.safetensors");
        assert_eq!(word(OsStr::new("it's")), r"'it'\''s'");
        assert_eq!(
            word(&OsString::from_vec(b"/tmp/\xff.s".to_vec())),
            r"$'/tmp/\xff.s'"
        );
    }

    #[test]
    fn a_merge_command_runs_as_shown() {
        let odd = OsString::from_vec(b"ft \xff'1.safetensors".to_vec());
        let shown = merge_command(
            [Path::new("a.safetensors"), Path::new(&odd)],
            None,
            "SOUP.safetensors",
        );
        assert_eq!(
            shown,
            r"soup-merge a.safetensors $'ft \xff\x271.safetensors' -o SOUP.safetensors"
        );
        let args = std::process::Command::new("bash")
            .arg("-c")
            .arg(format!("printf '%s\\0' {}", &shown["soup-merge ".len()..]))
            .output()
            .unwrap()
            .stdout;
        let words: Vec<&[u8]> = args.split(|&b| b == 0).filter(|w| !w.is_empty()).collect();
        assert_eq!(
            words,
            [
                b"a.safetensors".as_slice(),
                odd.as_bytes(),
                b"-o",
                b"SOUP.safetensors"
            ]
        );
    }
}
