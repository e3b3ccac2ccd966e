//! The checks a manifest must pass, kind by kind and across objects, and
//! the translation of what passed into the model. Each problem is reported
//! at its field path; nothing here panics on any input.
mod across;
mod build;
mod core;
mod effect;
mod gateway_routes;
mod gateways;
mod networking;
mod routes;
mod security;
mod traffic;

use std::{collections::BTreeSet, net::IpAddr};

use serde::de::DeserializeOwned;
use serde_json::Value as Json;

pub(crate) use across::{across, checked_across};
pub(crate) use build::build;

use crate::{
    EastWestGateway, Labels, Named, Namespace, Node, PeerAuthentication, Service, Workload,
    manifest::{
        GATEWAY_API, ObjectMeta, USED, decode, gateway_api, networking as net, security as sec,
    },
    names,
    report::Finding,
    suggest, yaml,
};

/// The DNS domain of Kubernetes services.
pub const CLUSTER_DOMAIN: &str = "cluster.local";
/// Labels on one object (or in one selector). Kubernetes sets no limit,
/// but every agent keeps every pod's labels and matches selectors against
/// them: a few dozen is usual, hundreds is a mistake or an attack.
pub const MAX_LABELS: usize = 128;

/// Problems found in one object, placed at their lines.
pub(crate) struct Findings<'a> {
    tree: &'a yaml::Node,
    first_line: u64,
    pub errors: Vec<Finding>,
    pub warnings: Vec<Finding>,
}

impl<'a> Findings<'a> {
    pub fn new(tree: &'a yaml::Node, first_line: u64) -> Self {
        Self {
            tree,
            first_line,
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }

    fn finding(&self, path: &str, reason: &str) -> Finding {
        Finding {
            line: self.first_line + self.tree.line_of(path).max(1) - 1,
            field: if path.is_empty() { "(object)" } else { path }.to_string(),
            reason: reason.to_string(),
        }
    }

    pub fn reject(&mut self, path: &str, reason: &str) {
        let f = self.finding(path, reason);
        self.errors.push(f);
    }

    pub fn warn(&mut self, path: &str, reason: &str) {
        let f = self.finding(path, reason);
        self.warnings.push(f);
    }

    pub fn has_errors(&self) -> bool {
        !self.errors.is_empty()
    }

    /// A workload's address: one other hosts reach it at. Loopback, the
    /// unspecified address and multicast would make the agents, or a
    /// gateway, connect to themselves.
    fn workload_ip(&mut self, path: &str, text: &str) -> Option<IpAddr> {
        let Ok(ip) = text.parse::<IpAddr>() else {
            self.reject(path, &format!("{text:?} is not an IP address"));
            return None;
        };
        let why = if ip.is_loopback() {
            "a loopback address"
        } else if ip.is_unspecified() {
            "the unspecified address"
        } else if ip.is_multicast() {
            "a multicast address"
        } else {
            return Some(ip);
        };
        self.reject(
            path,
            &format!("{ip} is {why}: a workload's address must be one other hosts reach it at"),
        );
        None
    }

    /// Decodes `spec` (absent: empty) into its shape.
    fn spec<S: DeserializeOwned>(&mut self, json: &Json) -> Option<S> {
        let empty = Json::Object(Default::default());
        let spec = json.get("spec").filter(|s| !s.is_null()).unwrap_or(&empty);
        match decode(spec, "spec") {
            Ok(s) => Some(s),
            Err((path, reason)) => {
                self.reject(&path, &reason);
                None
            }
        }
    }

    fn one_of(&mut self, path: &str, value: Option<&str>, allowed: &[&str]) {
        if let Some(v) = value
            && !allowed.contains(&v)
        {
            let hint = suggest(v, allowed.iter().copied())
                .map(|s| format!("; did you mean {s}?"))
                .unwrap_or_default();
            self.reject(
                path,
                &format!("{v:?} is not one of {}{hint}", allowed.join(", ")),
            );
        }
    }

    fn duration(&mut self, path: &str, value: Option<&String>) {
        if let Some(v) = value {
            match crate::duration::parse(v) {
                Ok(d) if d < std::time::Duration::from_millis(1) => {
                    self.reject(path, &format!("{v:?} is shorter than 1ms"))
                }
                Ok(d) if d.subsec_nanos() % 1_000_000 != 0 => self.reject(
                    path,
                    &format!("{v:?} is finer than a millisecond, Istio's precision"),
                ),
                Ok(_) => {}
                Err(e) => self.reject(path, &e),
            }
        }
    }

    fn port(&mut self, path: &str, port: u32) -> Option<u16> {
        match u16::try_from(port).ok().filter(|p| *p != 0) {
            Some(p) => Some(p),
            None => {
                self.reject(path, &format!("{port} is not a port (1-65535)"));
                None
            }
        }
    }

    /// Label keys and values, as Kubernetes checks them.
    fn labels(&mut self, path: &str, labels: &Labels) {
        if labels.len() > MAX_LABELS {
            let why = format!("has {} labels; at most {MAX_LABELS}", labels.len());
            self.reject(path, &why);
            return;
        }
        for (key, value) in labels {
            let at = format!("{path}.{key}");
            if let Err(why) =
                names::check_label_key(key).and_then(|()| names::check_label_value(value))
            {
                self.reject(&at, &why);
            }
        }
    }

    /// A workload selector's labels: valid, no wildcards (Istio matches
    /// labels exactly); none at all selects every workload, which is
    /// likely a mistake.
    fn selector(&mut self, path: &str, labels: &Labels) {
        if labels.len() > MAX_LABELS {
            let why = format!("has {} labels; at most {MAX_LABELS}", labels.len());
            self.reject(path, &why);
            return;
        }
        for (key, value) in labels {
            let at = format!("{path}.{key}");
            if key.contains('*') || value.contains('*') {
                self.reject(&at, "a selector matches labels exactly: no wildcard `*`");
            } else if let Err(why) =
                names::check_label_key(key).and_then(|()| names::check_label_value(value))
            {
                self.reject(&at, &why);
            }
        }
        if labels.is_empty() {
            self.warn(
                path,
                "has no labels: it selects every workload in the namespace",
            );
        }
    }

    /// Entries of a list that must not be empty strings.
    fn no_empty(&mut self, path: &str, values: &[String]) {
        for (i, v) in values.iter().enumerate() {
            if v.is_empty() {
                self.reject(&format!("{path}[{i}]"), "must not be empty");
            }
        }
    }

    /// A regular expression as Istio (Go's RE2) reads it: at most 1024
    /// characters; lookaround and backreferences are not RE2.
    fn regex(&mut self, path: &str, re: &str) {
        if re.is_empty() {
            self.reject(path, "must not be empty");
        } else if re.len() > 1024 {
            self.reject(path, "is longer than 1024 characters, Istio's limit");
        } else if let Err(e) = regex::Regex::new(re) {
            let why = e.to_string();
            let last = why.lines().last().unwrap_or_default().trim();
            self.reject(
                path,
                &format!(
                    "{re:?} is not an RE2 regular expression: {}",
                    last.trim_start_matches("error: ")
                ),
            );
        }
    }

    fn percent(&mut self, path: &str, value: Option<f64>) {
        if let Some(v) = value
            && !(0.0..=100.0).contains(&v)
        {
            self.reject(path, &format!("{v} is not a percentage (0-100)"));
        }
    }
}

/// What one accepted object contributes to the model.
pub(crate) enum Item {
    Namespace(Namespace),
    Node(Node),
    Service(Service),
    Workload(Workload),
    WorkloadGroup(Box<Named<net::WorkloadGroupSpec>>),
    PeerAuthentication(PeerAuthentication),
    AuthorizationPolicy(Box<Named<sec::AuthorizationPolicySpec>>),
    RequestAuthentication(Box<Named<sec::RequestAuthenticationSpec>>),
    RateLimitFilter(Box<Named<crate::ratelimit::RateLimitFilter>>),
    DestinationRule(Box<Named<net::DestinationRuleSpec>>),
    VirtualService(Box<Named<net::VirtualServiceSpec>>),
    HttpRoute(Box<Named<gateway_api::HttpRouteSpec>>),
    GrpcRoute(Box<Named<gateway_api::GrpcRouteSpec>>),
    Gateway(Box<Named<net::GatewaySpec>>),
    EastWestGateway(EastWestGateway),
    Waypoint(crate::waypoint::Waypoint),
}

/// Checks what every object of a used kind shares: its top-level fields,
/// `spec` where the kind requires one, and `metadata` (names, labels,
/// annotations) as Kubernetes and Istio check them.
pub(crate) fn envelope(f: &mut Findings, kind: &str, meta: &ObjectMeta, json: &Json) {
    const TOP: [&str; 5] = ["apiVersion", "kind", "metadata", "spec", "status"];
    if let Some(fields) = json.as_object() {
        for key in fields.keys().filter(|k| !TOP.contains(&k.as_str())) {
            let hint = suggest(key, TOP)
                .map(|s| format!("; did you mean `{s}`?"))
                .unwrap_or_default();
            f.reject(
                key,
                &format!("unknown top-level field `{key}`: an object has apiVersion, kind, metadata, spec and status{hint}"),
            );
        }
    }
    let istio = USED
        .iter()
        .any(|(group, _, k)| *k == kind && group.ends_with(".istio.io"));
    match json.get("spec") {
        None if istio => f.reject("spec", "is required"),
        Some(spec) if !spec.is_object() => f.reject("spec", "must be a mapping"),
        _ => {}
    }
    if let Some(name) = &meta.name {
        // Istio refers to gateways as `namespace/name`: no dots.
        let checked = match kind {
            "Namespace" | "Gateway" => names::check_label(name),
            _ => names::check_subdomain(name),
        };
        if let Err(why) = checked {
            f.reject("metadata.name", &why);
        }
    }
    if let Some(namespace) = &meta.namespace
        && let Err(why) = names::check_label(namespace)
    {
        f.reject("metadata.namespace", &why);
    }
    f.labels("metadata.labels", &meta.labels);
    for key in meta.annotations.keys() {
        if let Err(why) = names::check_label_key(key) {
            f.reject(
                &format!("metadata.annotations.{key}"),
                &why.replace("label key", "annotation key"),
            );
        }
    }
    if let Some(dry_run) = meta.annotations.get(DRY_RUN) {
        let path = format!("metadata.annotations.{DRY_RUN}");
        if kind != "AuthorizationPolicy" {
            f.reject(&path, "is only for AuthorizationPolicy");
        } else if !matches!(dry_run.as_str(), "true" | "false") {
            f.reject(&path, &format!("{dry_run:?} is not true or false"));
        }
    }
}

/// Istio's annotation that makes an AuthorizationPolicy only report.
const DRY_RUN: &str = "istio.io/dry-run";

/// Checks one object of a kind strait uses and translates it. `None` with
/// no errors: accepted, with nothing for the model (warnings say why).
pub(crate) fn object(
    f: &mut Findings,
    (group, kind): (&str, &str),
    namespace: &str,
    meta: &ObjectMeta,
    json: &Json,
) -> Option<Item> {
    let name = meta.name.clone().unwrap_or_default();
    let spec_json = json.get("spec").cloned().unwrap_or(Json::Null);
    let item = match kind {
        "Namespace" => {
            core::global_label(f, &meta.labels);
            Some(Item::Namespace(Namespace {
                name: name.clone(),
                labels: meta.labels.clone(),
            }))
        }
        "Node" => Some(Item::Node(core::node(&name, &meta.labels))),
        "Pod" => core::pod(f, &name, namespace, meta, json).map(Item::Workload),
        "Service" => {
            let spec = f.spec(json)?;
            Some(Item::Service(core::service(
                f,
                &name,
                namespace,
                meta,
                spec,
                json.get("status"),
            )))
        }
        "ServiceEntry" => {
            let spec = f.spec(json)?;
            Some(Item::Service(networking::service_entry(
                f,
                &name,
                namespace,
                &meta.labels,
                spec,
            )))
        }
        "WorkloadEntry" => {
            let spec: net::WorkloadEntrySpec = f.spec(json)?;
            networking::workload_entry(f, &name, namespace, meta, &spec, json).map(Item::Workload)
        }
        "WorkloadGroup" => {
            let spec: net::WorkloadGroupSpec = f.spec(json)?;
            networking::workload_group(f, &spec, &spec_json);
            Some(Item::WorkloadGroup(Box::new(Named::new(
                &name, namespace, spec,
            ))))
        }
        "DestinationRule" => {
            let spec: net::DestinationRuleSpec = f.spec(json)?;
            traffic::destination_rule(f, namespace, &spec);
            Some(Item::DestinationRule(Box::new(Named::new(
                &name, namespace, spec,
            ))))
        }
        "VirtualService" => {
            let spec: net::VirtualServiceSpec = f.spec(json)?;
            routes::virtual_service(f, namespace, &spec);
            Some(Item::VirtualService(Box::new(Named::new(
                &name, namespace, spec,
            ))))
        }
        "HTTPRoute" => {
            let spec: gateway_api::HttpRouteSpec = f.spec(json)?;
            let route = Named::new(&name, namespace, spec);
            gateway_routes::http_route(f, &route);
            Some(Item::HttpRoute(Box::new(route)))
        }
        "GRPCRoute" => {
            let spec: gateway_api::GrpcRouteSpec = f.spec(json)?;
            let route = Named::new(&name, namespace, spec);
            gateway_routes::grpc_route(f, &route);
            Some(Item::GrpcRoute(Box::new(route)))
        }
        "Gateway" if group == GATEWAY_API => {
            let spec: gateway_api::GatewaySpec = f.spec(json)?;
            gateways::gateway(f, &name, namespace, meta, &spec, json.get("status"))
        }
        "Gateway" => {
            let spec: net::GatewaySpec = f.spec(json)?;
            routes::gateway(f, &spec);
            Some(Item::Gateway(Box::new(Named::new(&name, namespace, spec))))
        }
        "PeerAuthentication" => {
            let spec: sec::PeerAuthenticationSpec = f.spec(json)?;
            security::peer_authentication(f, &name, namespace, spec, &spec_json)
                .map(Item::PeerAuthentication)
        }
        "AuthorizationPolicy" => {
            let spec: sec::AuthorizationPolicySpec = f.spec(json)?;
            security::authorization_policy(f, &spec, &spec_json);
            Some(Item::AuthorizationPolicy(Box::new(Named::new(
                &name, namespace, spec,
            ))))
        }
        "EnvoyFilter" => match crate::ratelimit::read(&spec_json) {
            Ok(filter) => {
                if filter.target_refs.is_empty() && filter.workload_selector.is_none() {
                    f.warn(
                        "spec",
                        "selects every waypoint of its namespace (of the mesh, in the root namespace): \
                         name one with targetRefs or workloadSelector",
                    );
                }
                Some(Item::RateLimitFilter(Box::new(Named::new(
                    &name, namespace, filter,
                ))))
            }
            Err((path, why)) => {
                f.reject(&path, &why);
                None
            }
        },
        "RequestAuthentication" => {
            let spec: sec::RequestAuthenticationSpec = f.spec(json)?;
            security::request_authentication(f, &spec);
            Some(Item::RequestAuthentication(Box::new(Named::new(
                &name, namespace, spec,
            ))))
        }
        _ => return None,
    };
    effect::warn_without_effect(f, kind, &spec_json);
    if f.has_errors() { None } else { item }
}

/// `exportTo` values: `*`, `.`, `~` or namespace names, each once; `*`
/// and `~` alone. `namespace` is the object's own (which `.` names).
fn export_to(f: &mut Findings, path: &str, namespace: &str, to: &[String]) {
    let mut seen = BTreeSet::new();
    for (i, t) in to.iter().enumerate() {
        let at = format!("{path}[{i}]");
        let ok = matches!(t.as_str(), "*" | "." | "~") || names::check_istio_label(t).is_ok();
        if !ok {
            f.reject(
                &at,
                &format!("{t:?} is not `*`, `.`, `~` or a namespace name"),
            );
            continue;
        }
        let key = if t == "." { namespace } else { t.as_str() };
        if !seen.insert(key) {
            f.reject(&at, &format!("{t:?} is listed twice (`.` is {namespace})"));
        }
    }
    for alone in ["*", "~"] {
        if to.len() > 1 && to.iter().any(|t| t == alone) {
            f.reject(
                path,
                &format!("`{alone}` cannot be combined with other entries"),
            );
        }
    }
}

/// Protocols Istio knows for a port (compared without case).
const PROTOCOLS: [&str; 12] = [
    "HTTP",
    "HTTPS",
    "GRPC",
    "GRPC-WEB",
    "HTTP2",
    "HTTP_PROXY",
    "MONGO",
    "MYSQL",
    "REDIS",
    "TCP",
    "TLS",
    "UDP",
];

/// A host name that may start with a wildcard, or an error to report.
fn host(f: &mut Findings, path: &str, host: &str) -> bool {
    match names::check_wildcard_host(host) {
        Ok(()) => true,
        Err(why) => {
            f.reject(path, &why);
            false
        }
    }
}

fn ip_or_cidr(text: &str) -> Result<IpAddr, String> {
    let (ip, len) = match text.split_once('/') {
        Some((ip, len)) => (ip, Some(len)),
        None => (text, None),
    };
    let ip: IpAddr = ip
        .parse()
        .map_err(|_| format!("{text:?} is not an IP address or CIDR block"))?;
    if let Some(len) = len {
        let max = if ip.is_ipv4() { 32 } else { 128 };
        match len.parse::<u8>() {
            Ok(l) if l <= max => {}
            _ => return Err(format!("{text:?}: prefix length must be 0-{max}")),
        }
    }
    Ok(ip)
}

/// `name` as a full host name, the way Istio reads hosts in an object of
/// `namespace`: a single label is a service of that namespace.
pub fn qualify(name: &str, namespace: &str) -> String {
    if name.contains('.') || name == "*" {
        name.to_ascii_lowercase()
    } else {
        format!(
            "{}.{namespace}.svc.{CLUSTER_DOMAIN}",
            name.to_ascii_lowercase()
        )
    }
}

/// An object that passed its own checks, kept for the checks across
/// objects and then for the model.
pub(crate) struct Parsed {
    pub report: usize,
    /// Kept only for the kinds the checks across objects look at (their
    /// findings need lines): a large config is mostly workloads.
    pub tree: Option<yaml::Node>,
    pub first_line: u64,
    pub item: Item,
    /// `metadata.creationTimestamp`, when the object has one.
    pub created: Option<String>,
}
