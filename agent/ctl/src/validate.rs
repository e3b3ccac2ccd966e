//! `straitctl validate -f PATH`: the same checks the agent applies to its
//! config directory, without an agent.
use std::{io::Read, path::Path, process::ExitCode};

use anyhow::{Context, Result};
use strait_config::{Report, Verdict, check_path, check_text};

use crate::output::Output;

pub fn run(path: &Path, output: Output) -> Result<ExitCode> {
    let report = if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading manifests from stdin")?;
        check_text(Path::new("<stdin>"), &text).0
    } else {
        if !path.exists() {
            anyhow::bail!("{}: no such file or directory", path.display());
        }
        check_path(path).0
    };
    print!(
        "{}",
        output.render(&report, |r| format!("{r}{}\n", summary(r)))?
    );
    Ok(if report.rejected() == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn summary(report: &Report) -> String {
    let count = |f: fn(&Verdict) -> bool| report.objects.iter().filter(|o| f(&o.verdict)).count();
    format!(
        "{} object(s): {} accepted, {} ignored, {} rejected; {} warning(s){}",
        report.objects.len(),
        count(|v| matches!(v, Verdict::Accepted)),
        count(|v| matches!(v, Verdict::Ignored(_))),
        count(|v| matches!(v, Verdict::Rejected(_))),
        report.warnings(),
        if report.files.is_empty() {
            String::new()
        } else {
            format!(
                "; {} file(s) not read (not YAML, unreadable)",
                report.files.len()
            )
        }
    )
}
