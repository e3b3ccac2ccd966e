//! What became of each object of a config: accepted, ignored or rejected
//! (with every problem found), plus warnings. `straitctl validate` prints
//! it; the agent refuses a config with any rejection.
use std::{fmt, path::PathBuf};

use serde::Serialize;

#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub objects: Vec<ObjectReport>,
    /// Problems with files as a whole (unreadable, not YAML).
    pub files: Vec<FileProblem>,
}

#[derive(Clone, Debug, Serialize)]
pub struct FileProblem {
    pub file: PathBuf,
    pub line: Option<u64>,
    pub reason: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct ObjectReport {
    pub file: PathBuf,
    /// Where the object starts (1-based).
    pub line: u64,
    pub api_version: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub verdict: Verdict,
    pub warnings: Vec<Finding>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", content = "details", rename_all = "lowercase")]
pub enum Verdict {
    Accepted,
    Ignored(String),
    Rejected(Vec<Finding>),
}

/// One problem: where (line, dotted field path) and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub line: u64,
    pub field: String,
    pub reason: String,
}

impl Report {
    /// Objects rejected plus files that could not be read.
    pub fn rejected(&self) -> usize {
        self.files.len()
            + self
                .objects
                .iter()
                .filter(|o| matches!(o.verdict, Verdict::Rejected(_)))
                .count()
    }

    /// One line per rejection (`Kind ns/name: field F: reason`), for a
    /// source that leaves rejected objects out rather than refusing all.
    pub fn rejections(&self) -> Vec<String> {
        self.objects
            .iter()
            .flat_map(|o| {
                let findings = match &o.verdict {
                    Verdict::Rejected(f) => f.as_slice(),
                    _ => &[],
                };
                findings
                    .iter()
                    .map(move |x| format!("{}: field {}: {}", o.object(), x.field, x.reason))
            })
            .collect()
    }

    pub fn warnings(&self) -> usize {
        self.objects.iter().map(|o| o.warnings.len()).sum()
    }
}

impl ObjectReport {
    /// `Kind namespace/name`.
    pub fn object(&self) -> String {
        let name = if self.name.is_empty() {
            "(unnamed)"
        } else {
            &self.name
        };
        if self.kind == "Namespace" || self.kind == "Node" {
            format!("{} {name}", self.kind)
        } else {
            format!("{} {}/{name}", self.kind, self.namespace)
        }
    }
}

/// One line per outcome: `accepted FILE:LINE Kind ns/name`, and one per
/// finding: `rejected FILE:LINE Kind ns/name: field PATH: REASON`
/// (warnings likewise).
impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.files {
            let line = p.line.map(|l| format!(":{l}")).unwrap_or_default();
            writeln!(f, "rejected {}{line}: {}", p.file.display(), p.reason)?;
        }
        for o in &self.objects {
            let file = o.file.display();
            let object = o.object();
            match &o.verdict {
                Verdict::Accepted => writeln!(f, "accepted {file}:{} {object}", o.line)?,
                Verdict::Ignored(why) => writeln!(f, "ignored  {file}:{} {object}: {why}", o.line)?,
                Verdict::Rejected(findings) => {
                    for x in findings {
                        writeln!(
                            f,
                            "rejected {file}:{} {object}: field {}: {}",
                            x.line, x.field, x.reason
                        )?;
                    }
                }
            }
            for w in &o.warnings {
                writeln!(
                    f,
                    "warning  {file}:{} {object}: field {}: {}",
                    w.line, w.field, w.reason
                )?;
            }
        }
        Ok(())
    }
}
