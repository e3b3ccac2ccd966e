//! The local source: a directory of multi-document YAML manifests (the
//! embedded default, and what tests and the demo use), translated into the
//! model. Every error names the file, the line, the object and the field.
use std::{
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
};

use serde::de::DeserializeOwned;

use crate::{
    ADDRESSES_ANNOTATION, Config, Locality, MtlsMode, NETNS_ANNOTATION, NODE_ANNOTATION, Namespace,
    PeerAuthentication, Workload,
    manifest::{Header, Mtls, Object, PeerAuthenticationSpec, WorkloadEntrySpec},
};

const ISTIO_NETWORKING: [&str; 3] = [
    "networking.istio.io/v1alpha3",
    "networking.istio.io/v1beta1",
    "networking.istio.io/v1",
];
const ISTIO_SECURITY: [&str; 2] = ["security.istio.io/v1beta1", "security.istio.io/v1"];

/// Why a manifest could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    pub file: PathBuf,
    /// 1-based line in the file.
    pub line: Option<u64>,
    /// `Kind namespace/name`, once known.
    pub object: Option<String>,
    /// Dotted path of the offending field, once known.
    pub field: Option<String>,
    pub reason: String,
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
        write!(f, ": {}", self.reason)
    }
}

impl std::error::Error for LoadError {}

/// Reads every `*.yaml` / `*.yml` file in `dir` (sorted by name) into one
/// model. The first error stops the load: a half-read config is never used.
pub fn load_dir(dir: &Path) -> Result<Config, LoadError> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| LoadError {
            file: dir.into(),
            line: None,
            object: None,
            field: None,
            reason: format!("reading the config directory: {e}"),
        })?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    let mut config = Config::default();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(|e| LoadError {
            file: file.clone(),
            line: None,
            object: None,
            field: None,
            reason: format!("reading: {e}"),
        })?;
        load_text(&mut config, &file, &text)?;
    }
    config.reindex();
    Ok(config)
}

/// Adds the objects in one file's text to `config`.
pub fn load_text(config: &mut Config, file: &Path, text: &str) -> Result<(), LoadError> {
    for (first_line, doc) in documents(text) {
        let err = |line: Option<u64>,
                   object: Option<String>,
                   field: Option<&str>,
                   reason: String| LoadError {
            file: file.into(),
            line: line.map(|l| l + first_line - 1).or(Some(first_line)),
            object,
            field: field.map(str::to_string),
            reason,
        };
        let header: Header = serde_saphyr::from_str(doc).map_err(|e| {
            err(
                e.location().map(|l| l.line()),
                None,
                None,
                first_line_of(&e),
            )
        })?;
        let (Some(api_version), Some(kind)) =
            (header.api_version.as_deref(), header.kind.as_deref())
        else {
            return Err(err(
                None,
                None,
                None,
                "an object needs apiVersion and kind".into(),
            ));
        };
        let meta = &header.metadata;
        let name = meta.name.clone().unwrap_or_default();
        let namespace = meta.namespace.clone().unwrap_or_else(|| "default".into());
        let object = format!("{kind} {namespace}/{name}");
        if name.is_empty() {
            return Err(err(
                None,
                Some(format!("{kind} (unnamed)")),
                Some("metadata.name"),
                "is required".into(),
            ));
        }
        match (api_version, kind) {
            ("v1", "Namespace") => {
                config.namespaces.insert(
                    name.clone(),
                    Namespace {
                        name,
                        labels: meta.labels.clone(),
                    },
                );
            }
            (v, "WorkloadEntry") if ISTIO_NETWORKING.contains(&v) => {
                let spec: WorkloadEntrySpec = typed_spec(doc).map_err(|(line, reason)| {
                    err(line, Some(object.clone()), Some("spec"), reason)
                })?;
                let workload =
                    workload(&name, &namespace, meta, spec).map_err(|(field, reason)| {
                        err(None, Some(object.clone()), Some(field), reason)
                    })?;
                config.workloads.push(workload);
            }
            (v, "PeerAuthentication") if ISTIO_SECURITY.contains(&v) => {
                let spec: PeerAuthenticationSpec = typed_spec(doc).map_err(|(line, reason)| {
                    err(line, Some(object.clone()), Some("spec"), reason)
                })?;
                let policy =
                    peer_authentication(&name, &namespace, spec).map_err(|(field, reason)| {
                        err(None, Some(object.clone()), Some(&field), reason)
                    })?;
                config.peer_authentications.push(policy);
            }
            _ => config.ignored.push(format!("{api_version} {object}")),
        }
    }
    Ok(())
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

fn typed_spec<S: DeserializeOwned + Default>(doc: &str) -> Result<S, (Option<u64>, String)> {
    let object: Object<S> = serde_saphyr::from_str(doc)
        .map_err(|e| (e.location().map(|l| l.line()), first_line_of(&e)))?;
    Ok(object.spec.unwrap_or_default())
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

fn workload(
    name: &str,
    namespace: &str,
    meta: &crate::manifest::ObjectMeta,
    spec: WorkloadEntrySpec,
) -> Result<Workload, (&'static str, String)> {
    let mut addresses = Vec::new();
    let address = spec
        .address
        .ok_or(("spec.address", "is required".to_string()))?;
    addresses.push(parse_ip(&address).map_err(|r| ("spec.address", r))?);
    if let Some(more) = meta.annotations.get(ADDRESSES_ANNOTATION) {
        for a in more.split(',').map(str::trim).filter(|a| !a.is_empty()) {
            addresses
                .push(parse_ip(a).map_err(|r| ("metadata.annotations[strait.dev/addresses]", r))?);
        }
    }
    Ok(Workload {
        name: name.into(),
        namespace: namespace.into(),
        addresses,
        labels: spec.labels,
        service_account: spec.service_account.unwrap_or_else(|| "default".into()),
        locality: Locality::parse(spec.locality.as_deref().unwrap_or_default()),
        network: spec.network.unwrap_or_default(),
        ports: spec
            .ports
            .iter()
            .map(|(name, port)| {
                u16::try_from(*port)
                    .ok()
                    .filter(|p| *p != 0)
                    .map(|p| (name.clone(), p))
                    .ok_or(("spec.ports", format!("{name}: {port} is not a port")))
            })
            .collect::<Result<_, _>>()?,
        weight: spec.weight.unwrap_or(1),
        node: meta.annotations.get(NODE_ANNOTATION).cloned(),
        netns: meta.annotations.get(NETNS_ANNOTATION).map(PathBuf::from),
    })
}

fn parse_ip(text: &str) -> Result<IpAddr, String> {
    text.parse().map_err(|_| {
        format!(
            "{text:?} is not an IP address (hostnames are not supported for WorkloadEntry here)"
        )
    })
}

fn peer_authentication(
    name: &str,
    namespace: &str,
    spec: PeerAuthenticationSpec,
) -> Result<PeerAuthentication, (String, String)> {
    let mode = mtls_mode(spec.mtls.as_ref()).map_err(|r| ("spec.mtls.mode".to_string(), r))?;
    let mut port_level = std::collections::BTreeMap::new();
    for (port, mtls) in &spec.port_level_mtls {
        let field = format!("spec.portLevelMtls.{port}");
        let port16 = u16::try_from(*port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or((field.clone(), format!("{port} is not a port")))?;
        port_level.insert(
            port16,
            mtls_mode(Some(mtls)).map_err(|r| (format!("{field}.mode"), r))?,
        );
    }
    if !port_level.is_empty() && spec.selector.is_none() {
        return Err((
            "spec.portLevelMtls".into(),
            "needs a selector: Istio applies port-level mTLS only to selected workloads".into(),
        ));
    }
    Ok(PeerAuthentication {
        name: name.into(),
        namespace: namespace.into(),
        selector: spec.selector.map(|s| s.match_labels),
        mode,
        port_level,
    })
}

fn mtls_mode(mtls: Option<&Mtls>) -> Result<MtlsMode, String> {
    match mtls.and_then(|m| m.mode.as_deref()) {
        None | Some("UNSET") => Ok(MtlsMode::Unset),
        Some("PERMISSIVE") => Ok(MtlsMode::Permissive),
        Some("STRICT") => Ok(MtlsMode::Strict),
        Some("DISABLE") => Ok(MtlsMode::Disable),
        Some(other) => Err(format!(
            "{other:?} is not one of UNSET, PERMISSIVE, STRICT, DISABLE"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let mut config = Config::default();
        load_text(&mut config, Path::new("test.yaml"), text)?;
        config.reindex();
        Ok(config)
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
        assert!(
            shown.starts_with(
                "test.yaml:19: WorkloadEntry shop/db: field spec: unknown field `serviceAcount`"
            ),
            "{shown}"
        );
        assert!(shown.contains("serviceAcount"), "{shown}");
    }

    #[test]
    fn bad_values_name_the_field() {
        let err = load(&GOOD.replace("address: 10.2.0.10", "address: db.local")).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("spec.address"), "{err}");
        let err = load(&GOOD.replace("mode: STRICT", "mode: STRICTEST")).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("spec.mtls.mode"), "{err}");
        assert!(err.reason.contains("STRICTEST"), "{err}");
    }

    #[test]
    fn broken_yaml_is_an_error_with_a_line() {
        let err = load("apiVersion: v1\nkind: Namespace\nmetadata: [unclosed\n").unwrap_err();
        assert!(err.line.is_some(), "{err}");
    }

    #[test]
    fn unnamed_objects_are_refused() {
        let err = load("apiVersion: v1\nkind: Namespace\nmetadata: {}\n").unwrap_err();
        assert_eq!(err.field.as_deref(), Some("metadata.name"));
    }
}
