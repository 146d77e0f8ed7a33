//! A recipe's text read as YAML the way mergekit reads it (PyYAML's `safe_load`, YAML 1.1),
//! refusing in milliseconds what would take the parser minutes or gigabytes: deep nesting and
//! alias bombs.

use std::cell::Cell;

use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor,
};
use serde_yaml::value::{Tag, TaggedValue};
use serde_yaml::{Mapping, Value};

/// Reads a recipe's text into values as PyYAML's `safe_load` gives them to mergekit: YAML 1.1,
/// where an unquoted `yes`, `off`, `1_000`, `010` (octal) or `1:30` (base 60) is a bool or a
/// number and `0o10` or `1e3` a string, while a quoted scalar is always a string. `<<: *name`
/// merge keys are applied. The error is the reason, worded for "the recipe {reason}".
pub(super) fn load(text: &str) -> Result<Value, String> {
    check_nesting(text)?;
    check_expanded_size(text)?;
    // serde_yaml reads YAML 1.2, where `yes` is a string and `0o10` a number, and its values
    // don't say whether a scalar was quoted. Its tree gives the document's shape; a second pass
    // over the same text asks for each scalar as written, and resolves the unquoted ones as
    // PyYAML does.
    let shape: Value = serde_yaml::from_str(text).map_err(|e| syntax_error(&e))?;
    let mut doc = match &shape {
        Value::Mapping(_) | Value::Sequence(_) => Resolve {
            shape: &shape,
            text,
        }
        .deserialize(serde_yaml::Deserializer::from_str(text))
        .map_err(|e| format!("is not valid YAML as mergekit reads it: {e}"))?,
        // Not a recipe, which the caller says.
        _ => shape,
    };
    doc.apply_merge()
        .map_err(|e| format!("is not valid YAML: {e}"))?;
    Ok(doc)
}

/// A parse error, worded for "the recipe {reason}".
fn syntax_error(e: &serde_yaml::Error) -> String {
    let e = e.to_string();
    if e.contains("as u128") || e.contains("as i128") {
        // serde_yaml holds integers in 64 bits and words a larger one as a type error.
        format!("{e}: {PAST_64_BITS}")
    } else if e.contains("more than one document") {
        // Valid YAML, which mergekit-yaml refuses too; mergekit-multi chains such documents,
        // each merge feeding the next.
        "holds several YAML documents (separated by ---), and a recipe is one merge; a mergekit-multi file chains merges: run each document as its own recipe, giving each the path of the merge it uses".into()
    } else {
        format!("is not valid YAML: {e}")
    }
}

const PAST_64_BITS: &str =
    "the number is past 64 bits; every whole number in a recipe (a random_seed, say) is below 2^64";

/// The second pass of [`load`]: the value at `shape`'s place in the document, read again from
/// `text` with each scalar as written.
struct Resolve<'s, 'de> {
    shape: &'s Value,
    text: &'de str,
}

impl<'s, 'de> Resolve<'s, 'de> {
    fn at(&self, shape: &'s Value) -> Resolve<'s, 'de> {
        Resolve {
            shape,
            text: self.text,
        }
    }
}

impl<'de> DeserializeSeed<'de> for Resolve<'_, 'de> {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        match self.shape {
            Value::Sequence(_) => d.deserialize_seq(self),
            Value::Mapping(_) => d.deserialize_map(self),
            Value::Tagged(t) => Err(de::Error::custom(format!(
                "the tag {} is not one PyYAML's safe loader reads (mergekit refuses the file): remove it",
                t.tag
            ))),
            _ => d.deserialize_str(self),
        }
    }
}

impl<'de> Visitor<'de> for Resolve<'_, 'de> {
    type Value = Value;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("the value the first reading found here")
    }
    // serde_yaml hands over a scalar written on one line without escapes as a slice of the
    // text: a quoted one without its quotes.
    fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Value, E> {
        if quoted(self.text, s) {
            Ok(Value::String(s.to_string()))
        } else {
            plain(s).map_err(E::custom)
        }
    }
    // Any other scalar is a block scalar, a quoted one with escapes or line breaks, or a plain
    // one over several lines, whose folded text (holding a space) PyYAML resolves to no number
    // or bool either.
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Value, E> {
        Ok(Value::String(s.to_string()))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let Value::Sequence(items) = self.shape else {
            return Err(out_of_step());
        };
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            match seq.next_element_seed(self.at(item))? {
                Some(v) => out.push(v),
                None => return Err(out_of_step()),
            }
        }
        Ok(Value::Sequence(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let Value::Mapping(entries) = self.shape else {
            return Err(out_of_step());
        };
        let mut out = Mapping::with_capacity(entries.len());
        for (key, value) in entries {
            let Some(key) = map.next_key_seed(self.at(key))? else {
                return Err(out_of_step());
            };
            // Keys that YAML 1.1 reads alike (yes and on) are one key, the last value winning,
            // as in PyYAML; such keys are no strings, which a recipe's keys must be.
            out.insert(key, map.next_value_seed(self.at(value))?);
        }
        Ok(Value::Mapping(out))
    }
}

/// The second reading met another shape than the first; both read one text, so this is a bug.
fn out_of_step<E: de::Error>() -> E {
    E::custom("the second reading found another document than the first (a bug: please report it)")
}

/// Whether `s`, a slice of `text`, is the inside of a quoted scalar: it sits between two of the
/// same quotes, where a plain scalar never follows a quote. A slice from elsewhere, which
/// serde_yaml doesn't hand over, is taken for quoted: the string as written.
fn quoted(text: &str, s: &str) -> bool {
    let bytes = text.as_bytes();
    let start = (s.as_ptr() as usize).wrapping_sub(bytes.as_ptr() as usize);
    if start > bytes.len() {
        return true;
    }
    match (
        start.checked_sub(1).map(|i| bytes[i]),
        bytes.get(start + s.len()),
    ) {
        (Some(q @ (b'"' | b'\'')), Some(&end)) => q == end,
        _ => false,
    }
}

/// A plain (unquoted) scalar as PyYAML's resolver and `SafeLoader`'s constructors read it:
/// YAML 1.1's null, bool, float, int and timestamp forms, else a string.
fn plain(s: &str) -> Result<Value, String> {
    let unsigned = s.strip_prefix(['-', '+']).unwrap_or(s);
    let negative = s.starts_with('-');
    Ok(match s {
        "" | "~" | "null" | "Null" | "NULL" => Value::Null,
        "yes" | "Yes" | "YES" | "true" | "True" | "TRUE" | "on" | "On" | "ON" => Value::Bool(true),
        "no" | "No" | "NO" | "false" | "False" | "FALSE" | "off" | "Off" | "OFF" => {
            Value::Bool(false)
        }
        // The merge key, which `load` applies.
        "<<" => Value::String(s.to_string()),
        // YAML 1.1's "value" key, which PyYAML's safe loader has no constructor for.
        "=" => {
            return Err(
                "an unquoted = is a YAML 1.1 tag PyYAML can't read, so mergekit refuses the file: quote it".into(),
            )
        }
        _ if yaml11_float(s) => {
            let digits = unsigned.replace('_', "").to_ascii_lowercase();
            let x = match digits.as_str() {
                ".inf" => f64::INFINITY,
                ".nan" => f64::NAN,
                d if d.contains(':') => base_60_float(d)
                    .ok_or_else(|| format!("{s} is not a number PyYAML can read: quote it"))?,
                d => d
                    .parse::<f64>()
                    .map_err(|_| format!("{s} is not a number PyYAML can read: quote it"))?,
            };
            Value::Number(if negative { -x } else { x }.into())
        }
        _ if yaml11_int(s) => {
            let digits = unsigned.replace('_', "");
            let (radix, body) = if let Some(binary) = digits.strip_prefix("0b") {
                (2, binary)
            } else if let Some(hex) = digits.strip_prefix("0x") {
                (16, hex)
            } else if digits.starts_with('0') {
                (8, digits.as_str())
            } else {
                (10, digits.as_str())
            };
            let magnitude = if body.is_empty() {
                // `0x_` is PyYAML's int, whose constructor fails on no digits.
                return Err(format!("{s} is not a number PyYAML can read: quote it"));
            } else if body.contains(':') {
                base_60_int(body)
            } else {
                // The pattern let only the radix's digits through: this fails on size alone.
                u128::from_str_radix(body, radix).ok()
            };
            let too_big = || format!("{s}: {PAST_64_BITS}");
            let magnitude = magnitude.ok_or_else(too_big)?;
            let number = if negative {
                i64::try_from(magnitude)
                    .ok()
                    .map(|m| serde_yaml::Number::from(-m))
                    .or((magnitude == 1 << 63).then(|| i64::MIN.into()))
            } else {
                u64::try_from(magnitude).ok().map(serde_yaml::Number::from)
            };
            Value::Number(number.ok_or_else(too_big)?)
        }
        // A date (mergekit's pydantic models take it for no number, path or name).
        _ if yaml11_timestamp(s) => Value::Tagged(Box::new(TaggedValue {
            tag: Tag::new("timestamp"),
            value: Value::String(s.to_string()),
        })),
        _ => Value::String(s.to_string()),
    })
}

/// The whole number whose digits of base 60 are `d`'s parts between colons (YAML 1.1's `1:30`
/// is 90); `None` past 128 bits.
fn base_60_int(d: &str) -> Option<u128> {
    let mut value = 0u128;
    let mut place = Some(1u128);
    for digit in d.rsplit(':') {
        value = value.checked_add(digit.parse::<u128>().ok()?.checked_mul(place?)?)?;
        place = place?.checked_mul(60);
    }
    Some(value)
}

/// The float whose digits of base 60 are `d`'s parts between colons (`1:30.5` is 90.5), summed
/// in PyYAML's order, the last part first.
fn base_60_float(d: &str) -> Option<f64> {
    let mut value = 0.0;
    let mut place = 1.0;
    for digit in d.rsplit(':') {
        value += digit.parse::<f64>().ok()? * place;
        place *= 60.0;
    }
    Some(value)
}

/// Decimal digits and underscores, at least one digit first: `[0-9][0-9_]*`, or with `first`
/// `[1-9][0-9_]*`.
fn digits_from(s: &str, first: std::ops::RangeInclusive<u8>) -> bool {
    s.as_bytes().first().is_some_and(|b| {
        first.contains(b) && s[1..].bytes().all(|b| b.is_ascii_digit() || b == b'_')
    })
}

/// A base-60 digit after a colon: `[0-5]?[0-9]`.
fn sexagesimal_digit(s: &str) -> bool {
    match s.as_bytes() {
        [d] => d.is_ascii_digit(),
        [t, d] => (b'0'..=b'5').contains(t) && d.is_ascii_digit(),
        _ => false,
    }
}

/// `head(:[0-5]?[0-9])+`: at least one colon, each part after one a base-60 digit.
fn sexagesimal(s: &str, head: impl Fn(&str) -> bool) -> bool {
    let mut parts = s.split(':');
    let first = parts.next().is_some_and(head);
    let mut rest = parts.peekable();
    first && rest.peek().is_some() && rest.all(sexagesimal_digit)
}

/// PyYAML's float pattern (YAML 1.1): a dot is required, an exponent needs its sign.
fn yaml11_float(s: &str) -> bool {
    let unsigned = s.strip_prefix(['-', '+']).unwrap_or(s);
    let fraction = |f: &str| f.bytes().all(|b| b.is_ascii_digit() || b == b'_');
    let (mantissa, exponent) = match s.find(['e', 'E']) {
        Some(at) => (&s[..at], &s[at + 1..]),
        None => (s, ""),
    };
    let exponent_ok = exponent.is_empty()
        || exponent
            .strip_prefix(['-', '+'])
            .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()));
    let signed_mantissa = mantissa.strip_prefix(['-', '+']).unwrap_or(mantissa);
    // [-+]?[0-9][0-9_]*\.[0-9_]*([eE][-+][0-9]+)?
    let decimal = exponent_ok
        && signed_mantissa
            .split_once('.')
            .is_some_and(|(i, f)| digits_from(i, b'0'..=b'9') && fraction(f));
    // \.[0-9][0-9_]*([eE][-+][0-9]+)? (no sign)
    let bare = exponent_ok
        && mantissa
            .strip_prefix('.')
            .is_some_and(|f| digits_from(f, b'0'..=b'9'));
    // [-+]?[0-9][0-9_]*(:[0-5]?[0-9])+\.[0-9_]*
    let base_60 = unsigned.split_once('.').is_some_and(|(whole, f)| {
        fraction(f) && sexagesimal(whole, |h| digits_from(h, b'0'..=b'9'))
    });
    decimal
        || bare
        || base_60
        || matches!(unsigned, ".inf" | ".Inf" | ".INF")
        || matches!(s, ".nan" | ".NaN" | ".NAN")
}

/// PyYAML's int pattern (YAML 1.1): binary, octal after a leading 0, decimal, hex, base 60.
fn yaml11_int(s: &str) -> bool {
    let u = s.strip_prefix(['-', '+']).unwrap_or(s);
    let radix = |prefix: &str, digit: fn(u8) -> bool| {
        u.strip_prefix(prefix)
            .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b == b'_' || digit(b)))
    };
    radix("0b", |b| matches!(b, b'0' | b'1'))
        || radix("0", |b| (b'0'..=b'7').contains(&b))
        || radix("0x", |b| b.is_ascii_hexdigit())
        || u == "0"
        || digits_from(u, b'1'..=b'9')
        || sexagesimal(u, |h| digits_from(h, b'1'..=b'9'))
}

/// PyYAML's timestamp pattern: `2024-01-31`, or a date with a time.
fn yaml11_timestamp(s: &str) -> bool {
    let b = s.as_bytes();
    let digit = |i: usize| b.get(i).is_some_and(u8::is_ascii_digit);
    if b.len() == 10
        && (0..10).all(|i| {
            if i == 4 || i == 7 {
                b[i] == b'-'
            } else {
                digit(i)
            }
        })
    {
        return true;
    }
    // [0-9]{4}-[0-9][0-9]?-[0-9][0-9]?([Tt]|[ \t]+)[0-9][0-9]?:[0-9][0-9]:[0-9][0-9]...
    let Some((date, time)) = s.split_once(['T', 't', ' ', '\t']) else {
        return false;
    };
    let mut date = date.split('-');
    let field = |f: Option<&str>, lens: std::ops::RangeInclusive<usize>| {
        f.is_some_and(|f| lens.contains(&f.len()) && f.bytes().all(|b| b.is_ascii_digit()))
    };
    let time = time.trim_start_matches([' ', '\t']);
    let mut clock = time.splitn(3, ':');
    field(date.next(), 4..=4)
        && field(date.next(), 1..=2)
        && field(date.next(), 1..=2)
        && date.next().is_none()
        && field(clock.next(), 1..=2)
        && field(clock.next(), 2..=2)
        && clock
            .next()
            .is_some_and(|sec| sec.len() >= 2 && sec.as_bytes()[..2].iter().all(u8::is_ascii_digit))
}

/// The deepest nesting of brackets or indentation accepted: real recipes nest four or five
/// levels. The YAML parser's time grows with the square of the nesting, so a deep file is
/// refused before it is parsed.
const MAX_NESTING: usize = 32;

fn check_nesting(text: &str) -> std::result::Result<(), String> {
    let too_deep = || {
        format!(
            "nests deeper than {MAX_NESTING} levels; a mergekit recipe nests a few levels: is this the right file?"
        )
    };
    if nesting(text, &[]) <= MAX_NESTING {
        return Ok(());
    }
    // A chat template given as a block scalar (`chat_template: |`) is Jinja, full of `{%`,
    // JSON fragments with unbalanced braces, and indented lines, none of which nest YAML.
    // Which lines are a block scalar's is only guessed here (a `|` line inside a multi-line
    // quoted string is no block scalar, and the "scalar" after it can close the quote and
    // open real brackets), so the guess is checked by the parser itself before the lines are
    // let off: with their brackets replaced by markers, the text is at most as deep as
    // counted, cheap to parse, and each marker must come back inside a string. A marker ends
    // in ` #`, which a plain scalar can't hold (it starts a comment), so it came back from a
    // quoted or block scalar that began before it; the original text's brackets sit in the
    // same scalar, as brackets change nothing inside one.
    let scalars = block_scalar_lines(text);
    if !scalars.contains(&true) || text.contains(MARK_OPEN) || nesting(text, &scalars) > MAX_NESTING
    {
        return Err(too_deep());
    }
    let mut masked = String::with_capacity(text.len() + 64);
    let mut marks = 0usize;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        if scalars.get(i) != Some(&true) {
            masked.push_str(line);
            continue;
        }
        for c in line.chars() {
            if matches!(c, '[' | ']' | '{' | '}') {
                masked.push_str(&format!("{MARK_OPEN}{marks}{MARK_CLOSE}"));
                marks += 1;
            } else {
                masked.push(c);
            }
        }
    }
    let found = std::cell::RefCell::new(vec![false; marks]);
    match walk(&masked, Some(&found)) {
        Ok(()) if found.into_inner().iter().all(|&f| f) => Ok(()),
        Ok(()) => Err(too_deep()),
        // A YAML error elsewhere in the file (or an alias bomb) is what to report, at its own
        // line and column, which the markers shift: it is found again with the scalars'
        // brackets blanked instead, as cheap to parse. If that text parses, only the markers
        // broke it: the lines were no block scalar, and their brackets nest.
        Err(_) => match walk(&blanked(text, &scalars), None) {
            Err(reason) => Err(reason),
            Ok(()) => Err(too_deep()),
        },
    }
}

/// `text` with the brackets of the lines `scalars` marks replaced by `.`, one byte for one, so
/// that every line and column stays where it was. A `.` means nothing to YAML, even after a
/// backslash (`"\["` is as wrong an escape as `"\."`).
fn blanked(text: &str, scalars: &[bool]) -> String {
    text.split_inclusive('\n')
        .enumerate()
        .map(|(i, line)| {
            if scalars.get(i) == Some(&true) {
                line.replace(['[', ']', '{', '}'], ".")
            } else {
                line.to_string()
            }
        })
        .collect()
}

/// The markers that stand in for a block scalar's brackets while `check_nesting` checks that
/// they are in one: `MARK_OPEN`, the bracket's index, `MARK_CLOSE`. Private-use characters, so
/// a recipe that holds `MARK_OPEN` itself (which could fake a marker) is never let off.
const MARK_OPEN: char = '\u{E000}';
const MARK_CLOSE: &str = "\u{E001} #";

/// The deepest nesting of `text`'s brackets and indentation, leaving out the lines whose
/// entry in `skip` is true.
fn nesting(text: &str, skip: &[bool]) -> usize {
    let mut depth = 0usize;
    let mut deepest = 0usize;
    for (i, line) in text.lines().enumerate() {
        // A line that starts with `#` is a comment, or text inside a quoted or block scalar:
        // either way it nests nothing, and its brackets ("layers [0, 8)") are not flow
        // collections. Anything else is counted whole, quotes included: telling a quote that
        // opens a string from an apostrophe in a plain one takes a YAML parser, and a guess
        // that hid real brackets let a one-line bomb through to minutes of parsing.
        if line.trim_start().starts_with('#') || skip.get(i) == Some(&true) {
            continue;
        }
        let indent = line.len() - line.trim_start_matches([' ', '-']).len();
        deepest = deepest.max(indent / 2);
        for c in line.chars() {
            match c {
                '[' | '{' => {
                    depth += 1;
                    deepest = deepest.max(depth);
                }
                ']' | '}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        if deepest > MAX_NESTING {
            // Counting on can only go deeper.
            break;
        }
    }
    deepest
}

/// For each line, whether it looks like the text of a block scalar: a line after one ending in
/// `key: |` or `- >` (with any chomping or indentation indicator, and a comment), up to the
/// first line not indented past the key. Only a guess; `check_nesting` has it confirmed.
fn block_scalar_lines(text: &str) -> Vec<bool> {
    let lines: Vec<&str> = text.lines().collect();
    let mut found = vec![false; lines.len()];
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        i += 1;
        let content = line.trim_start_matches([' ', '-']);
        if content.starts_with('#') {
            continue;
        }
        let head = match content.find(" #") {
            Some(at) => &content[..at],
            None => content,
        }
        .trim_end();
        let head = head.trim_end_matches(|c: char| c == '+' || c == '-' || c.is_ascii_digit());
        let Some(before) = head.strip_suffix(['|', '>']) else {
            continue;
        };
        if !(before.is_empty()
            || (before.ends_with([' ', '\t']) && before.trim_end().ends_with(':')))
        {
            continue;
        }
        let parent = line.len() - content.len();
        while i < lines.len() {
            let next = lines[i];
            let body = next.trim_start_matches(' ');
            if !body.trim().is_empty() && next.len() - body.len() <= parent {
                break;
            }
            found[i] = true;
            i += 1;
        }
    }
    found
}

/// The most values (scalars, lists and mappings) a recipe may hold once its aliases are
/// expanded. Without aliases a recipe within `MAX_RECIPE_BYTES` holds at most about half a
/// million, so this only stops alias bombs: a 200 KB file of one 40 000-item list aliased
/// 40 000 times expands to 1.6 billion values, and serde_yaml's own repetition limit (100
/// aliases per event) lets that one through to a tree of tens of gigabytes.
const MAX_VALUES: usize = 1 << 20;

/// Counts the values of `text`, aliases expanded, without building them, so that a bomb is
/// refused after `MAX_VALUES` cheap steps rather than after allocating its tree. Any other
/// error is left to the real parse, which words it.
fn check_expanded_size(text: &str) -> std::result::Result<(), String> {
    match walk(text, None) {
        Err(reason) if reason == too_many_values() => Err(reason),
        _ => Ok(()),
    }
}

fn too_many_values() -> String {
    format!(
        "expands to more than {MAX_VALUES} values through its aliases (*name); a mergekit recipe holds a few hundred: remove the aliases, or is this the right file?"
    )
}

/// Parses `text` without building its values, counting them (and noting `marks`, see
/// [`Count`]): the error is `too_many_values` past `MAX_VALUES`, else the parser's.
fn walk(text: &str, marks: Option<&std::cell::RefCell<Vec<bool>>>) -> Result<(), String> {
    let count = Cell::new(0);
    match (Count {
        count: &count,
        marks,
    })
    .deserialize(serde_yaml::Deserializer::from_str(text))
    {
        Ok(()) => Ok(()),
        Err(_) if count.get() > MAX_VALUES => Err(too_many_values()),
        Err(e) => Err(syntax_error(&e)),
    }
}

/// A visitor that only counts the values it is shown, failing past `MAX_VALUES`; with
/// `marks`, it also notes which of `check_nesting`'s markers its strings hold.
#[derive(Clone, Copy)]
struct Count<'a> {
    count: &'a Cell<usize>,
    marks: Option<&'a std::cell::RefCell<Vec<bool>>>,
}

impl Count<'_> {
    fn tick<E: de::Error>(self) -> std::result::Result<(), E> {
        self.count.set(self.count.get() + 1);
        if self.count.get() > MAX_VALUES {
            return Err(E::custom("too many values"));
        }
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for Count<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Count<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> std::result::Result<(), E> {
        self.tick()
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> std::result::Result<(), E> {
        self.tick()
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> std::result::Result<(), E> {
        self.tick()
    }
    fn visit_i128<E: de::Error>(self, _: i128) -> std::result::Result<(), E> {
        self.tick()
    }
    fn visit_u128<E: de::Error>(self, _: u128) -> std::result::Result<(), E> {
        self.tick()
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> std::result::Result<(), E> {
        self.tick()
    }
    fn visit_str<E: de::Error>(self, s: &str) -> std::result::Result<(), E> {
        if let Some(marks) = self.marks {
            let mut marks = marks.borrow_mut();
            for (at, open) in s.match_indices(MARK_OPEN) {
                let rest = &s[at + open.len()..];
                let digits =
                    rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
                let n = rest[..digits].parse::<usize>().ok();
                if let Some(seen) = n.filter(|_| rest[digits..].starts_with(MARK_CLOSE)) {
                    if let Some(seen) = marks.get_mut(seen) {
                        *seen = true;
                    }
                }
            }
        }
        self.tick()
    }
    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> std::result::Result<(), E> {
        self.tick()
    }
    fn visit_unit<E: de::Error>(self) -> std::result::Result<(), E> {
        self.tick()
    }
    fn visit_none<E: de::Error>(self) -> std::result::Result<(), E> {
        self.tick()
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        self.tick()?;
        self.deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<(), A::Error> {
        self.tick()?;
        while seq.next_element_seed(self)?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<(), A::Error> {
        self.tick()?;
        while map.next_entry_seed(self, self)?.is_some() {}
        Ok(())
    }
    // A tagged value (`!name value`).
    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> std::result::Result<(), A::Error> {
        self.tick()?;
        let ((), variant) = data.variant_seed(self)?;
        variant.newtype_variant_seed(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A block scalar's lines nest nothing, however its header is written; the same lines
    /// outside one (or after a `|` that only looks like a header) still count.
    #[test]
    fn a_block_scalars_lines_are_left_out_of_the_nesting_once_confirmed() {
        let deep: String = (0..40)
            .map(|i| {
                format!(
                    "{}{{%- if a[{i}] %}}{{{{ '{{' }}}}\n",
                    " ".repeat(2 + 2 * i)
                )
            })
            .collect();
        for header in [
            "chat_template: |",
            "chat_template:   >2",
            "chat_template: |-  # a comment",
            "chat_template: |+",
        ] {
            let text = format!("{header}\n{deep}merge_method: linear\n");
            assert_eq!(check_nesting(&text), Ok(()), "{header}");
        }
        assert!(check_nesting(&format!("chat_template: x\n{deep}")).is_err());
        assert!(check_nesting(&format!("a: \"x\nb: |\n{deep}\"\n")).is_ok());
        // The private-use marker in the text itself could fake a confirmation.
        let marked = format!("chat_template: |\n{deep}  {MARK_OPEN}0{MARK_CLOSE}\n");
        assert!(check_nesting(&marked).is_err());
    }

    /// A YAML error away from a deep block scalar is reported where it is, as it would be
    /// without the scalar; it used to read as "nests deeper than 32 levels".
    #[test]
    fn a_yaml_error_beside_a_block_scalar_is_named_at_its_line_and_column() {
        let deep: String = (0..40)
            .map(|i| format!("{}{{%- if a[{i}] %}}\n", " ".repeat(2 + 2 * i)))
            .collect();
        let broken = "merge_method: linear\ndtype: bfloat16: x\nmodels: [{model: x}]\n";
        let plain = load(broken).unwrap_err();
        assert!(plain.contains("line 2 column 16"), "{plain}");
        for text in [
            format!("{broken}chat_template: |\n{deep}"),
            format!("chat_template: |\n{deep}{broken}"),
        ] {
            let e = load(&text).unwrap_err();
            assert!(
                e.starts_with("is not valid YAML: mapping values are not allowed"),
                "{e}"
            );
            let line = text
                .lines()
                .position(|l| l.contains("bfloat16: x"))
                .unwrap()
                + 1;
            assert!(e.contains(&format!("line {line} column 16")), "{e}");
        }
        // An error inside the scalar's own lines is named at its own column too: a bad
        // escape in a quoted "scalar".
        let text = format!("a: \"x\nb: |\n{deep}  \\[\"\n");
        let e = load(&text).unwrap_err();
        assert!(e.contains("unknown escape") || e.contains("escape"), "{e}");
    }

    /// Each plain scalar as PyYAML 6.0 (mergekit 0.1.5's) `safe_load` reads it.
    #[test]
    fn plain_scalars_resolve_as_pyyaml_reads_them() {
        let int = |i: i64| Value::Number(i.into());
        let float = |x: f64| Value::Number(x.into());
        let text = |s: &str| Value::String(s.into());
        for (s, want) in [
            ("yes", Value::Bool(true)),
            ("On", Value::Bool(true)),
            ("NO", Value::Bool(false)),
            ("off", Value::Bool(false)),
            ("True", Value::Bool(true)),
            ("y", text("y")),
            ("n", text("n")),
            ("t", text("t")),
            ("f", text("f")),
            ("yEs", text("yEs")),
            ("1_000", int(1000)),
            ("1__0", int(10)),
            ("1_", int(1)),
            ("0_1", int(1)),
            ("010", int(8)),
            ("00", int(0)),
            ("09", text("09")),
            ("0x10", int(16)),
            ("0x_1", int(1)),
            ("-0x10", int(-16)),
            ("0b10", int(2)),
            ("-0b11", int(-3)),
            ("0o10", text("0o10")),
            ("+1", int(1)),
            ("-0", int(0)),
            ("1:30", int(90)),
            ("1:60", text("1:60")),
            ("1.", float(1.0)),
            (".5", float(0.5)),
            ("-.5", text("-.5")),
            ("1_000.5", float(1000.5)),
            ("1.5e+3", float(1500.0)),
            ("1.0e5", text("1.0e5")),
            ("1e-1", text("1e-1")),
            ("1e400", text("1e400")),
            ("190:20:30.15", float(685230.15)),
            ("-.inf", float(f64::NEG_INFINITY)),
            ("+.INF", float(f64::INFINITY)),
            ("inf", text("inf")),
            ("~", Value::Null),
            ("Null", Value::Null),
            ("1 000", text("1 000")),
            ("_1", text("_1")),
        ] {
            let doc = load(&format!("v: {s}\n")).unwrap();
            assert_eq!(doc["v"], want, "{s:?}");
        }
        let doc = load("v: .NaN\n").unwrap();
        assert!(doc["v"].as_f64().unwrap().is_nan());
        assert!(matches!(
            load("v: 2024-01-31\n").unwrap()["v"],
            Value::Tagged(_)
        ));
        assert!(matches!(
            load("v: 2024-1-31 10:00:00\n").unwrap()["v"],
            Value::Tagged(_)
        ));
        for s in ["=", "0x_", "0b_"] {
            let e = load(&format!("v: {s}\n")).unwrap_err();
            assert!(e.contains("quote it") && e.contains("line 1"), "{s:?}: {e}");
        }
        // Past 64 bits, however written (and never an overflow here).
        for big in [
            "0x1_0000_0000_0000_0000".to_string(),
            format!("1{}", "0".repeat(60)),
            format!("0{}", "7".repeat(60)),
            format!("-1{}", ":59".repeat(40)),
            format!("0b1{}", "0".repeat(200)),
        ] {
            let e = load(&format!("v: {big}\n")).unwrap_err();
            assert!(e.contains("past 64 bits"), "{big}: {e}");
        }
        assert_eq!(
            load("v: -9223372036854775808\n").unwrap()["v"],
            Value::Number(i64::MIN.into())
        );
        let many = format!("v: 1{}.5\n", ":59".repeat(400));
        assert!(load(&many).unwrap()["v"].as_f64().unwrap().is_infinite());
    }

    /// A quoted scalar is a string whatever it holds, in any position: a key, a list, a flow
    /// mapping, behind an anchor.
    #[test]
    fn quoted_scalars_stay_strings() {
        let doc = load(
            "a: 'yes'\nb: \"1_000\"\nc: [\"on\", '010', yes]\nd: {e: '', f: \"0x10\"}\ng: &x 'off'\nh: *x\n'on': \"a\\x41\"\nk: |\n  yes\n",
        )
        .unwrap();
        let text = |s: &str| Value::String(s.into());
        assert_eq!(doc["a"], text("yes"));
        assert_eq!(doc["b"], text("1_000"));
        assert_eq!(
            doc["c"],
            Value::Sequence(vec![text("on"), text("010"), Value::Bool(true)])
        );
        assert_eq!(doc["d"]["e"], text(""));
        assert_eq!(doc["d"]["f"], text("0x10"));
        assert_eq!(doc["h"], text("off"));
        assert_eq!(doc["on"], text("aA"));
        assert_eq!(doc["k"], text("yes\n"));
        // An unquoted key is resolved like any scalar; merge keys still apply.
        let doc = load("yes: 1\nbase: &b {w: 1_0}\nm:\n  <<: *b\n").unwrap();
        assert_eq!(doc[&Value::Bool(true)], Value::Number(1.into()));
        assert_eq!(doc["m"]["w"], Value::Number(10.into()));
    }
}
