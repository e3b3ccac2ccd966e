//! The local source: a directory of multi-document YAML manifests (the
//! embedded default, and what tests and the demo use), translated into the
//! model. Every object gets a verdict in a [`Report`]; a config with any
//! rejected object is refused as a whole.
use std::{
    fmt,
    path::{Path, PathBuf},
};

use crate::{
    Config,
    check::{self, Findings, Parsed},
    manifest::{self, Header, KindCheck},
    report::{FileProblem, ObjectReport, Report, Verdict},
    yaml,
};

/// Why a config could not be used: its first problem, and how many more.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LoadError {
    pub file: PathBuf,
    /// 1-based line in the file.
    pub line: Option<u64>,
    /// `Kind namespace/name`, once known.
    pub object: Option<String>,
    /// Dotted path of the offending field, once known.
    pub field: Option<String>,
    pub reason: String,
    /// Further problems (see the full report: `straitctl validate`).
    pub more: usize,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(object) = &self.object {
            write!(f, ": {object}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": field {field}")?;
        }
        write!(f, ": {}", self.reason)?;
        if self.more > 0 {
            write!(f, " (and {} more problem(s))", self.more)?;
        }
        Ok(())
    }
}

impl std::error::Error for LoadError {}

impl LoadError {
    fn first_of(report: &Report) -> Option<LoadError> {
        let mut all = report
            .files
            .iter()
            .map(|p| LoadError {
                file: p.file.clone(),
                line: p.line,
                object: None,
                field: None,
                reason: p.reason.clone(),
                more: 0,
            })
            .chain(report.objects.iter().flat_map(|o| {
                let findings = match &o.verdict {
                    Verdict::Rejected(f) => f.as_slice(),
                    _ => &[],
                };
                findings.iter().map(move |x| LoadError {
                    file: o.file.clone(),
                    line: Some(x.line),
                    object: Some(o.object()),
                    field: Some(x.field.clone()),
                    reason: x.reason.clone(),
                    more: 0,
                })
            }));
        let first = all.next()?;
        Some(LoadError {
            more: all.count(),
            ..first
        })
    }
}

/// Reads every `*.yaml`, `*.yml` and `*.json` file in `dir` into one model, or refuses
/// it: a half-valid config is never used.
pub fn load_dir(dir: &Path) -> Result<Config, LoadError> {
    let (report, config) = check_path(dir);
    usable(dir, &report, config)
}

/// The model of a checked directory, or its first problem.
pub(crate) fn usable(
    dir: &Path,
    report: &Report,
    config: Option<Config>,
) -> Result<Config, LoadError> {
    match (LoadError::first_of(report), config) {
        (None, Some(config)) => Ok(config),
        (Some(err), _) => Err(err),
        (None, None) => Err(LoadError {
            file: dir.into(),
            line: None,
            object: None,
            field: None,
            reason: "no config".into(),
            more: 0,
        }),
    }
}

/// Whether a directory entry is read as manifests: YAML, or JSON (which
/// Kubernetes accepts as well).
pub fn is_manifest(path: &Path) -> bool {
    path.extension()
        .is_some_and(|x| x == "yaml" || x == "yml" || x == "json")
}

/// Checks a file or a directory (its `*.yaml`, `*.yml` and `*.json` files, sorted by
/// name): the report, and the model when nothing was rejected.
pub fn check_path(path: &Path) -> (Report, Option<Config>) {
    let mut sources = Vec::new();
    let mut report = Report::default();
    let files = if path.is_dir() {
        match std::fs::read_dir(path) {
            Ok(entries) => {
                let mut files: Vec<PathBuf> = entries
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.is_file() && is_manifest(p))
                    .collect();
                files.sort();
                files
            }
            Err(e) => {
                report.files.push(FileProblem {
                    file: path.into(),
                    line: None,
                    reason: format!("reading the directory: {e}"),
                });
                return (report, None);
            }
        }
    } else {
        vec![path.to_path_buf()]
    };
    for file in files {
        match std::fs::read_to_string(&file) {
            Ok(text) => sources.push((file, text)),
            Err(e) => report.files.push(FileProblem {
                file,
                line: None,
                reason: format!("reading: {e}"),
            }),
        }
    }
    check_sources(report, sources)
}

/// Checks one text (stdin, a test) as if it were the file `file`.
pub fn check_text(file: &Path, text: &str) -> (Report, Option<Config>) {
    check_sources(
        Report::default(),
        vec![(file.to_path_buf(), text.to_string())],
    )
}

/// Checks objects an API server holds (`origin` names it in the report)
/// and builds the model from those that pass: unlike a directory, where
/// one bad file refuses the change, a cluster's bad object is left out and
/// the rest applies. Lines are meaningless here (every finding is on 1).
pub fn check_objects<J: std::borrow::Borrow<serde_json::Value>>(
    origin: &Path,
    objects: &[J],
) -> (Report, Config) {
    let mut report = Report::default();
    let parsed: Vec<Parsed> = objects
        .iter()
        .filter_map(|json| {
            check_object(
                &mut report,
                origin,
                (1, 1),
                yaml::Node::from_json(json.borrow()),
            )
        })
        .collect();
    check::across(&mut report, &parsed);
    let config = check::build(parsed, &report);
    (report, config)
}

fn check_sources(mut report: Report, sources: Vec<(PathBuf, String)>) -> (Report, Option<Config>) {
    let docs: Vec<(&Path, u64, &str)> = sources
        .iter()
        .flat_map(|(file, text)| {
            documents(text)
                .into_iter()
                .map(move |(line, doc)| (file.as_path(), line, doc))
        })
        .collect();
    // Objects are checked on their own, so a large config is split across
    // the cores; the parts are joined back in file order.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = docs.len().div_ceil(threads).max(1);
    let parts: Vec<(Report, Vec<Parsed>)> = std::thread::scope(|scope| {
        let workers: Vec<_> = docs
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    let mut report = Report::default();
                    let mut parsed = Vec::new();
                    for &(file, first_line, doc) in part {
                        parsed.extend(check_document(&mut report, file, first_line, doc));
                    }
                    (report, parsed)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    });
    // The objects own what they need now; the text can go before the
    // model is built.
    drop(docs);
    drop(sources);
    let mut parsed = Vec::new();
    for (part, items) in parts {
        let offset = report.objects.len();
        report.objects.extend(part.objects);
        report.files.extend(part.files);
        parsed.extend(items.into_iter().map(|mut p| {
            p.report += offset;
            p
        }));
    }
    check::across(&mut report, &parsed);
    let config = (report.rejected() == 0).then(|| check::build(parsed, &report));
    (report, config)
}

/// One YAML document: an object, or a `v1` `List` of objects (what
/// `kubectl get -o yaml` prints).
fn check_document(report: &mut Report, file: &Path, first_line: u64, doc: &str) -> Vec<Parsed> {
    let tree = match yaml::parse(doc) {
        Ok(tree) => tree,
        Err(e) => {
            report.files.push(FileProblem {
                file: file.into(),
                line: Some(
                    e.location()
                        .map_or(first_line, |l| l.line() + first_line - 1),
                ),
                reason: first_line_of(&e),
            });
            return Vec::new();
        }
    };
    match tree.list_items() {
        Some(items) => items
            .into_iter()
            .filter_map(|item| {
                let at = first_line + item.line.max(1) - 1;
                check_object(report, file, (first_line, at), item)
            })
            .collect(),
        None => check_object(report, file, (first_line, first_line), tree)
            .into_iter()
            .collect(),
    }
}

/// One object; `lines` are where its document starts (what the tree's
/// lines count from) and where the object does.
fn check_object(
    report: &mut Report,
    file: &Path,
    lines: (u64, u64),
    tree: yaml::Node,
) -> Option<Parsed> {
    let (first_line, at) = lines;
    let mut json = tree.to_json();
    manifest::strip_nulls(&mut json);
    let (header, problems) = Header::read(&json);
    let meta = &header.metadata;
    let mut entry = ObjectReport {
        file: file.into(),
        line: at,
        api_version: header.api_version.clone().unwrap_or_default(),
        kind: header.kind.clone().unwrap_or_default(),
        namespace: meta.namespace.clone().unwrap_or_else(|| "default".into()),
        name: meta.name.clone().unwrap_or_default(),
        verdict: Verdict::Accepted,
        warnings: Vec::new(),
    };
    let mut findings = Findings::new(&tree, first_line);
    if !json.is_object() {
        findings.reject("", "a manifest must be a mapping with apiVersion and kind");
    } else if entry.api_version.is_empty() {
        findings.reject("apiVersion", "is required");
    } else if entry.kind.is_empty() {
        findings.reject("kind", "is required");
    } else if entry.name.is_empty() {
        findings.reject("metadata.name", "is required");
    }
    if findings.has_errors() {
        entry.verdict = Verdict::Rejected(findings.errors);
        report.objects.push(entry);
        return None;
    }
    match manifest::classify(&entry.api_version, &entry.kind) {
        KindCheck::Ignored(why) => {
            entry.verdict = Verdict::Ignored(why);
            report.objects.push(entry);
            None
        }
        KindCheck::Wrong(why) => {
            findings.reject("apiVersion", &why);
            entry.verdict = Verdict::Rejected(findings.errors);
            report.objects.push(entry);
            None
        }
        KindCheck::Used => {
            for (path, reason) in &problems {
                findings.reject(path, reason);
            }
            check::envelope(&mut findings, &entry.kind, meta, &json);
            let item = check::object(
                &mut findings,
                (manifest::group_of(&entry.api_version), &entry.kind),
                &entry.namespace,
                meta,
                &json,
            );
            entry.warnings = std::mem::take(&mut findings.warnings);
            if findings.has_errors() {
                entry.verdict = Verdict::Rejected(findings.errors);
            }
            report.objects.push(entry);
            item.map(|item| Parsed {
                report: report.objects.len() - 1,
                tree: check::checked_across(&item).then_some(tree),
                first_line,
                item,
                created: meta.created.clone(),
            })
        }
    }
}

/// Splits a file into its YAML documents, with the 1-based line each starts
/// on. Empty documents (comments only) are skipped.
fn documents(text: &str) -> Vec<(u64, &str)> {
    let mut docs = Vec::new();
    let mut start = 0usize;
    let mut start_line = 1u64;
    let mut offset = 0usize;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        if line.trim_end() == "---" || line.starts_with("--- ") {
            docs.push((start_line, &text[start..offset]));
            start = offset + line.len();
            start_line = i as u64 + 2;
        }
        offset += line.len();
    }
    docs.push((start_line, &text[start..]));
    docs.into_iter()
        .filter(|(_, d)| {
            d.lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        })
        .collect()
}

/// The parser's message without its snippet and its own position, which
/// counts from the start of the document rather than the file.
fn first_line_of(err: &serde_saphyr::Error) -> String {
    let text = err.to_string();
    let first = text.lines().next().unwrap_or_default().trim();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    match first
        .strip_prefix("line ")
        .and_then(|rest| rest.split_once(": "))
    {
        Some((position, message)) if position.contains("column") => message.to_string(),
        _ => first.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::MtlsMode;

    const GOOD: &str = "\
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels:
    istio.io/dataplane-mode: ambient
---
# the database
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: db
  namespace: shop
  annotations:
    strait.dev/node: n2
    strait.dev/addresses: fd00:10:2::a
spec:
  address: 10.2.0.10
  serviceAccount: db
  locality: r1/z2
  labels:
    app: db
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata:
  name: strict
  namespace: shop
spec:
  mtls:
    mode: STRICT
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: other
";

    fn load(text: &str) -> Result<Config, LoadError> {
        let (report, config) = check_text(Path::new("test.yaml"), text);
        match (LoadError::first_of(&report), config) {
            (None, Some(config)) => Ok(config),
            (err, _) => Err(err.expect("a refused config names its first problem")),
        }
    }

    /// The report lines for `text`.
    fn report(text: &str) -> String {
        check_text(Path::new("t.yaml"), text).0.to_string()
    }

    #[test]
    fn loads_namespaces_workloads_and_policies() {
        let cfg = load(GOOD).unwrap();
        assert!(
            cfg.namespaces["shop"]
                .labels
                .contains_key("istio.io/dataplane-mode")
        );
        let db = &cfg.workloads[0];
        assert_eq!(
            db.addresses,
            [
                "10.2.0.10".parse::<IpAddr>().unwrap(),
                "fd00:10:2::a".parse().unwrap()
            ]
        );
        assert_eq!(db.node.as_deref(), Some("n2"));
        assert_eq!(db.service_account, "db");
        assert_eq!(db.locality.zone, "z2");
        assert!(cfg.enrolled(db));
        assert_eq!(
            cfg.workload_by_address("fd00:10:2::a".parse().unwrap())
                .map(|w| w.name.as_str()),
            Some("db")
        );
        assert!(
            cfg.workload_by_address("10.9.9.9".parse().unwrap())
                .is_none()
        );
        assert_eq!(cfg.mtls_mode(db, 80), MtlsMode::Strict);
        assert_eq!(cfg.ignored, ["v1 ConfigMap default/other"]);
        let shown = report(GOOD);
        assert!(
            shown.contains("accepted t.yaml:8 WorkloadEntry shop/db"),
            "{shown}"
        );
        assert!(
            shown.contains("ignored  t.yaml:33 ConfigMap default/other"),
            "{shown}"
        );
    }

    #[test]
    fn documents_keep_their_line_numbers() {
        let docs = documents(GOOD);
        assert_eq!(docs.len(), 4);
        assert_eq!(docs[1].0, 8);
        assert!(docs[1].1.starts_with("# the database"));
    }

    #[test]
    fn a_typo_names_file_line_object_and_field() {
        let text = GOOD.replace("  serviceAccount: db", "  serviceAcount: db");
        let err = load(&text).unwrap_err();
        assert_eq!(err.object.as_deref(), Some("WorkloadEntry shop/db"));
        assert_eq!(err.line, Some(19), "{err}");
        let shown = err.to_string();
        assert_eq!(
            shown,
            "test.yaml:19: WorkloadEntry shop/db: field spec.serviceAcount: \
             unknown field `serviceAcount`; did you mean `serviceAccount`?"
        );
    }

    #[test]
    fn bad_values_name_the_field() {
        let err = load(&GOOD.replace("address: 10.2.0.10", "address: db_local!")).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("spec.address"), "{err}");
        let err = load(&GOOD.replace("mode: STRICT", "mode: STRICTEST")).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("spec.mtls.mode"), "{err}");
        assert!(err.reason.contains("STRICTEST"), "{err}");
    }

    #[test]
    fn broken_yaml_is_an_error_with_a_line() {
        let err = load("apiVersion: v1\nkind: Namespace\nmetadata: [unclosed\n").unwrap_err();
        assert!(err.line.is_some(), "{err}");
        let text = format!("{GOOD}---\nkind: [\n");
        let err = load(&text).unwrap_err();
        assert_eq!(err.line, Some(38), "{err}");
    }

    #[test]
    fn every_problem_of_every_object_is_reported() {
        let text = GOOD
            .replace("address: 10.2.0.10", "address: db_local!")
            .replace("mode: STRICT", "mode: STRICTEST");
        let (report, config) = check_text(Path::new("t.yaml"), &text);
        assert!(config.is_none());
        assert_eq!(report.rejected(), 2, "{report}");
        let err = load(&text).unwrap_err();
        assert_eq!(err.more, 1, "{err}");
    }

    #[test]
    fn unnamed_objects_are_refused() {
        let err = load("apiVersion: v1\nkind: Namespace\nmetadata: {}\n").unwrap_err();
        assert_eq!(err.field.as_deref(), Some("metadata.name"));
    }
}
