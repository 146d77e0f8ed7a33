//! A recipe's text read as YAML, refusing in milliseconds what would take the parser minutes or
//! gigabytes: deep nesting and alias bombs.

use std::cell::Cell;

use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor,
};

/// The deepest nesting of brackets or indentation accepted: real recipes nest four or five
/// levels. The YAML parser's time grows with the square of the nesting, so a deep file is
/// refused before it is parsed.
const MAX_NESTING: usize = 32;

pub(super) fn check_nesting(text: &str) -> std::result::Result<(), String> {
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
    let count = Cell::new(0);
    let seen = Count {
        count: &count,
        marks: Some(&found),
    }
    .deserialize(serde_yaml::Deserializer::from_str(&masked));
    if seen.is_ok() && found.into_inner().iter().all(|&f| f) {
        Ok(())
    } else {
        Err(too_deep())
    }
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
pub(super) fn check_expanded_size(text: &str) -> std::result::Result<(), String> {
    let count = Cell::new(0);
    let counter = Count {
        count: &count,
        marks: None,
    };
    match counter.deserialize(serde_yaml::Deserializer::from_str(text)) {
        Err(_) if count.get() > MAX_VALUES => Err(format!(
            "expands to more than {MAX_VALUES} values through its aliases (*name); a mergekit recipe holds a few hundred: remove the aliases, or is this the right file?"
        )),
        _ => Ok(()),
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
}
