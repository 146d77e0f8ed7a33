//! Records of a text dataset, one per JSONL line or CSV row, each with its line number, so that an error names the line to fix.

use std::path::Path;

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// One record: its first line in the file (from 1) and its fields.
#[derive(Clone, Debug)]
pub struct Record {
    /// Line number of the record's start, counting from 1.
    pub line: usize,
    /// Field name → value (CSV values are strings).
    pub fields: Map<String, Value>,
}

/// The objects of a JSON Lines text, one per non-blank line.
pub fn jsonl(path: &Path, text: &str, example: &str) -> Result<Vec<Record>> {
    let mut records = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |what: String| Error::Dataset {
            path: path.to_path_buf(),
            reason: format!(
                "line {}: {what}; each line holds one JSON object such as {example}",
                i + 1
            ),
        };
        match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(fields)) => records.push(Record {
                line: i + 1,
                fields,
            }),
            Ok(other) => return Err(bad(format!("is a JSON {}, not an object", kind(&other)))),
            Err(e) => return Err(bad(format!("is not valid JSON ({e})"))),
        }
    }
    Ok(records)
}

/// The rows of a CSV text with a header row, as records of string fields. Fields may be
/// quoted (`"a, ""b"""`), and a quoted field may span lines.
pub fn csv(path: &Path, text: &str) -> Result<Vec<Record>> {
    let bad = |line: usize, what: String| Error::Dataset {
        path: path.to_path_buf(),
        reason: format!("line {line}: {what}"),
    };
    let rows = split_rows(text).map_err(|line| {
        bad(
            line,
            "a quoted field is never closed; close it with \" (write a quote inside one as \"\")"
                .into(),
        )
    })?;
    let mut rows = rows
        .into_iter()
        .filter(|(_, r)| !(r.len() == 1 && r[0].trim().is_empty()));
    let Some((_, header)) = rows.next() else {
        return Ok(Vec::new());
    };
    let header: Vec<String> = header.into_iter().map(|h| h.trim().to_string()).collect();
    for (i, name) in header.iter().enumerate() {
        if header[..i].contains(name) {
            return Err(bad(
                1,
                format!("column '{name}' is named twice in the header"),
            ));
        }
    }
    let mut records = Vec::new();
    for (line, row) in rows {
        if row.len() != header.len() {
            return Err(bad(
                line,
                format!(
                    "has {} fields, but the header has {} ({}); quote fields that contain commas",
                    row.len(),
                    header.len(),
                    header.join(",")
                ),
            ));
        }
        let fields = header
            .iter()
            .cloned()
            .zip(row.into_iter().map(Value::String))
            .collect();
        records.push(Record { line, fields });
    }
    Ok(records)
}

/// Splits CSV text into rows of fields, each with the line it starts on; `Err(line)` for a
/// quote left open from that line.
fn split_rows(text: &str) -> std::result::Result<Vec<(usize, Vec<String>)>, usize> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut line = 1;
    let mut row_line = 1;
    let mut quoted = false;
    let mut quote_line = 0;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => quoted = false,
                '\n' => {
                    line += 1;
                    field.push(c);
                }
                _ => field.push(c),
            }
            continue;
        }
        match c {
            '"' if field.is_empty() => {
                quoted = true;
                quote_line = line;
            }
            ',' => row.push(std::mem::take(&mut field)),
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                row.push(std::mem::take(&mut field));
                rows.push((row_line, std::mem::take(&mut row)));
                line += 1;
                row_line = line;
            }
            _ => field.push(c),
        }
    }
    if quoted {
        return Err(quote_line);
    }
    if !field.is_empty() || !row.is_empty() {
        row.push(field);
        rows.push((row_line, row));
    }
    Ok(rows)
}

/// A JSON value's kind, for messages.
pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_may_be_quoted_across_lines() {
        let text = "text,label\n\"a, \"\"b\"\"\",1\r\n\"two\nlines\",x\n\nlast,2";
        let rows = csv(Path::new("d.csv"), text).unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].fields["text"], "a, \"b\"");
        assert_eq!(rows[0].line, 2);
        assert_eq!(rows[1].fields["text"], "two\nlines");
        assert_eq!(rows[1].fields["label"], "x");
        assert_eq!(
            (rows[2].line, rows[2].fields["label"].as_str()),
            (6, Some("2"))
        );
    }

    #[test]
    fn csv_errors_name_the_line() {
        let e = csv(Path::new("d.csv"), "text,label\na,1\nb,2,3\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("d.csv: line 3: has 3 fields"), "{e}");
        let e = csv(Path::new("d.csv"), "text,label\n\"open,1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("never closed"), "{e}");
        let e = csv(Path::new("d.csv"), "text,text\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("named twice"), "{e}");
    }

    /// Excel's "CSV UTF-8" and Windows editors start a file with a byte-order mark: not part
    /// of the first JSON line or the first CSV column's name.
    #[test]
    fn a_byte_order_mark_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.jsonl");
        std::fs::write(&path, "\u{feff}{\"text\": \"a\", \"label\": 1}\n").unwrap();
        let rows = jsonl(
            &path,
            &crate::dataset::read_text(&path, "dataset").unwrap(),
            "{}",
        )
        .unwrap();
        assert_eq!(rows[0].fields["text"], "a");
        let path = dir.path().join("d.csv");
        std::fs::write(&path, "\u{feff}text,label\na,1\n").unwrap();
        let rows = csv(&path, &crate::dataset::read_text(&path, "dataset").unwrap()).unwrap();
        assert_eq!(rows[0].fields["text"], "a");
    }

    #[test]
    fn jsonl_errors_name_the_line() {
        let e = jsonl(Path::new("d.jsonl"), "{\"text\": \"a\"}\n\n[1]\n", "{}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("d.jsonl: line 3: is a JSON array"), "{e}");
        let e = jsonl(Path::new("d.jsonl"), "{\"text\": \"a\"\n", "{}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 1: is not valid JSON"), "{e}");
        let ok = jsonl(Path::new("d.jsonl"), "\n{\"a\": 1}\n", "{}").unwrap();
        assert_eq!(ok[0].line, 2);
    }
}
