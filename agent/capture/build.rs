//! Compiles `ebpf/programs` for the BPF target (the pinned nightly,
//! `-Z build-std=core`, bpf-linker) and leaves the object in
//! `$OUT_DIR/strait` for `lib.rs` to embed.
//!
//! aya-build does the same, but relays every line of the nested cargo's
//! progress as a `cargo:warning`: each build of the agent printed some 35
//! warnings that were not warnings. Here that progress goes to this
//! script's stderr, which cargo shows when the build fails (and with
//! `-vv`); what the compiler says about the programs, and cargo's own
//! warnings, still reach the user as warnings.
use std::{
    env,
    io::{BufRead, BufReader, Read},
    path::PathBuf,
    process::{Command, Stdio},
};

use serde_json::Value;

const PACKAGE: &str = "strait-ebpf";
const PROGRAMS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../ebpf/programs");

fn main() -> Result<(), String> {
    // The programs' own files; their dependencies (ebpf/common) are this
    // script's build-dependencies through strait-ebpf, which cargo tracks.
    println!("cargo:rerun-if-changed={PROGRAMS}");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or("OUT_DIR is not set")?);
    let target = match env::var("CARGO_CFG_TARGET_ENDIAN").as_deref() {
        Ok("little") => "bpfel-unknown-none",
        Ok("big") => "bpfeb-unknown-none",
        other => return Err(format!("unsupported target endianness {other:?}")),
    };
    let arch =
        env::var("CARGO_CFG_TARGET_ARCH").map_err(|e| format!("CARGO_CFG_TARGET_ARCH: {e}"))?;

    let mut cargo = Command::new("rustup");
    cargo
        .args(["run", strait_ebpf_common::BPF_TOOLCHAIN, "cargo", "build"])
        .args([
            "--package",
            PACKAGE,
            "--bins",
            "--release",
            "--target",
            target,
        ])
        .args(["-Z", "build-std=core", "--message-format=json"])
        .arg("--target-dir")
        .arg(out_dir.join("ebpf-target"))
        .current_dir(PROGRAMS)
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            [
                format!("--cfg=bpf_target_arch=\"{arch}\""),
                "-Cdebuginfo=2".into(),
                "-Clink-arg=--btf".into(),
            ]
            .join("\x1f"),
        )
        // The outer build's compiler is not the BPF toolchain's.
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cargo
        .spawn()
        .map_err(|e| format!("starting the eBPF build ({cargo:?}): {e}"))?;

    // Progress goes to stderr, cargo's own warnings among it.
    let mut stderr = child.stderr.take().ok_or("no stderr")?;
    let progress = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let mut objects = Vec::new();
    let mut other_messages = Vec::new();
    let stdout = child.stdout.take().ok_or("no stdout")?;
    for line in BufReader::new(stdout).lines() {
        let line = line.map_err(|e| format!("reading the eBPF build's output: {e}"))?;
        let Ok(message) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        match message["reason"].as_str() {
            Some("compiler-artifact") => {
                if let (Some(name), Some(executable)) = (
                    message["target"]["name"].as_str(),
                    message["executable"].as_str(),
                ) {
                    objects.push((name.to_owned(), PathBuf::from(executable)));
                }
            }
            Some("compiler-message") => {
                let rendered = message["message"]["rendered"].as_str().unwrap_or_default();
                // Errors and notes belong with the failure they explain.
                match message["message"]["level"].as_str() {
                    Some("warning") => warn(rendered),
                    _ => other_messages.push(rendered.to_owned()),
                }
            }
            _ => {}
        }
    }
    let status = child
        .wait()
        .map_err(|e| format!("waiting for the eBPF build: {e}"))?;
    let progress = progress.join().unwrap_or_default();
    for line in progress.lines().filter(|l| l.starts_with("warning:")) {
        warn(line);
    }
    // Shown by cargo only if this script fails, or with -vv.
    eprintln!("{progress}");
    if !status.success() {
        for message in &other_messages {
            eprintln!("{message}");
        }
        return Err(format!(
            "building the eBPF programs ({PACKAGE}) failed ({status}); its output is above"
        ));
    }
    if objects.is_empty() {
        return Err(format!("the eBPF build of {PACKAGE} produced no object"));
    }
    for (name, object) in objects {
        let to = out_dir.join(&name);
        std::fs::copy(&object, &to)
            .map_err(|e| format!("copying {} to {}: {e}", object.display(), to.display()))?;
    }
    Ok(())
}

/// One cargo warning per line of a compiler message.
fn warn(text: &str) {
    for line in text.trim_end().lines() {
        println!("cargo:warning={line}");
    }
}
