//! `amk ir`, `amk schedule` and `amk verify` end to end on a synthetic model: the default
//! schedule is proven safe (exit 0); the same file with one wait deleted by hand is rejected
//! with a counterexample naming the worker and task (exit 1); a syntax error names line and
//! column (exit 2).

use amk_ir::synth::{write_checkpoint, SynthSpec};
use std::process::Command;

fn amk(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_amk")).args(args).output().expect("amk runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A tiny synthetic checkpoint in a fresh directory: the directory, and the model's path in it.
fn tiny_model() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    write_checkpoint(&SynthSpec::tiny(), &model).unwrap();
    (dir, model)
}

#[test]
fn schedule_verify_and_a_hand_edit() {
    let (dir, model) = tiny_model();
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();

    let (code, _, err) = amk(&["ir", model.to_str().unwrap(), "-o", &p("model.ir.ron")]);
    assert_eq!(code, 0, "{err}");
    std::fs::write(p("knobs.ron"), "(workers: 8, head_rows: 64)").unwrap();
    let (code, _, err) = amk(&[
        "schedule",
        &p("model.ir.ron"),
        "--config",
        &p("knobs.ron"),
        "-o",
        &p("schedule.ron"),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("8 workers"), "{err}");

    let (code, out, err) = amk(&["verify", &p("schedule.ron")]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("verified: 8 workers"), "{out}");
    let (code, out, _) = amk(&["verify", "--json", &p("schedule.ron")]);
    assert_eq!(code, 0);
    let cert: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(cert["workers"], 8);

    // Too few resident blocks for 8 workers.
    let (code, out, _) = amk(&["verify", "--sms", "2", &p("schedule.ron")]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains('8') && out.contains('2'), "{out}");

    // Delete the second wait of the file, as a person editing it might.
    let text = std::fs::read_to_string(p("schedule.ron")).unwrap();
    let mut waits = 0;
    let edited: Vec<&str> = text
        .lines()
        .filter(|l| {
            if l.trim_start().starts_with("Wait(") {
                waits += 1;
                return waits != 2;
            }
            true
        })
        .collect();
    std::fs::write(p("bad.ron"), edited.join("\n")).unwrap();
    let (code, out, _) = amk(&["verify", &p("bad.ron")]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("schedule rejected") && out.contains("worker"), "{out}");
    let (code, out, _) = amk(&["verify", "--json", &p("bad.ron")]);
    assert_eq!(code, 1);
    assert!(serde_json::from_str::<serde_json::Value>(&out).is_ok(), "{out}");

    // Malformed input: a syntax error with its position, and an unknown name.
    std::fs::write(p("broken.ron"), "Schedule(name: \"x\", buffers: [").unwrap();
    let (code, _, err) = amk(&["verify", &p("broken.ron")]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("broken.ron:1:"), "{err}");
    std::fs::write(p("unknown.ron"), text.replacen("Run(\"embed\")", "Run(\"nope\")", 1)).unwrap();
    let (code, _, err) = amk(&["verify", &p("unknown.ron")]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("nope"), "{err}");
    let (code, _, err) = amk(&["verify", &p("missing.ron")]);
    assert_eq!(code, 2, "{err}");
    // Misspelt fields are errors, not silent defaults: a knob, and a field of the schedule.
    std::fs::write(p("typo.ron"), "(worker: 8)").unwrap();
    let (code, _, err) = amk(&["schedule", &p("model.ir.ron"), "--config", &p("typo.ron")]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("typo.ron") && err.contains("`worker`"), "{err}");
    std::fs::write(p("field.ron"), text.replacen("Schedule(", "Schedule(\n    bogus: 1,", 1))
        .unwrap();
    let (code, _, err) = amk(&["verify", &p("field.ron")]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("field.ron:") && err.contains("`bogus`"), "{err}");
    // ... also inside an op, where a misspelt optional field would change what it computes.
    let nested = text.replacen("rope: Some((head_dim: ", "rope: Some((llama_3: 1, head_dim: ", 1);
    assert_ne!(nested, text, "the schedule has a rope spec");
    std::fs::write(p("nested.ron"), nested).unwrap();
    let (code, _, err) = amk(&["verify", &p("nested.ron")]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("`llama_3`"), "{err}");
    let (code, _, err) = amk(&["verify", "--sms", "0", &p("schedule.ron")]);
    assert_eq!(code, 2, "a bad argument, not an unsafe schedule: {err}");

    // A region past its buffer is malformed (2) even when the races it causes come with it.
    let writes = text.find("writes: [(\"").expect("a task that writes");
    let close = writes + text[writes..].find(")]").unwrap();
    let last_comma = writes + text[writes..close].rfind(", ").unwrap();
    let far = format!("{}, 1000000000{}", &text[..last_comma], &text[close..]);
    std::fs::write(p("far.ron"), far).unwrap();
    let (code, out, err) = amk(&["verify", &p("far.ron")]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(out.contains("malformed") && out.contains("1000000000"), "{out}");
}

/// A report that cannot be written is an error with its own status (74), never a panic or a
/// verdict; a reader that closes the pipe early ends amk as SIGPIPE ends other tools.
#[test]
fn unwritable_output_is_an_error_not_a_panic() {
    use std::io::Read;
    use std::process::Stdio;
    let (dir, model) = tiny_model();
    let sched = dir.path().join("s.ron");
    let (code, _, err) = amk(&["schedule", model.to_str().unwrap(), "-o", sched.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");

    if let Ok(full) = std::fs::OpenOptions::new().write(true).open("/dev/full") {
        let out = Command::new(env!("CARGO_BIN_EXE_amk"))
            .args(["verify", "--json", sched.to_str().unwrap()])
            .stdout(full)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(74), "{err}");
        assert!(
            err.contains("cannot write to standard output") && !err.contains("panicked"),
            "{err}"
        );
    }

    let mut child = Command::new(env!("CARGO_BIN_EXE_amk"))
        .args(["verify", "--json", sched.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader goes away before amk writes
    let status = child.wait().unwrap();
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(!err.contains("panicked"), "{err}");
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        // Killed by SIGPIPE, or done writing before the pipe closed (a race the test allows).
        assert!(status.success() || status.signal() == Some(libc_sigpipe()), "{status:?} {err}");
    }
}

/// SIGPIPE's number on Linux and the BSDs.
#[cfg(unix)]
fn libc_sigpipe() -> i32 {
    13
}

/// No stage writes over what it reads, and `synth` does not replace a directory's contents
/// unless told to: each refusal names the path and leaves the file as it was.
#[test]
fn outputs_never_replace_inputs() {
    let (dir, model) = tiny_model();
    let m = model.to_str().unwrap();
    let weights = model.join("model.safetensors");
    let before = std::fs::read(&weights).unwrap();

    for (cmd, out) in [("schedule", "model.safetensors"), ("ir", "config.json")] {
        let target = model.join(out);
        let (code, _, err) = amk(&[cmd, m, "-o", target.to_str().unwrap()]);
        assert_eq!(code, 1, "{cmd}: {err}");
        assert!(err.contains("refusing to overwrite a file this command reads"), "{err}");
    }
    assert_eq!(std::fs::read(&weights).unwrap(), before);
    let ir = dir.path().join("m.ir.ron");
    let (code, _, err) = amk(&["ir", m, "-o", ir.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = amk(&["schedule", ir.to_str().unwrap(), "-o", ir.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("m.ir.ron"), "{err}");

    // `build` rewrites its own output, but not a schedule.ron edited since (a comment too).
    let out = dir.path().join("built");
    let o = out.to_str().unwrap();
    for _ in 0..2 {
        let (code, _, err) = amk(&["build", m, "-o", o, "--no-compile"]);
        assert_eq!(code, 0, "{err}");
    }
    // A build the verifier refuses leaves the directory's schedule and certificate as they were.
    std::fs::write(dir.path().join("cramped.ron"), "(workers: 16, sm_count: 8)").unwrap();
    let cramped = dir.path().join("cramped.ron");
    let (code, _, err) =
        amk(&["build", m, "-o", o, "--no-compile", "--config", cramped.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    let (code, _, err) = amk(&["build", m, "-o", o, "--no-compile"]);
    assert_eq!(code, 0, "{err}");
    let edited =
        format!("{}// keep: my note\n", std::fs::read_to_string(out.join("schedule.ron")).unwrap());
    std::fs::write(out.join("schedule.ron"), &edited).unwrap();
    let (code, _, err) = amk(&["build", m, "-o", o, "--no-compile"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("schedule.ron") && err.contains("--overwrite"), "{err}");
    assert_eq!(std::fs::read_to_string(out.join("schedule.ron")).unwrap(), edited);
    let (code, _, err) = amk(&["build", m, "-o", o, "--no-compile", "--overwrite"]);
    assert_eq!(code, 0, "{err}");

    // `build -o` a file.
    let (code, _, err) = amk(&["build", m, "-o", weights.to_str().unwrap(), "--no-compile"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("is not a directory"), "{err}");

    // `synth` into the model's directory.
    let (code, _, err) = amk(&["synth", "--preset", "tiny", "--seed", "7", "-o", m]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not empty") && err.contains("--overwrite"), "{err}");
    assert_eq!(std::fs::read(&weights).unwrap(), before);
    std::fs::write(model.join("tokenizer_config.json"), "{}").unwrap();
    std::fs::write(model.join("notes.txt"), "mine").unwrap();
    let (code, _, err) = amk(&["synth", "--preset", "tiny", "--seed", "7", "-o", m, "--overwrite"]);
    assert_eq!(code, 0, "{err}");
    assert_ne!(std::fs::read(&weights).unwrap(), before);
    assert!(!model.join("tokenizer_config.json").exists(), "the old model's files go");
    assert!(model.join("notes.txt").exists(), "other files stay");
}

/// `generate --schedule` on the CPU runs the schedule on the schedule executor after the same
/// proof a launch needs: the default schedule gives the reference's tokens, an edited unsafe
/// one is refused, and GPU-only options are named as ignored.
#[test]
fn a_schedule_runs_on_the_cpu_only_when_verified() {
    let (dir, model) = tiny_model();
    let m = model.to_str().unwrap();
    let sched = dir.path().join("s.ron");
    let s = sched.to_str().unwrap();
    let (code, _, err) = amk(&["schedule", m, "-o", s]);
    assert_eq!(code, 0, "{err}");
    let gen = |extra: &[&str]| {
        let mut a = vec!["generate", "-m", m, "-p", "Hello", "--max-new-tokens", "6", "--json"];
        a.extend_from_slice(extra);
        amk(&a)
    };
    let (code, reference, err) = gen(&["--backend", "cpu"]);
    assert_eq!(code, 0, "{err}");
    let (code, scheduled, err) = gen(&["--backend", "cpu", "--schedule", s]);
    assert_eq!(code, 0, "{err}");
    let ids = |out: &str| {
        let v: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
        (v["generated_ids"].clone(), v["backend"].clone())
    };
    assert_eq!(ids(&scheduled).0, ids(&reference).0);
    assert_eq!(ids(&scheduled).1, "cpu-schedule");
    let (code, _, err) = amk(&[
        "generate",
        "-m",
        m,
        "-p",
        "Hi",
        "--max-new-tokens",
        "2",
        "--backend",
        "cpu",
        "--schedule",
        s,
        "--trace",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("ignoring what tunes the GPU kernel: --trace")
            && err.contains("schedule executor"),
        "{err}"
    );

    // The k-cache producer's signal that attention waits for, deleted by hand.
    let text = std::fs::read_to_string(&sched).unwrap();
    let at = text.find("Wait(\"L0.qkv.kv0.done\"").expect("a per-head wait");
    let (start, end) = (text[..at].rfind('\n').unwrap(), at + text[at..].find('\n').unwrap());
    let bad = dir.path().join("bad.ron");
    std::fs::write(&bad, format!("{}{}", &text[..start], &text[end..])).unwrap();
    let (code, out, err) = gen(&["--backend", "cpu", "--schedule", bad.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("refusing to launch an unverified schedule") && err.contains("race"),
        "{err}"
    );
}
