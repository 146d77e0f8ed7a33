//! A recipe's `chat_template` given to a directory output's tokenizer, as mergekit gives it:
//! `auto` takes the template most of the models have, trimmed; a template's text is taken as
//! it is. The output's `chat_template.jinja` holds it (where transformers 5 saves a template),
//! and a copied `tokenizer_config.json` that names one names the same.

use std::collections::HashMap;
use std::path::PathBuf;

use super::execute::{ExtraFile, Warning};
use super::recipe::ChatTemplate;
use crate::error::Result;
use crate::format::model_dir;
use crate::format::small_file::SourceFile;

/// The template `wanted` stands for among model directories `models` (files are skipped: they
/// have no tokenizer), with the files it was chosen from as they were read (any of them
/// changed could change the choice). `auto` with no model that has one asks for none, as in
/// mergekit.
pub fn choose(wanted: &ChatTemplate, models: &[PathBuf]) -> Option<(String, Vec<SourceFile>)> {
    match wanted {
        ChatTemplate::Text(t) => Some((t.clone(), Vec::new())),
        ChatTemplate::Auto => {
            let mut counts: HashMap<String, (usize, usize)> = HashMap::new();
            let mut read = Vec::new();
            for dir in models.iter().filter(|m| m.is_dir()) {
                // A missing file reads as none, so both are passed as they would be.
                let found = model_dir::chat_template(
                    Some(&dir.join("chat_template.jinja")),
                    Some(&dir.join("tokenizer_config.json")),
                );
                if let Some((t, from)) = found
                    .map(|(t, from)| (t.trim().to_string(), from))
                    .filter(|(t, _)| !t.is_empty())
                {
                    let first = counts.len();
                    counts.entry(t).or_insert((0, first)).0 += 1;
                    read.push(from);
                }
            }
            // The most common; among equally common, the first met in the recipe's order
            // (mergekit's order is a set's, which varies from run to run).
            counts
                .into_iter()
                .max_by_key(|(_, (n, first))| (*n, std::cmp::Reverse(*first)))
                .map(|(t, _)| (t, read))
        }
    }
}

/// Gives the output's tokenizer files in `extra` the template `template`: a new
/// `chat_template.jinja`, and the same template in a copied `tokenizer_config.json` that has a
/// `chat_template` key. Nothing changes when the copied files already give that template;
/// without a tokenizer to give it to, a `chat-template` warning says so, as mergekit warns.
/// `chosen_from` are the files the template was read from, which the output's
/// `chat_template.jinja` is held to.
pub fn apply(
    template: &str,
    chosen_from: &[SourceFile],
    extra: &mut Vec<ExtraFile>,
    warnings: &mut Vec<Warning>,
) -> Result<()> {
    let copied = |name: &str| {
        extra.iter().find_map(|f| match f {
            ExtraFile::Copy { name: n, from } if n == name => Some(from.clone()),
            _ => None,
        })
    };
    let (jinja, config) = (
        copied("chat_template.jinja"),
        copied("tokenizer_config.json"),
    );
    if config.is_none() && copied("tokenizer.json").is_none() {
        warnings.push(Warning::general(
            "chat-template",
            None,
            "the recipe's chat_template was not written: the output has no tokenizer (tokenizer_config.json or tokenizer.json) to give it to; copy one in, or give --base a model directory that has one".into(),
        ));
        return Ok(());
    }
    let given = model_dir::chat_template(jinja.as_deref(), config.as_deref());
    if given.is_some_and(|(t, _)| t == template) {
        return Ok(());
    }
    extra.retain(|f| f.name() != "chat_template.jinja");
    extra.push(ExtraFile::Bytes {
        name: "chat_template.jinja".into(),
        bytes: template.as_bytes().to_vec(),
        from: chosen_from.to_vec(),
    });
    if let Some(path) = config {
        let (bytes, read) = crate::format::small_file::read_source(
            &path,
            crate::format::small_file::MAX_CONFIG_BYTES,
            "tokenizer config",
        )?;
        if let Some(bytes) = model_dir::tokenizer_config_with_template(&bytes, template) {
            let at = extra
                .iter()
                .position(|f| f.name() == "tokenizer_config.json")
                .expect("found above");
            let mut from = chosen_from.to_vec();
            from.push(read);
            extra[at] = ExtraFile::Bytes {
                name: "tokenizer_config.json".into(),
                bytes,
                from,
            };
        }
    }
    Ok(())
}
