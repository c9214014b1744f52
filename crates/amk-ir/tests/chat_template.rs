//! `amk_ir::chat` with the SmolLM2 fixture template and small templates written in the test:
//! HF's rendering semantics (trim/lstrip blocks, special tokens, `raise_exception`, Python
//! string methods, Python-style `tojson`) and errors that name the file.

use amk_ir::chat::{ChatError, ChatMessage, ChatTemplate};
use std::path::Path;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/smollm2-hf");

fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for (name, body) in files {
        std::fs::write(d.path().join(name), body).unwrap();
    }
    d
}

fn render(files: &[(&str, &str)], msgs: &[ChatMessage], gen: bool) -> Result<String, ChatError> {
    let d = dir_with(files);
    ChatTemplate::from_dir(d.path())?.expect("template").render(msgs, gen)
}

fn user(s: &str) -> ChatMessage {
    ChatMessage::new("user", s)
}

#[test]
fn smollm2_fixture_renders_exactly() {
    let t = ChatTemplate::from_dir(Path::new(DIR)).unwrap().expect("fixture has a template");
    assert!(t.path().ends_with("chat_template.jinja"));
    let out = t.render(&[user("Name three fruits that are red.")], true).unwrap();
    assert_eq!(
        out,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nName three fruits that are red.<|im_end|>\n<|im_start|>assistant\n"
    );
    // With its own system message and no generation prompt.
    let out = t
        .render(
            &[
                ChatMessage::new("system", "Be brief."),
                user("Hi"),
                ChatMessage::new("assistant", "Hello!"),
            ],
            false,
        )
        .unwrap();
    assert_eq!(out, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n");
}

#[test]
fn template_sources_and_precedence() {
    assert!(ChatTemplate::from_dir(dir_with(&[]).path()).unwrap().is_none());
    assert!(ChatTemplate::from_dir(
        dir_with(&[("tokenizer_config.json", r#"{"bos_token":"<s>"}"#)]).path()
    )
    .unwrap()
    .is_none());
    let string = r#"{"chat_template": "A{{ messages[0].content }}"}"#;
    assert_eq!(render(&[("tokenizer_config.json", string)], &[user("x")], false).unwrap(), "Ax");
    let list = r#"{"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D{{ messages|length }}"}]}"#;
    assert_eq!(render(&[("tokenizer_config.json", list)], &[user("x")], false).unwrap(), "D1");
    // chat_template.json, then chat_template.jinja, override tokenizer_config.json.
    let json = r#"{"chat_template": "J"}"#;
    assert_eq!(
        render(
            &[("tokenizer_config.json", string), ("chat_template.json", json)],
            &[user("x")],
            false
        )
        .unwrap(),
        "J"
    );
    let files = [
        ("tokenizer_config.json", string),
        ("chat_template.json", json),
        ("chat_template.jinja", "K"),
    ];
    assert_eq!(render(&files, &[user("x")], false).unwrap(), "K");
}

#[test]
fn bad_template_fields_name_the_file() {
    for (body, needle) in [
        (r#"{"chat_template": 3}"#, "must be a string"),
        (r#"{"chat_template": [{"name": "tool_use", "template": "T"}]}"#, "none named `default`"),
        (r#"{"chat_template": [{"template": "T"}]}"#, "entries must be"),
        ("{oops", "not valid JSON"),
    ] {
        let d = dir_with(&[("tokenizer_config.json", body)]);
        let m = ChatTemplate::from_dir(d.path()).unwrap_err().to_string();
        assert!(m.contains(needle) && m.contains("tokenizer_config.json"), "{body}: {m}");
    }
}

#[test]
fn syntax_error_names_the_file() {
    let d = dir_with(&[("chat_template.jinja", "{% for m in messages %}{{ m.content }")]);
    let e = ChatTemplate::from_dir(d.path()).unwrap_err();
    assert!(matches!(e, ChatError::Syntax { .. }), "{e}");
    assert!(e.to_string().contains("chat_template.jinja"), "{e}");
}

#[test]
fn hf_semantics() {
    let cfg = r#"{"bos_token": {"content": "<s>", "lstrip": false}, "eos_token": "</s>", "pad_token": null}"#;
    // Special tokens, AddedToken objects included; trim_blocks and lstrip_blocks.
    let tmpl = "{{ bos_token }}\n{% for m in messages %}\n    {% if m.role == 'user' %}\n[U]{{ m.content | trim }}\n    {% endif %}\n{% endfor %}\n{% if add_generation_prompt %}\n[A]{% endif %}{{ eos_token }}{{ pad_token is defined }}";
    let out = render(
        &[("tokenizer_config.json", cfg), ("chat_template.jinja", tmpl)],
        &[user(" hi ")],
        true,
    )
    .unwrap();
    // `{{ bos_token }}\n` keeps its newline: trim_blocks only applies after block tags.
    // Booleans print as Python does.
    assert_eq!(out, "<s>\n[U]hi\n[A]</s>False");
    // raise_exception surfaces the template's message.
    let tmpl = "{% if messages[0].role != 'system' %}{{ raise_exception('Conversation must start with a system message') }}{% endif %}";
    let e = render(&[("chat_template.jinja", tmpl)], &[user("x")], false).unwrap_err();
    assert!(matches!(e, ChatError::Render { .. }));
    let m = e.to_string();
    assert!(
        m.contains("Conversation must start with a system message")
            && m.contains("chat_template.jinja"),
        "{m}"
    );
    // Python string methods (pycompat).
    let tmpl = "{{ messages[0].content.strip().upper() }}|{{ messages[0].content.startswith(' a') }}|{{ 'a,b'.split(',') | join('+') }}";
    assert_eq!(
        render(&[("chat_template.jinja", tmpl)], &[user(" abc ")], false).unwrap(),
        "ABC|True|a+b"
    );
    // tojson writes Python's json.dumps format, without HTML escaping.
    let tmpl = r#"{{ {"a": [1, 2], "b": "é<&>"} | tojson }}|{{ [1, {"k": none}] | tojson(indent=2) }}|{{ "é" | tojson(ensure_ascii=true) }}"#;
    assert_eq!(
        render(&[("chat_template.jinja", tmpl)], &[user("x")], false).unwrap(),
        "{\"a\": [1, 2], \"b\": \"é<&>\"}|[\n  1,\n  {\n    \"k\": null\n  }\n]|\"\\u00e9\""
    );
    // tools and documents are none, as transformers passes them; strftime_now works.
    let tmpl = "{{ tools is none }}{{ documents is none }}{{ strftime_now('%Y') | length }}";
    assert_eq!(render(&[("chat_template.jinja", tmpl)], &[user("x")], false).unwrap(), "TrueTrue4");
}

#[test]
fn loop_helpers_used_by_real_templates() {
    // Constructs from Llama 3 / Qwen templates: namespace, loop.last, slicing, string tests.
    let tmpl = "{% set ns = namespace(sys='') %}{% for m in messages %}{% if m['role'] == 'system' %}{% set ns.sys = m['content'] %}{% endif %}{% endfor %}{% for m in messages[1:] %}<{{ m.role }}>{{ m.content }}{% if not loop.last %};{% endif %}{% endfor %}[{{ ns.sys }}]{{ messages[0].content is string }}";
    let msgs = [ChatMessage::new("system", "S"), user("a"), ChatMessage::new("assistant", "b")];
    assert_eq!(
        render(&[("chat_template.jinja", tmpl)], &msgs, false).unwrap(),
        "<user>a;<assistant>b[S]True"
    );
}

#[test]
fn template_is_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<ChatTemplate>();
    assert_send_sync::<ChatError>();
}
