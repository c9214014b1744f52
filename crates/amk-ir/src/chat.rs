//! Chat templates: the Jinja template a Hugging Face model ships to turn a conversation into
//! a prompt, rendered with minijinja under the semantics `transformers` gives it.
//!
//! `transformers` renders with `trim_blocks` and `lstrip_blocks`, passes `messages`,
//! `add_generation_prompt`, `tools`, `documents` and the special tokens of
//! `tokenizer_config.json`, and offers `raise_exception` and `strftime_now` plus a `tojson`
//! that writes Python's `json.dumps` format. Python string methods (`.strip()`,
//! `.startswith()`, ...) come from `minijinja-contrib`'s pycompat layer. Not supported: the
//! `{% break %}`/`{% continue %}` loop controls and the `{% generation %}` tag.

use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, Error, ErrorKind};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The file `transformers` (4.47 and later) writes the template to.
pub const JINJA_FILE: &str = "chat_template.jinja";
/// The JSON file some `transformers` versions write the template to.
pub const JSON_FILE: &str = "chat_template.json";
/// The tokenizer configuration, which may hold the template and holds the special tokens.
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";

/// Name under which the template is registered (appears in minijinja's messages).
const TEMPLATE_NAME: &str = "chat_template";

/// Special-token fields of `tokenizer_config.json` exposed to the template, as HF does.
const SPECIAL_TOKEN_KEYS: [&str; 7] =
    ["bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token"];

/// An error finding, compiling or rendering a chat template; each names the file involved.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// A file exists but cannot be read.
    #[error("cannot read {}: {source}", file.display())]
    Io { file: PathBuf, source: std::io::Error },
    /// A JSON file is malformed.
    #[error("{} is not valid JSON: {detail}", file.display())]
    Json { file: PathBuf, detail: String },
    /// A field has the wrong form (e.g. `chat_template` neither a string nor a named list).
    #[error("{}: field `{field}` {detail}", file.display())]
    Field { file: PathBuf, field: String, detail: String },
    /// The template does not compile.
    #[error("{}: chat template syntax error: {detail}; fix the template or pass a raw prompt", file.display())]
    Syntax { file: PathBuf, detail: String },
    /// Rendering failed, including a `raise_exception` call by the template itself.
    #[error("{}: cannot render the chat template: {detail}", file.display())]
    Render { file: PathBuf, detail: String },
}

/// One message of a conversation, as HF templates expect it (`role` is `system`, `user`,
/// `assistant`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Who speaks: `system`, `user`, `assistant`, ...
    pub role: String,
    /// What is said, verbatim.
    pub content: String,
}

impl ChatMessage {
    /// A message with the given role and content.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage { role: role.into(), content: content.into() }
    }
}

/// A compiled chat template with the special tokens it is rendered with.
pub struct ChatTemplate {
    env: Environment<'static>,
    file: PathBuf,
    source: String,
    special_tokens: Vec<(&'static str, String)>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("file", &self.file)
            .field("special_tokens", &self.special_tokens)
            .finish()
    }
}

impl ChatTemplate {
    /// Finds the template of the model in `dir`: `chat_template.jinja`, else
    /// `chat_template.json`, else `tokenizer_config.json`'s `chat_template` (a string, or a list
    /// of `{name, template}` of which `default` is used), the order `transformers` prefers.
    /// Returns `None` if the model has no template.
    pub fn from_dir(dir: &Path) -> Result<Option<ChatTemplate>, ChatError> {
        let config_file = dir.join(TOKENIZER_CONFIG_FILE);
        let config = read_json_if_exists(&config_file)?;
        let special_tokens = config.as_ref().map(special_tokens).unwrap_or_default();

        let jinja = dir.join(JINJA_FILE);
        if jinja.is_file() {
            let source = std::fs::read_to_string(&jinja)
                .map_err(|source| ChatError::Io { file: jinja.clone(), source })?;
            return Self::new(source, jinja, special_tokens).map(Some);
        }
        let json_file = dir.join(JSON_FILE);
        if let Some(json) = read_json_if_exists(&json_file)? {
            if let Some(source) = template_field(&json_file, &json)? {
                return Self::new(source, json_file, special_tokens).map(Some);
            }
        }
        if let Some(json) = &config {
            if let Some(source) = template_field(&config_file, json)? {
                return Self::new(source, config_file, special_tokens).map(Some);
            }
        }
        Ok(None)
    }

    /// Compiles a template from its source; `file` is named in errors, `special_tokens` are
    /// `(name, token)` pairs such as `("bos_token", "<s>")` passed to the template.
    pub fn new(
        source: String,
        file: PathBuf,
        special_tokens: Vec<(&'static str, String)>,
    ) -> Result<ChatTemplate, ChatError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(false);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(TEMPLATE_NAME, source.clone())
            .map_err(|e| ChatError::Syntax { file: file.clone(), detail: describe(&e) })?;
        Ok(ChatTemplate { env, file, source, special_tokens })
    }

    /// The file the template came from.
    pub fn path(&self) -> &Path {
        &self.file
    }

    /// The template's source text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders a conversation into a prompt; with `add_generation_prompt` the text ends with
    /// the header of the assistant's turn, ready for generation.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, ChatError> {
        let err = |e: Error| ChatError::Render { file: self.file.clone(), detail: describe(&e) };
        let tmpl = self.env.get_template(TEMPLATE_NAME).map_err(err)?;
        let mut ctx: Vec<(&str, Value)> = vec![
            ("messages", Value::from_serialize(messages)),
            ("add_generation_prompt", Value::from(add_generation_prompt)),
            ("tools", Value::from(())),
            ("documents", Value::from(())),
        ];
        for (k, v) in &self.special_tokens {
            ctx.push((k, Value::from(v.as_str())));
        }
        let ctx: Value = ctx.into_iter().collect();
        tmpl.render(ctx).map_err(err)
    }
}

/// minijinja's message plus the line, when known, and the cause chain.
fn describe(e: &Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(cause) = src {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        src = cause.source();
    }
    s
}

fn read_json_if_exists(file: &Path) -> Result<Option<serde_json::Value>, ChatError> {
    if !file.is_file() {
        return Ok(None);
    }
    let text = std::fs::read(file).map_err(|source| ChatError::Io { file: file.into(), source })?;
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|e| ChatError::Json { file: file.into(), detail: e.to_string() })
}

/// The `chat_template` field: a string, or a list of `{name, template}` whose `default` entry
/// is used; `None` if absent or null.
fn template_field(file: &Path, json: &serde_json::Value) -> Result<Option<String>, ChatError> {
    let field_err = |detail: String| ChatError::Field {
        file: file.into(),
        field: "chat_template".into(),
        detail,
    };
    match json.get("chat_template") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(serde_json::Value::Array(list)) => {
            let mut names = Vec::new();
            for item in list {
                let name = item.get("name").and_then(|n| n.as_str());
                let tmpl = item.get("template").and_then(|t| t.as_str());
                match (name, tmpl) {
                    (Some("default"), Some(t)) => return Ok(Some(t.to_string())),
                    (Some(n), Some(_)) => names.push(n.to_string()),
                    _ => {
                        return Err(field_err(
                            "is a list whose entries must be {\"name\": ..., \"template\": ...}"
                                .into(),
                        ))
                    }
                }
            }
            Err(field_err(format!(
                "lists templates {names:?} but none named `default`; amk uses the default one"
            )))
        }
        Some(other) => Err(field_err(format!(
            "must be a string or a list of named templates, found {}",
            json_kind(other)
        ))),
    }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Special tokens of `tokenizer_config.json`, each a string or an `AddedToken` object with a
/// `content` field.
fn special_tokens(config: &serde_json::Value) -> Vec<(&'static str, String)> {
    SPECIAL_TOKEN_KEYS
        .iter()
        .filter_map(|&k| {
            let v = config.get(k)?;
            let s = v.as_str().or_else(|| v.get("content").and_then(|c| c.as_str()))?;
            Some((k, s.to_string()))
        })
        .collect()
}

/// `raise_exception(message)`: the template rejects the conversation.
fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

/// `tojson(value, indent=None, ensure_ascii=False)` writing what Python's `json.dumps`
/// writes (`", "` and `": "` separators, no HTML escaping), as HF's filter does.
fn tojson(value: Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<Value> = kwargs.get("indent")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => Some(match v.as_str() {
            Some(s) => s.to_string(),
            None => " ".repeat(usize::try_from(v)?),
        }),
    };
    let mut out = Vec::new();
    let res = match &indent {
        Some(ind) => {
            let f = serde_json::ser::PrettyFormatter::with_indent(ind.as_bytes());
            value.serialize(&mut serde_json::Serializer::with_formatter(&mut out, f))
        }
        None => value.serialize(&mut serde_json::Serializer::with_formatter(&mut out, PyCompact)),
    };
    res.map_err(|e| {
        Error::new(ErrorKind::InvalidOperation, "tojson: cannot serialise").with_source(e)
    })?;
    let s = String::from_utf8(out).map_err(|e| {
        Error::new(ErrorKind::InvalidOperation, "tojson: output is not UTF-8").with_source(e)
    })?;
    if ensure_ascii == Some(true) {
        let mut a = String::with_capacity(s.len());
        for c in s.chars() {
            if c.is_ascii() {
                a.push(c);
            } else {
                let mut buf = [0u16; 2];
                for u in c.encode_utf16(&mut buf) {
                    a.push_str(&format!("\\u{u:04x}"));
                }
            }
        }
        return Ok(Value::from(a));
    }
    Ok(Value::from(s))
}

/// serde_json formatter with Python's default `json.dumps` separators.
struct PyCompact;

impl serde_json::ser::Formatter for PyCompact {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(b": ")
    }
}

/// `strftime_now(format)`: the current UTC time formatted with the common `strftime` codes
/// (`%Y %y %m %d %e %H %I %M %S %p %b %B %a %A %j %%`); other codes are kept literally.
fn strftime_now(format: String) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    strftime(&format, secs)
}

/// Formats Unix time `secs` (UTC) with the subset of `strftime` codes above.
fn strftime(format: &str, secs: i64) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] =
        ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (h, mi, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    const CUM: [i64; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = CUM.get((m - 1) as usize).copied().unwrap_or(0) + d + i64::from(leap && m > 2);
    let month = MONTHS.get((m - 1) as usize).copied().unwrap_or("");
    // 1970-01-01 was a Thursday (index 3 from Monday).
    let weekday = DAYS.get((days + 3).rem_euclid(7) as usize).copied().unwrap_or("");

    let mut out = String::with_capacity(format.len() + 16);
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&y.to_string()),
            Some('y') => out.push_str(&format!("{:02}", y.rem_euclid(100))),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('e') => out.push_str(&format!("{d:2}")),
            Some('H') => out.push_str(&format!("{h:02}")),
            Some('I') => out.push_str(&format!("{:02}", if h % 12 == 0 { 12 } else { h % 12 })),
            Some('M') => out.push_str(&format!("{mi:02}")),
            Some('S') => out.push_str(&format!("{s:02}")),
            Some('p') => out.push_str(if h < 12 { "AM" } else { "PM" }),
            Some('b') => out.push_str(month.get(..3).unwrap_or(month)),
            Some('B') => out.push_str(month),
            Some('a') => out.push_str(weekday.get(..3).unwrap_or(weekday)),
            Some('A') => out.push_str(weekday),
            Some('j') => out.push_str(&format!("{yday:03}")),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::strftime;

    #[test]
    fn strftime_known_dates() {
        assert_eq!(strftime("%d %b %Y", 0), "01 Jan 1970");
        // 2024-02-29T13:05:09Z, a Thursday, day 60.
        assert_eq!(
            strftime("%A %B %e %Y %H:%M:%S %j %p %I %%", 1_709_211_909),
            "Thursday February 29 2024 13:05:09 060 PM 01 %"
        );
    }
}
