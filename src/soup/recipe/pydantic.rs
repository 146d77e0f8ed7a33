//! A recipe's values as mergekit's pydantic models take them for a parameter's type (lax mode):
//! `weight: "0.5"` is 0.5 and `normalize: t` is true, but `weight: "yes"` is no number.

use serde_yaml::Value;

/// pydantic's `float`: a number, a bool (1 or 0), or a string that reads as a float (`" 0.5 "`,
/// `"1_000"`, `"1e-1"`, `"010"`, `"inf"`); `None` for anything else.
pub fn float(v: &Value) -> Option<f64> {
    match v {
        Value::Bool(b) => Some(f64::from(u8::from(*b))),
        Value::Number(n) => n.as_f64(),
        // pydantic-core parses the trimmed text with Rust's own parser, and failing that the
        // untrimmed text without its underscores.
        Value::String(s) => s
            .trim()
            .parse()
            .ok()
            .or_else(|| without_underscores(s)?.parse().ok()),
        _ => None,
    }
}

/// pydantic's `bool`: a bool; 0 or 1, whole or not; or, in any case and untrimmed, one of the
/// strings 0, off, f, false, n, no and 1, on, t, true, y, yes.
pub fn boolean(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => match n.as_f64()? {
            0.0 => Some(false),
            1.0 => Some(true),
            _ => None,
        },
        Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "0" | "off" | "f" | "false" | "n" | "no" => Some(false),
            "1" | "on" | "t" | "true" | "y" | "yes" => Some(true),
            _ => None,
        },
        _ => None,
    }
}

/// pydantic's `int` (within 64 bits): a whole number, a bool, a float without a fraction, or a
/// string of a whole number, trimmed, whose fraction may only be zeros (`"8.0"` is 8, `"8."`
/// is not).
pub fn int(v: &Value) -> Option<i64> {
    const LIMIT: f64 = 9_223_372_036_854_775_808.0; // 2^63
    match v {
        Value::Bool(b) => Some(i64::from(*b)),
        Value::Number(n) => n.as_i64().or_else(|| {
            let x = n.as_f64()?;
            (x.fract() == 0.0 && x.abs() < LIMIT).then_some(x as i64)
        }),
        Value::String(s) => {
            let s = s.trim();
            let whole = match s.split_once('.') {
                Some((whole, zeros)) if !zeros.is_empty() && zeros.bytes().all(|b| b == b'0') => {
                    whole
                }
                Some(_) => return None,
                None => s,
            };
            whole
                .parse()
                .ok()
                .or_else(|| without_underscores(whole)?.parse().ok())
        }
        _ => None,
    }
}

/// The text without its underscores, where none starts or ends it or follows another.
fn without_underscores(s: &str) -> Option<String> {
    (!s.starts_with('_') && !s.ends_with('_') && !s.contains("__")).then(|| s.replace('_', ""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Value {
        Value::String(s.into())
    }

    /// Each case as pydantic 2.14 (mergekit 0.1.5's) validates it.
    #[test]
    fn strings_read_as_floats_as_pydantic_reads_them() {
        for (s, want) in [
            ("0.5", Some(0.5)),
            (" 0.5 ", Some(0.5)),
            ("\t0.5\n", Some(0.5)),
            ("\u{a0}0.5\u{3000}", Some(0.5)),
            ("1e-1", Some(0.1)),
            ("5E-1", Some(0.5)),
            (".5", Some(0.5)),
            ("-.5", Some(-0.5)),
            ("1.", Some(1.0)),
            ("+1", Some(1.0)),
            ("010", Some(10.0)),
            ("00.5", Some(0.5)),
            ("1_000", Some(1000.0)),
            ("1_000.000_1", Some(1000.0001)),
            ("1_e5", Some(100000.0)),
            ("-_1", Some(-1.0)),
            ("1", Some(1.0)),
            ("_1", None),
            ("1_", None),
            ("1__0", None),
            (" 1_0", None),
            ("0x10", None),
            ("0o10", None),
            ("0b1", None),
            ("yes", None),
            ("true", None),
            ("t", None),
            ("y", None),
            ("", None),
            (" ", None),
            ("1,5", None),
            ("0.5 0", None),
            ("\u{661}", None),
            ("\u{200b}0.5", None),
        ] {
            assert_eq!(float(&text(s)), want, "{s:?}");
        }
        for s in ["inf", "-Infinity", "1e400"] {
            assert!(float(&text(s)).unwrap().is_infinite(), "{s:?}");
        }
        assert!(float(&text("nan")).unwrap().is_nan());
        assert_eq!(float(&Value::Bool(true)), Some(1.0));
        assert_eq!(float(&Value::Bool(false)), Some(0.0));
        assert_eq!(float(&Value::Number(8.into())), Some(8.0));
        assert_eq!(float(&Value::Null), None);
    }

    #[test]
    fn bools_read_as_pydantic_reads_them() {
        for (v, want) in [
            (text("t"), Some(true)),
            (text("f"), Some(false)),
            (text("Y"), Some(true)),
            (text("n"), Some(false)),
            (text("YeS"), Some(true)),
            (text("Off"), Some(false)),
            (text("ON"), Some(true)),
            (text("TRUE"), Some(true)),
            (text("False"), Some(false)),
            (text("1"), Some(true)),
            (text("0"), Some(false)),
            (text("1.0"), None),
            (text("2"), None),
            (text(" yes"), None),
            (text("yes "), None),
            (text("nope"), None),
            (Value::Number(1.into()), Some(true)),
            (Value::Number(0.into()), Some(false)),
            (Value::Number(1.0.into()), Some(true)),
            (Value::Number((-0.0).into()), Some(false)),
            (Value::Number(2.into()), None),
            (Value::Number(0.5.into()), None),
            (Value::Number(f64::NAN.into()), None),
            (Value::Bool(true), Some(true)),
            (Value::Null, None),
        ] {
            assert_eq!(boolean(&v), want, "{v:?}");
        }
    }

    #[test]
    fn whole_numbers_read_as_pydantic_reads_them() {
        for (v, want) in [
            (text("8"), Some(8)),
            (text(" 8 "), Some(8)),
            (text("\u{3000}8\n"), Some(8)),
            (text("8.0"), Some(8)),
            (text("8.00"), Some(8)),
            (text("08"), Some(8)),
            (text("+8"), Some(8)),
            (text("-0.0"), Some(0)),
            (text("1_000"), Some(1000)),
            (text("1_0.0"), Some(10)),
            (text("8."), None),
            (text(".0"), None),
            (text("8.5"), None),
            (text("8.0_0"), None),
            (text("_8"), None),
            (text("0x10"), None),
            (text("1e1"), None),
            (text("\u{ff18}"), None),
            (Value::Bool(true), Some(1)),
            (Value::Bool(false), Some(0)),
            (Value::Number(8.into()), Some(8)),
            (Value::Number(8.0.into()), Some(8)),
            (Value::Number((-0.0).into()), Some(0)),
            (Value::Number(8.5.into()), None),
            (Value::Number(9e18.into()), Some(9_000_000_000_000_000_000)),
            (Value::Number(9.3e18.into()), None),
            (Value::Number(f64::NAN.into()), None),
            (Value::Null, None),
        ] {
            assert_eq!(int(&v), want, "{v:?}");
        }
    }
}
