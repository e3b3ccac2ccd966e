//! The checks a manifest must pass, kind by kind and across objects, and
//! the translation of what passed into the model. Each problem is reported
//! at its field path; nothing here panics on any input.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    path::PathBuf,
};

use serde::de::DeserializeOwned;
use serde_json::Value as Json;

use crate::{
    ADDRESSES_ANNOTATION, Config, Endpoints, GROUP_ANNOTATION, Labels, Locality, MtlsMode,
    NETNS_ANNOTATION, NODE_ANNOTATION, Named, Namespace, Node, PeerAuthentication, Service,
    ServiceOrigin, ServicePort, TargetPort, Workload, host_matches,
    local::Parsed,
    manifest::{ObjectMeta, core, decode, networking as net, security as sec},
    report::{Finding, Report, Verdict},
    suggest, yaml,
};

/// The DNS domain of Kubernetes services.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

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
    DestinationRule(Box<Named<net::DestinationRuleSpec>>),
    VirtualService(Box<Named<net::VirtualServiceSpec>>),
    Gateway(Box<Named<net::GatewaySpec>>),
}

/// Checks one object of a kind strait uses and translates it.
pub(crate) fn object(
    f: &mut Findings,
    kind: &str,
    namespace: &str,
    meta: &ObjectMeta,
    json: &Json,
) -> Option<Item> {
    let name = meta.name.clone().unwrap_or_default();
    let item = match kind {
        "Namespace" => Item::Namespace(Namespace {
            name: name.clone(),
            labels: meta.labels.clone(),
        }),
        "Node" => Item::Node(node(&name, &meta.labels)),
        "Service" => {
            let spec = f.spec(json)?;
            let mut svc = service(f, &name, namespace, spec);
            if let Some(to) = meta.annotations.get(crate::EXPORT_TO_ANNOTATION) {
                svc.export_to = to.split(',').map(|t| t.trim().to_owned()).collect();
                export_to(
                    f,
                    &format!("metadata.annotations.{}", crate::EXPORT_TO_ANNOTATION),
                    &svc.export_to,
                );
            }
            Item::Service(svc)
        }
        "ServiceEntry" => {
            let spec = f.spec(json)?;
            Item::Service(service_entry(f, &name, namespace, spec))
        }
        "WorkloadEntry" => {
            let spec: net::WorkloadEntrySpec = f.spec(json)?;
            let mut w = workload(f, "spec", &name, namespace, meta, &spec)?;
            w.ready = healthy_condition(f, json);
            w.group = meta.annotations.get(GROUP_ANNOTATION).cloned();
            Item::Workload(w)
        }
        "WorkloadGroup" => {
            let spec: net::WorkloadGroupSpec = f.spec(json)?;
            workload_group(f, &spec);
            Item::WorkloadGroup(Box::new(Named::new(&name, namespace, spec)))
        }
        "DestinationRule" => {
            let spec: net::DestinationRuleSpec = f.spec(json)?;
            destination_rule(f, &spec);
            Item::DestinationRule(Box::new(Named::new(&name, namespace, spec)))
        }
        "VirtualService" => {
            let spec: net::VirtualServiceSpec = f.spec(json)?;
            virtual_service(f, &spec);
            f.warn(
                "spec",
                "has no effect yet: VirtualService routes are applied by a waypoint, which strait does not run yet",
            );
            Item::VirtualService(Box::new(Named::new(&name, namespace, spec)))
        }
        "Gateway" => {
            let spec: net::GatewaySpec = f.spec(json)?;
            gateway(f, &spec);
            f.warn(
                "spec",
                "has no effect yet: strait runs no ingress or egress gateway",
            );
            Item::Gateway(Box::new(Named::new(&name, namespace, spec)))
        }
        "PeerAuthentication" => {
            let spec: sec::PeerAuthenticationSpec = f.spec(json)?;
            Item::PeerAuthentication(peer_authentication(f, &name, namespace, spec)?)
        }
        "AuthorizationPolicy" => {
            let spec: sec::AuthorizationPolicySpec = f.spec(json)?;
            authorization_policy(f, &spec);
            Item::AuthorizationPolicy(Box::new(Named::new(&name, namespace, spec)))
        }
        "RequestAuthentication" => {
            let spec: sec::RequestAuthenticationSpec = f.spec(json)?;
            f.warn(
                "spec",
                "has no effect yet: JWTs are checked by a waypoint, which strait does not run yet",
            );
            for (i, rule) in spec.jwt_rules.iter().enumerate() {
                if rule.issuer.is_empty() {
                    f.reject(&format!("spec.jwtRules[{i}].issuer"), "is required");
                }
                f.duration(
                    &format!("spec.jwtRules[{i}].timeout"),
                    rule.timeout.as_ref(),
                );
            }
            selector_or_target(
                f,
                spec.selector.is_some(),
                spec.target_ref.is_some() || !spec.target_refs.is_empty(),
            );
            Item::RequestAuthentication(Box::new(Named::new(&name, namespace, spec)))
        }
        _ => return None,
    };
    (!f.has_errors()).then_some(item)
}

fn node(name: &str, labels: &Labels) -> Node {
    let label = |k: &str| labels.get(k).cloned().unwrap_or_default();
    Node {
        name: name.into(),
        labels: labels.clone(),
        locality: Locality {
            region: label("topology.kubernetes.io/region"),
            zone: label("topology.kubernetes.io/zone"),
            subzone: label("topology.istio.io/subzone"),
        },
        network: label("topology.istio.io/network"),
    }
}

/// An IANA service name, as Kubernetes requires of port names used as
/// targets.
fn valid_port_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && name.chars().any(|c| c.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
}

fn service(f: &mut Findings, name: &str, namespace: &str, spec: core::ServiceSpec) -> Service {
    f.one_of(
        "spec.type",
        spec.service_type.as_deref(),
        &["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"],
    );
    f.one_of(
        "spec.trafficDistribution",
        spec.traffic_distribution.as_deref(),
        &["PreferClose", "PreferSameZone", "PreferSameNode"],
    );
    f.one_of(
        "spec.internalTrafficPolicy",
        spec.internal_traffic_policy.as_deref(),
        &["Cluster", "Local"],
    );
    let mut addresses = Vec::new();
    let ips = spec
        .cluster_ip
        .iter()
        .map(|ip| ("spec.clusterIP".to_string(), ip))
        .chain(
            spec.cluster_ips
                .iter()
                .enumerate()
                .map(|(i, ip)| (format!("spec.clusterIPs[{i}]"), ip)),
        );
    for (path, ip) in ips {
        if ip.is_empty() || ip == "None" {
            continue;
        }
        match ip.parse::<IpAddr>() {
            Ok(ip) if !addresses.contains(&ip) => addresses.push(ip),
            Ok(_) => {}
            Err(_) => f.reject(&path, &format!("{ip:?} is not an IP address")),
        }
    }
    let mut ports = Vec::new();
    let mut names = BTreeSet::new();
    for (i, p) in spec.ports.iter().enumerate() {
        let path = format!("spec.ports[{i}]");
        let Some(port) = f.port(&format!("{path}.port"), p.port) else {
            continue;
        };
        let port_name = p.name.clone().unwrap_or_default();
        if port_name.is_empty() && spec.ports.len() > 1 {
            f.reject(
                &format!("{path}.name"),
                "is required when a Service has several ports",
            );
        } else if !names.insert(port_name.clone()) {
            f.reject(
                &format!("{path}.name"),
                &format!("{port_name:?} is used twice"),
            );
        }
        f.one_of(
            &format!("{path}.protocol"),
            p.protocol.as_deref(),
            &["TCP", "UDP", "SCTP"],
        );
        let target = match &p.target_port {
            None => TargetPort::Number(port),
            Some(core::IntOrString::Int(n)) => match f.port(&format!("{path}.targetPort"), *n) {
                Some(n) => TargetPort::Number(n),
                None => continue,
            },
            Some(core::IntOrString::Str(s)) => match s.parse::<u32>() {
                Ok(n) => match f.port(&format!("{path}.targetPort"), n) {
                    Some(n) => TargetPort::Number(n),
                    None => continue,
                },
                Err(_) if valid_port_name(s) => TargetPort::Name(s.clone()),
                Err(_) => {
                    f.reject(
                        &format!("{path}.targetPort"),
                        &format!("{s:?} is neither a port number nor a valid port name"),
                    );
                    continue;
                }
            },
        };
        ports.push(ServicePort {
            name: port_name,
            port,
            target,
            protocol: p
                .app_protocol
                .clone()
                .or(p.protocol.clone())
                .unwrap_or_else(|| "TCP".into()),
        });
    }
    Service {
        name: name.into(),
        namespace: namespace.into(),
        hosts: vec![format!("{name}.{namespace}.svc.{CLUSTER_DOMAIN}")],
        addresses,
        ports,
        endpoints: match spec.selector {
            Some(selector) if !selector.is_empty() => Endpoints::Selector(selector),
            _ => Endpoints::Unset,
        },
        origin: ServiceOrigin::Kubernetes,
        traffic_distribution: spec.traffic_distribution,
        node_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
        export_to: Vec::new(),
    }
}

/// `exportTo` values: `*`, `.`, `~` or namespace names.
fn export_to(f: &mut Findings, path: &str, to: &[String]) {
    for (i, t) in to.iter().enumerate() {
        let ok = matches!(t.as_str(), "*" | "." | "~")
            || crate::names::check_subdomain(t).is_ok() && !t.contains('.');
        if !ok {
            f.reject(
                &format!("{path}[{i}]"),
                &format!("{t:?} is not `*`, `.`, `~` or a namespace name"),
            );
        }
    }
}

const PROTOCOLS: [&str; 11] = [
    "HTTP", "HTTPS", "GRPC", "GRPC-WEB", "HTTP2", "MONGO", "MYSQL", "REDIS", "TCP", "TLS", "UDP",
];

fn valid_host(host: &str) -> bool {
    let name = host.strip_prefix("*.").unwrap_or(host);
    host == "*"
        || (!name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            }))
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

fn service_entry(
    f: &mut Findings,
    name: &str,
    namespace: &str,
    spec: net::ServiceEntrySpec,
) -> Service {
    if spec.hosts.is_empty() {
        f.reject("spec.hosts", "needs at least one host");
    }
    export_to(f, "spec.exportTo", &spec.export_to);
    if !spec.subject_alt_names.is_empty() {
        f.warn("spec.subjectAltNames", NO_EFFECT);
    }
    let resolution = spec.resolution.as_deref().unwrap_or("NONE");
    f.one_of(
        "spec.resolution",
        Some(resolution),
        &["NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN"],
    );
    let location = spec.location.as_deref().unwrap_or("MESH_EXTERNAL");
    f.one_of(
        "spec.location",
        Some(location),
        &["MESH_EXTERNAL", "MESH_INTERNAL"],
    );
    for (i, host) in spec.hosts.iter().enumerate() {
        let path = format!("spec.hosts[{i}]");
        if !valid_host(host) {
            f.reject(
                &path,
                &format!("{host:?} is not a host name (a wildcard only as a leading `*.`)"),
            );
        } else if host.starts_with('*')
            && resolution.starts_with("DNS")
            && spec.endpoints.is_empty()
        {
            f.reject(
                &path,
                "a wildcard host cannot be resolved by DNS; list endpoints or use resolution NONE",
            );
        }
    }
    let mut addresses = Vec::new();
    for (i, a) in spec.addresses.iter().enumerate() {
        match ip_or_cidr(a) {
            Ok(ip) if !a.contains('/') => addresses.push(ip),
            Ok(_) => {}
            Err(e) => f.reject(&format!("spec.addresses[{i}]"), &e),
        }
    }
    if spec.ports.is_empty() {
        f.reject("spec.ports", "needs at least one port");
    }
    let mut ports = Vec::new();
    let mut names = BTreeSet::new();
    for (i, p) in spec.ports.iter().enumerate() {
        let path = format!("spec.ports[{i}]");
        let number = f.port(&format!("{path}.number"), p.number);
        let target = p
            .target_port
            .and_then(|t| f.port(&format!("{path}.targetPort"), t));
        let port_name = p.name.clone().unwrap_or_default();
        if !port_name.is_empty() && !names.insert(port_name.clone()) {
            f.reject(
                &format!("{path}.name"),
                &format!("{port_name:?} is used twice"),
            );
        }
        let protocol = p.protocol.as_deref().map(str::to_ascii_uppercase);
        f.one_of(&format!("{path}.protocol"), protocol.as_deref(), &PROTOCOLS);
        if let Some(number) = number {
            ports.push(ServicePort {
                name: port_name,
                port: number,
                target: TargetPort::Number(target.unwrap_or(number)),
                protocol: protocol.unwrap_or_else(|| "TCP".into()),
            });
        }
    }
    if !spec.endpoints.is_empty() && spec.workload_selector.is_some() {
        f.reject(
            "spec.workloadSelector",
            "cannot be used together with endpoints",
        );
    }
    let mut endpoints = Vec::new();
    let mut dns_hosts = Vec::new();
    for (i, ep) in spec.endpoints.iter().enumerate() {
        let path = format!("spec.endpoints[{i}]");
        for port_name in ep.ports.keys() {
            if !names.contains(port_name) {
                let hint = suggest(port_name, names.iter().map(String::as_str))
                    .map(|s| format!("; did you mean {s:?}?"))
                    .unwrap_or_default();
                f.reject(
                    &format!("{path}.ports.{port_name}"),
                    &format!(
                        "unknown port name {port_name:?}: the entry's ports are {names:?}{hint}"
                    ),
                );
            }
        }
        let dns = resolution.starts_with("DNS");
        match ep.address.as_deref() {
            None => f.reject(&format!("{path}.address"), "is required"),
            Some(a) if dns && a.parse::<IpAddr>().is_err() => {
                if valid_host(a) {
                    dns_hosts.push(a.to_ascii_lowercase());
                } else {
                    f.reject(
                        &format!("{path}.address"),
                        &format!("{a:?} is neither an IP address nor a host name"),
                    );
                }
            }
            Some(_) => {
                let ep_name = format!("{name}-{i}");
                let meta = ObjectMeta::default();
                if let Some(w) = workload(f, &path, &ep_name, namespace, &meta, ep) {
                    endpoints.push(w);
                }
            }
        }
    }
    if resolution == "STATIC" && spec.endpoints.is_empty() && spec.workload_selector.is_none() {
        f.reject(
            "spec.endpoints",
            "resolution STATIC needs endpoints or a workloadSelector",
        );
    }
    Service {
        name: name.into(),
        namespace: namespace.into(),
        hosts: spec.hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
        addresses,
        ports,
        endpoints: match (&spec.workload_selector, resolution) {
            (Some(sel), _) => Endpoints::Selector(sel.labels.clone()),
            (None, _) if !endpoints.is_empty() => Endpoints::Static(endpoints),
            (None, r) if r.starts_with("DNS") => Endpoints::Dns(dns_hosts),
            _ => Endpoints::Unset,
        },
        origin: if location == "MESH_INTERNAL" {
            ServiceOrigin::MeshInternal
        } else {
            ServiceOrigin::MeshExternal
        },
        traffic_distribution: None,
        node_local: false,
        export_to: spec.export_to,
    }
}

/// A WorkloadEntry (or a ServiceEntry endpoint) as a workload.
fn workload(
    f: &mut Findings,
    path: &str,
    name: &str,
    namespace: &str,
    meta: &ObjectMeta,
    spec: &net::WorkloadEntrySpec,
) -> Option<Workload> {
    let mut addresses = Vec::new();
    match spec.address.as_deref() {
        None => f.reject(&format!("{path}.address"), "is required"),
        Some(a) => match a.parse::<IpAddr>() {
            Ok(ip) => addresses.push(ip),
            Err(_) => f.reject(
                &format!("{path}.address"),
                &format!("{a:?} is not an IP address (hostnames are not supported for WorkloadEntry here)"),
            ),
        },
    }
    if let Some(more) = meta.annotations.get(ADDRESSES_ANNOTATION) {
        for a in more.split(',').map(str::trim).filter(|a| !a.is_empty()) {
            match a.parse::<IpAddr>() {
                Ok(ip) => addresses.push(ip),
                Err(_) => f.reject(
                    "metadata.annotations",
                    &format!("{ADDRESSES_ANNOTATION}: {a:?} is not an IP address"),
                ),
            }
        }
    }
    let mut ports = BTreeMap::new();
    for (port_name, port) in &spec.ports {
        if let Some(p) = f.port(&format!("{path}.ports"), *port) {
            ports.insert(port_name.clone(), p);
        }
    }
    if spec.weight == Some(0) {
        f.reject(&format!("{path}.weight"), "must be at least 1");
    }
    (!f.has_errors()).then(|| Workload {
        name: name.into(),
        namespace: namespace.into(),
        addresses,
        labels: spec.labels.clone(),
        service_account: spec
            .service_account
            .clone()
            .unwrap_or_else(|| "default".into()),
        locality: Locality::parse(spec.locality.as_deref().unwrap_or_default()),
        network: spec.network.clone().unwrap_or_default(),
        ports,
        weight: spec.weight.unwrap_or(1),
        node: meta.annotations.get(NODE_ANNOTATION).cloned(),
        netns: meta.annotations.get(NETNS_ANNOTATION).map(PathBuf::from),
        ready: true,
        group: None,
        probe: None,
    })
}

/// A WorkloadEntry's `status.conditions`: Istio marks it not ready with
/// the condition `Healthy` set to `False`. Without the condition it is
/// ready.
fn healthy_condition(f: &mut Findings, json: &Json) -> bool {
    let Some(conditions) = json.get("status").and_then(|s| s.get("conditions")) else {
        return true;
    };
    let Some(conditions) = conditions.as_array() else {
        f.reject("status.conditions", "must be a list");
        return true;
    };
    let mut ready = true;
    for (i, c) in conditions.iter().enumerate() {
        if c.get("type").and_then(Json::as_str) != Some("Healthy") {
            continue;
        }
        match c.get("status").and_then(Json::as_str) {
            Some("False") => ready = false,
            Some("True" | "Unknown") => {}
            Some(other) => f.reject(
                &format!("status.conditions[{i}].status"),
                &format!("{other:?} is not True, False or Unknown"),
            ),
            None => f.reject(&format!("status.conditions[{i}].status"), "is required"),
        }
    }
    ready
}

fn workload_group(f: &mut Findings, spec: &net::WorkloadGroupSpec) {
    for port in spec.template.ports.values() {
        f.port("spec.template.ports", *port);
    }
    if let Some(probe) = &spec.probe {
        let handlers = [
            probe.http_get.is_some(),
            probe.tcp_socket.is_some(),
            probe.exec.is_some(),
            probe.grpc.is_some(),
        ];
        match handlers.iter().filter(|h| **h).count() {
            1 => {}
            0 => f.reject("spec.probe", "needs one of httpGet, tcpSocket, exec, grpc"),
            _ => f.reject(
                "spec.probe",
                "takes only one of httpGet, tcpSocket, exec, grpc",
            ),
        }
        if let Some(h) = &probe.http_get {
            f.port("spec.probe.httpGet.port", h.port);
            f.one_of(
                "spec.probe.httpGet.scheme",
                h.scheme.as_deref(),
                &["HTTP", "HTTPS"],
            );
        }
        if let Some(t) = &probe.tcp_socket {
            f.port("spec.probe.tcpSocket.port", t.port);
        }
        if let Some(g) = &probe.grpc {
            f.port("spec.probe.grpc.port", g.port);
        }
        if probe.exec.as_ref().is_some_and(|e| e.command.is_empty()) {
            f.reject("spec.probe.exec.command", "is empty");
        }
    }
}

/// Why a field strait reads and checks does nothing yet: the node agent
/// works at L4, and these belong to an L7 proxy (a waypoint) or are not
/// built.
const NO_EFFECT: &str = "has no effect: strait's node agent works at L4 and does not implement it (an L7 proxy, a waypoint, would)";

fn destination_rule(f: &mut Findings, spec: &net::DestinationRuleSpec) {
    if spec.host.is_empty() {
        f.reject("spec.host", "is required");
    } else if !valid_host(&spec.host) {
        f.reject("spec.host", &format!("{:?} is not a host name", spec.host));
    }
    export_to(f, "spec.exportTo", &spec.export_to);
    if let Some(tp) = &spec.traffic_policy {
        traffic_policy(f, "spec.trafficPolicy", tp);
    }
    if !spec.subsets.is_empty() {
        f.warn(
            "spec.subsets",
            "has no effect at L4: subsets are chosen by VirtualService routes, which a waypoint applies",
        );
    }
    let mut names = BTreeSet::new();
    for (i, subset) in spec.subsets.iter().enumerate() {
        let path = format!("spec.subsets[{i}]");
        if subset.name.is_empty() {
            f.reject(&format!("{path}.name"), "is required");
        } else if !names.insert(subset.name.as_str()) {
            f.reject(
                &format!("{path}.name"),
                &format!("{:?} is defined twice", subset.name),
            );
        }
        if let Some(tp) = &subset.traffic_policy {
            traffic_policy(f, &format!("{path}.trafficPolicy"), tp);
        }
    }
}

const SIMPLE_LB: [&str; 6] = [
    "UNSPECIFIED",
    "LEAST_CONN",
    "RANDOM",
    "PASSTHROUGH",
    "ROUND_ROBIN",
    "LEAST_REQUEST",
];

fn traffic_policy(f: &mut Findings, path: &str, tp: &net::TrafficPolicy) {
    if let Some(lb) = &tp.load_balancer {
        load_balancer(f, &format!("{path}.loadBalancer"), lb);
    }
    if let Some(od) = &tp.outlier_detection {
        outlier_detection(f, &format!("{path}.outlierDetection"), od);
    }
    if let Some(pool) = &tp.connection_pool {
        connection_pool(f, &format!("{path}.connectionPool"), pool);
    }
    if let Some(tls) = &tp.tls {
        f.one_of(
            &format!("{path}.tls.mode"),
            tls.mode.as_deref(),
            &["DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL"],
        );
        f.warn(&format!("{path}.tls"), NO_EFFECT);
    }
    if tp.tunnel.is_some() {
        f.warn(&format!("{path}.tunnel"), NO_EFFECT);
    }
    if tp.proxy_protocol.is_some() {
        f.warn(&format!("{path}.proxyProtocol"), NO_EFFECT);
    }
    for (i, pl) in tp.port_level_settings.iter().enumerate() {
        let p = format!("{path}.portLevelSettings[{i}]");
        match &pl.port {
            Some(port) => {
                f.port(&format!("{p}.port.number"), port.number);
            }
            None => f.reject(&format!("{p}.port"), "is required"),
        }
        if let Some(lb) = &pl.load_balancer {
            load_balancer(f, &format!("{p}.loadBalancer"), lb);
        }
        if let Some(od) = &pl.outlier_detection {
            outlier_detection(f, &format!("{p}.outlierDetection"), od);
        }
        if let Some(pool) = &pl.connection_pool {
            connection_pool(f, &format!("{p}.connectionPool"), pool);
        }
        if pl.tls.is_some() {
            f.warn(&format!("{p}.tls"), NO_EFFECT);
        }
    }
}

fn load_balancer(f: &mut Findings, path: &str, lb: &net::LoadBalancer) {
    f.one_of(&format!("{path}.simple"), lb.simple.as_deref(), &SIMPLE_LB);
    if lb.simple.is_some() && lb.consistent_hash.is_some() {
        f.reject(path, "simple and consistentHash cannot both be set");
    }
    f.duration(
        &format!("{path}.warmupDurationSecs"),
        lb.warmup_duration_secs.as_ref(),
    );
    if lb.warmup_duration_secs.is_some() || lb.warmup.is_some() {
        f.warn(&format!("{path}.warmup"), NO_EFFECT);
    }
    if let Some(hash) = &lb.consistent_hash {
        // Only the client's address is known at L4.
        let source_ip = hash.get("useSourceIp").and_then(serde_json::Value::as_bool) == Some(true);
        if !source_ip {
            f.warn(
                &format!("{path}.consistentHash"),
                "has no effect at L4 except useSourceIp: true (headers, cookies and query parameters are L7, which a waypoint sees)",
            );
        }
    }
    let Some(loc) = &lb.locality_lb_setting else {
        return;
    };
    let path = format!("{path}.localityLbSetting");
    if !loc.distribute.is_empty() && !loc.failover.is_empty() {
        f.reject(&path, "distribute and failover cannot both be set");
    }
    for (i, d) in loc.distribute.iter().enumerate() {
        let p = format!("{path}.distribute[{i}]");
        if d.from.is_empty() {
            f.reject(&format!("{p}.from"), "is required");
        }
        if d.to.is_empty() {
            f.reject(&format!("{p}.to"), "needs at least one locality");
        }
        let sum: u64 = d.to.values().map(|w| u64::from(*w)).sum();
        if !d.to.is_empty() && sum != 100 {
            f.reject(
                &format!("{p}.to"),
                &format!("weights sum to {sum}, not 100"),
            );
        }
    }
    for (i, fo) in loc.failover.iter().enumerate() {
        let p = format!("{path}.failover[{i}]");
        if fo.from.is_empty() || fo.to.is_empty() {
            f.reject(&p, "needs both from and to (regions)");
        } else if fo.from == fo.to {
            f.reject(&format!("{p}.to"), "must be another region than from");
        } else if fo.from.contains('/') || fo.to.contains('/') {
            f.reject(&p, "failover is between regions: no zone or subzone");
        }
    }
    for (i, label) in loc.failover_priority.iter().enumerate() {
        if label.is_empty() || label.starts_with('=') {
            f.reject(
                &format!("{path}.failoverPriority[{i}]"),
                "needs a label (or label=value)",
            );
        }
    }
}

fn outlier_detection(f: &mut Findings, path: &str, od: &net::OutlierDetection) {
    f.duration(&format!("{path}.interval"), od.interval.as_ref());
    f.duration(
        &format!("{path}.baseEjectionTime"),
        od.base_ejection_time.as_ref(),
    );
    for (field, v) in [
        ("maxEjectionPercent", od.max_ejection_percent),
        ("minHealthPercent", od.min_health_percent),
    ] {
        f.percent(&format!("{path}.{field}"), v.map(f64::from));
    }
}

fn connection_pool(f: &mut Findings, path: &str, pool: &net::ConnectionPool) {
    if let Some(tcp) = &pool.tcp {
        let p = format!("{path}.tcp");
        f.duration(&format!("{p}.connectTimeout"), tcp.connect_timeout.as_ref());
        f.duration(
            &format!("{p}.maxConnectionDuration"),
            tcp.max_connection_duration.as_ref(),
        );
        f.duration(&format!("{p}.idleTimeout"), tcp.idle_timeout.as_ref());
        if let Some(k) = &tcp.tcp_keepalive {
            f.duration(&format!("{p}.tcpKeepalive.time"), k.time.as_ref());
            f.duration(&format!("{p}.tcpKeepalive.interval"), k.interval.as_ref());
            f.warn(&format!("{p}.tcpKeepalive"), NO_EFFECT);
        }
        if tcp.max_connection_duration.is_some() {
            f.warn(&format!("{p}.maxConnectionDuration"), NO_EFFECT);
        }
        if tcp.idle_timeout.is_some() {
            f.warn(&format!("{p}.idleTimeout"), NO_EFFECT);
        }
    }
    if let Some(http) = &pool.http {
        let p = format!("{path}.http");
        f.warn(&p, NO_EFFECT);
        f.duration(&format!("{p}.idleTimeout"), http.idle_timeout.as_ref());
        f.one_of(
            &format!("{p}.h2UpgradePolicy"),
            http.h2_upgrade_policy.as_deref(),
            &["DEFAULT", "DO_NOT_UPGRADE", "UPGRADE"],
        );
    }
}

fn string_match(f: &mut Findings, path: &str, m: &net::StringMatch) {
    let set = [&m.exact, &m.prefix, &m.regex]
        .iter()
        .filter(|v| v.is_some())
        .count();
    if set != 1 {
        f.reject(path, "needs exactly one of exact, prefix, regex");
    }
}

/// Destinations of one route: hosts present, and weights summing to 100
/// when there are several.
fn route_weights(f: &mut Findings, path: &str, routes: &[net::RouteDestination]) {
    for (i, r) in routes.iter().enumerate() {
        let p = format!("{path}[{i}]");
        if r.destination.host.is_empty() {
            f.reject(&format!("{p}.destination.host"), "is required");
        }
        if let Some(port) = &r.destination.port {
            f.port(&format!("{p}.destination.port.number"), port.number);
        }
        if let Some(w) = r.weight
            && !(0..=100).contains(&w)
        {
            f.reject(&format!("{p}.weight"), &format!("{w} is not 0-100"));
        }
    }
    if routes.len() > 1 {
        let sum: i64 = routes.iter().map(|r| r.weight.unwrap_or(0)).sum();
        if sum != 100 {
            f.reject(path, &format!("weights sum to {sum}, not 100"));
        }
    }
}

fn virtual_service(f: &mut Findings, spec: &net::VirtualServiceSpec) {
    let delegate = spec.http.iter().any(|h| h.delegate.is_some());
    if spec.hosts.is_empty() && !delegate {
        f.reject("spec.hosts", "needs at least one host");
    }
    for (i, host) in spec.hosts.iter().enumerate() {
        if !valid_host(host) {
            f.reject(
                &format!("spec.hosts[{i}]"),
                &format!("{host:?} is not a host name"),
            );
        }
    }
    for (i, h) in spec.http.iter().enumerate() {
        let path = format!("spec.http[{i}]");
        if h.route.is_empty()
            && h.redirect.is_none()
            && h.direct_response.is_none()
            && h.delegate.is_none()
        {
            f.reject(
                &format!("{path}.route"),
                "needs a route, redirect, directResponse or delegate",
            );
        }
        route_weights(f, &format!("{path}.route"), &h.route);
        for (j, m) in h.matches.iter().enumerate() {
            let p = format!("{path}.match[{j}]");
            for (field, sm) in [
                ("uri", &m.uri),
                ("scheme", &m.scheme),
                ("method", &m.method),
                ("authority", &m.authority),
            ] {
                if let Some(sm) = sm {
                    string_match(f, &format!("{p}.{field}"), sm);
                }
            }
            for (field, map) in [
                ("headers", &m.headers),
                ("queryParams", &m.query_params),
                ("withoutHeaders", &m.without_headers),
            ] {
                for (key, sm) in map {
                    string_match(f, &format!("{p}.{field}.{key}"), sm);
                }
            }
            if let Some(port) = m.port {
                f.port(&format!("{p}.port"), port);
            }
        }
        f.duration(&format!("{path}.timeout"), h.timeout.as_ref());
        if let Some(r) = &h.retries {
            f.duration(
                &format!("{path}.retries.perTryTimeout"),
                r.per_try_timeout.as_ref(),
            );
            f.duration(&format!("{path}.retries.backoff"), r.backoff.as_ref());
        }
        if let Some(fault) = &h.fault {
            if let Some(d) = &fault.delay {
                f.duration(
                    &format!("{path}.fault.delay.fixedDelay"),
                    d.fixed_delay.as_ref(),
                );
                f.duration(
                    &format!("{path}.fault.delay.exponentialDelay"),
                    d.exponential_delay.as_ref(),
                );
                f.percent(
                    &format!("{path}.fault.delay.percentage.value"),
                    d.percentage.as_ref().map(|p| p.value),
                );
            }
            if let Some(a) = &fault.abort {
                f.percent(
                    &format!("{path}.fault.abort.percentage.value"),
                    a.percentage.as_ref().map(|p| p.value),
                );
                if let Some(status) = a.http_status
                    && !(200..=599).contains(&status)
                {
                    f.reject(
                        &format!("{path}.fault.abort.httpStatus"),
                        &format!("{status} is not an HTTP status"),
                    );
                }
            }
        }
        f.percent(
            &format!("{path}.mirrorPercentage.value"),
            h.mirror_percentage.as_ref().map(|p| p.value),
        );
    }
    for (i, t) in spec.tcp.iter().enumerate() {
        let path = format!("spec.tcp[{i}]");
        if t.route.is_empty() {
            f.reject(&format!("{path}.route"), "needs at least one destination");
        }
        route_weights(f, &format!("{path}.route"), &t.route);
        for (j, m) in t.matches.iter().enumerate() {
            if let Some(port) = m.port {
                f.port(&format!("{path}.match[{j}].port"), port);
            }
            for (k, subnet) in m.destination_subnets.iter().enumerate() {
                if let Err(e) = ip_or_cidr(subnet) {
                    f.reject(&format!("{path}.match[{j}].destinationSubnets[{k}]"), &e);
                }
            }
        }
    }
    for (i, t) in spec.tls.iter().enumerate() {
        let path = format!("spec.tls[{i}]");
        route_weights(f, &format!("{path}.route"), &t.route);
        if t.matches.is_empty() {
            f.reject(
                &format!("{path}.match"),
                "TLS routes need a match with sniHosts",
            );
        }
    }
}

fn gateway(f: &mut Findings, spec: &net::GatewaySpec) {
    if spec.servers.is_empty() {
        f.reject("spec.servers", "needs at least one server");
    }
    for (i, s) in spec.servers.iter().enumerate() {
        let path = format!("spec.servers[{i}]");
        f.port(&format!("{path}.port.number"), s.port.number);
        if s.hosts.is_empty() {
            f.reject(&format!("{path}.hosts"), "needs at least one host");
        }
    }
}

fn peer_authentication(
    f: &mut Findings,
    name: &str,
    namespace: &str,
    spec: sec::PeerAuthenticationSpec,
) -> Option<PeerAuthentication> {
    let mode = mtls_mode(f, "spec.mtls.mode", spec.mtls.as_ref());
    let mut port_level = BTreeMap::new();
    for (port, mtls) in &spec.port_level_mtls {
        let path = format!("spec.portLevelMtls.{port}");
        let Some(number) = port.parse::<u32>().ok().and_then(|p| f.port(&path, p)) else {
            if port.parse::<u32>().is_err() {
                f.reject(&path, &format!("{port:?} is not a port number"));
            }
            continue;
        };
        let m = mtls_mode(f, &format!("{path}.mode"), Some(mtls));
        port_level.insert(number, m);
    }
    if !port_level.is_empty() && spec.selector.is_none() {
        f.reject(
            "spec.portLevelMtls",
            "needs a selector: Istio applies port-level mTLS only to selected workloads",
        );
    }
    (!f.has_errors()).then(|| PeerAuthentication {
        name: name.into(),
        namespace: namespace.into(),
        selector: spec.selector.map(|s| s.match_labels),
        mode,
        port_level,
    })
}

fn mtls_mode(f: &mut Findings, path: &str, mtls: Option<&sec::Mtls>) -> MtlsMode {
    match mtls.and_then(|m| m.mode.as_deref()) {
        None | Some("UNSET") => MtlsMode::Unset,
        Some("PERMISSIVE") => MtlsMode::Permissive,
        Some("STRICT") => MtlsMode::Strict,
        Some("DISABLE") => MtlsMode::Disable,
        Some(other) => {
            f.one_of(
                path,
                Some(other),
                &["UNSET", "PERMISSIVE", "STRICT", "DISABLE"],
            );
            MtlsMode::Unset
        }
    }
}

fn selector_or_target(f: &mut Findings, selector: bool, target: bool) {
    if selector && target {
        f.reject("spec.targetRef", "cannot be used together with selector");
    }
}

/// Condition keys an AuthorizationPolicy may use, and whether each is L4
/// (enforceable by the node agent) or needs a waypoint.
const L4_KEYS: [&str; 6] = [
    "source.ip",
    "source.namespace",
    "source.principal",
    "destination.ip",
    "destination.port",
    "remote.ip",
];
const L7_KEY_PREFIXES: [&str; 8] = [
    "request.auth.principal",
    "request.auth.audiences",
    "request.auth.presenter",
    "request.auth.claims[",
    "request.headers[",
    "connection.sni",
    "experimental.envoy.filters.",
    "request.regex.headers[",
];

/// What an L7 attribute means on a workload without a waypoint.
const L7_WARNING: &str = "is an L7 attribute: only a waypoint can check it; on a workload \
     without one, the rule that uses it never matches (an ALLOW rule allows nothing, a DENY \
     rule denies all its other matches), as in ztunnel";

fn authorization_policy(f: &mut Findings, spec: &sec::AuthorizationPolicySpec) {
    let action = spec.action.as_deref().unwrap_or("ALLOW");
    f.one_of(
        "spec.action",
        Some(action),
        &["ALLOW", "DENY", "AUDIT", "CUSTOM"],
    );
    if action == "CUSTOM" && spec.provider.is_none() {
        f.reject("spec.provider", "is required for action CUSTOM");
    }
    if action == "CUSTOM" {
        f.warn(
            "spec.action",
            "CUSTOM needs an external authorizer, which the node proxy does not have: it denies \
             the connections this policy's rules match",
        );
    }
    if action != "CUSTOM" && spec.provider.is_some() {
        f.reject("spec.provider", "is only for action CUSTOM");
    }
    selector_or_target(
        f,
        spec.selector.is_some(),
        spec.target_ref.is_some() || !spec.target_refs.is_empty(),
    );
    for (i, rule) in spec.rules.iter().enumerate() {
        let path = format!("spec.rules[{i}]");
        for (j, from) in rule.from.iter().enumerate() {
            let p = format!("{path}.from[{j}].source");
            let s = &from.source;
            for (field, blocks) in [
                ("ipBlocks", &s.ip_blocks),
                ("notIpBlocks", &s.not_ip_blocks),
                ("remoteIpBlocks", &s.remote_ip_blocks),
                ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
            ] {
                for (k, block) in blocks.iter().enumerate() {
                    if let Err(e) = ip_or_cidr(block) {
                        f.reject(&format!("{p}.{field}[{k}]"), &e);
                    }
                }
            }
            for (field, values) in [
                ("requestPrincipals", &s.request_principals),
                ("notRequestPrincipals", &s.not_request_principals),
            ] {
                if !values.is_empty() {
                    f.warn(&format!("{p}.{field}"), L7_WARNING);
                }
            }
        }
        for (j, to) in rule.to.iter().enumerate() {
            let p = format!("{path}.to[{j}].operation");
            let o = &to.operation;
            for (field, ports) in [("ports", &o.ports), ("notPorts", &o.not_ports)] {
                for (k, port) in ports.iter().enumerate() {
                    match port.parse::<u32>() {
                        Ok(n) => {
                            f.port(&format!("{p}.{field}[{k}]"), n);
                        }
                        Err(_) => f.reject(
                            &format!("{p}.{field}[{k}]"),
                            &format!("{port:?} is not a port number"),
                        ),
                    }
                }
            }
            for (field, values) in [
                ("hosts", &o.hosts),
                ("notHosts", &o.not_hosts),
                ("methods", &o.methods),
                ("notMethods", &o.not_methods),
                ("paths", &o.paths),
                ("notPaths", &o.not_paths),
            ] {
                if !values.is_empty() {
                    f.warn(&format!("{p}.{field}"), L7_WARNING);
                }
            }
        }
        for (j, cond) in rule.when.iter().enumerate() {
            let p = format!("{path}.when[{j}]");
            if cond.values.is_empty() && cond.not_values.is_empty() {
                f.reject(&p, "needs values or notValues");
            }
            if L4_KEYS.contains(&cond.key.as_str()) {
                if cond.key == "destination.port" {
                    for (k, v) in cond.values.iter().chain(&cond.not_values).enumerate() {
                        if v.parse::<u16>().map_or(true, |p| p == 0) {
                            f.reject(
                                &format!("{p}.values[{k}]"),
                                &format!("{v:?} is not a port number"),
                            );
                        }
                    }
                }
                if cond.key.ends_with(".ip") {
                    for v in cond.values.iter().chain(&cond.not_values) {
                        if let Err(e) = ip_or_cidr(v) {
                            f.reject(&format!("{p}.values"), &e);
                        }
                    }
                }
            } else if L7_KEY_PREFIXES.iter().any(|k| cond.key.starts_with(k)) {
                f.warn(&format!("{p}.key"), &format!("{} {L7_WARNING}", cond.key));
            } else {
                let known = L4_KEYS
                    .iter()
                    .copied()
                    .chain(L7_KEY_PREFIXES.iter().map(|k| k.trim_end_matches('[')));
                let hint = suggest(&cond.key, known)
                    .map(|s| format!("; did you mean {s}?"))
                    .unwrap_or_default();
                f.reject(
                    &format!("{p}.key"),
                    &format!("{:?} is not a condition key{hint}", cond.key),
                );
            }
        }
    }
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

/// Checks that need every object: subsets that some DestinationRule
/// defines, hosts that some service answers to, port names that workloads
/// have.
/// Whether [`across`] checks this object (and so needs its tree).
pub(crate) fn checked_across(item: &Item) -> bool {
    match item {
        Item::DestinationRule(_) | Item::VirtualService(_) => true,
        Item::Workload(w) => w.group.is_some(),
        Item::Service(s) => s
            .ports
            .iter()
            .any(|p| matches!(p.target, TargetPort::Name(_))),
        _ => false,
    }
}

pub(crate) fn across(report: &mut Report, parsed: &[Parsed]) {
    let services: Vec<&Service> = parsed
        .iter()
        .filter_map(|p| match &p.item {
            Item::Service(s) => Some(s),
            _ => None,
        })
        .collect();
    let known_host = |host: &str| {
        services.iter().any(|s| {
            s.hosts
                .iter()
                .any(|h| host_matches(h, host) || host_matches(host, h))
        })
    };
    let rules: Vec<(String, &net::DestinationRuleSpec)> = parsed
        .iter()
        .filter_map(|p| match &p.item {
            Item::DestinationRule(dr) => Some((qualify(&dr.spec.host, &dr.namespace), &dr.spec)),
            _ => None,
        })
        .collect();
    let groups: BTreeSet<(&str, &str)> = parsed
        .iter()
        .filter_map(|p| match &p.item {
            Item::WorkloadGroup(g) => Some((g.namespace.as_str(), g.name.as_str())),
            _ => None,
        })
        .collect();
    let mut workloads: HashMap<&str, Vec<&Workload>> = HashMap::new();
    for p in parsed {
        if let Item::Workload(w) = &p.item {
            workloads.entry(w.namespace.as_str()).or_default().push(w);
        }
    }
    for p in parsed {
        let Some(tree) = &p.tree else {
            continue;
        };
        let mut f = Findings::new(tree, p.first_line);
        match &p.item {
            Item::Workload(w) => {
                if let Some(group) = &w.group
                    && !groups.contains(&(w.namespace.as_str(), group.as_str()))
                {
                    f.warn(
                        "metadata.annotations",
                        &format!(
                            "{GROUP_ANNOTATION}: no WorkloadGroup {}/{group}; the entry has no probe",
                            w.namespace
                        ),
                    );
                }
            }
            Item::DestinationRule(dr) => {
                let host = qualify(&dr.spec.host, &dr.namespace);
                if !known_host(&host) {
                    f.warn(
                        "spec.host",
                        &format!("{host} matches no Service or ServiceEntry"),
                    );
                }
            }
            Item::VirtualService(vs) => {
                for (i, h) in vs.spec.hosts.iter().enumerate() {
                    let host = qualify(h, &vs.namespace);
                    if !host.starts_with('*') && !known_host(&host) {
                        f.warn(
                            &format!("spec.hosts[{i}]"),
                            &format!("{host} matches no Service or ServiceEntry"),
                        );
                    }
                }
                let routes = vs
                    .spec
                    .http
                    .iter()
                    .enumerate()
                    .map(|(i, h)| (format!("spec.http[{i}].route"), &h.route))
                    .chain(
                        vs.spec
                            .tcp
                            .iter()
                            .enumerate()
                            .map(|(i, t)| (format!("spec.tcp[{i}].route"), &t.route)),
                    )
                    .chain(
                        vs.spec
                            .tls
                            .iter()
                            .enumerate()
                            .map(|(i, t)| (format!("spec.tls[{i}].route"), &t.route)),
                    );
                for (path, route) in routes {
                    for (j, r) in route.iter().enumerate() {
                        let p = format!("{path}[{j}].destination");
                        let host = qualify(&r.destination.host, &vs.namespace);
                        if !known_host(&host) {
                            f.warn(
                                &format!("{p}.host"),
                                &format!("{host} matches no Service or ServiceEntry"),
                            );
                        }
                        let Some(subset) = &r.destination.subset else {
                            continue;
                        };
                        let defined: Vec<&str> = rules
                            .iter()
                            .filter(|(h, _)| host_matches(h, &host))
                            .flat_map(|(_, dr)| dr.subsets.iter().map(|s| s.name.as_str()))
                            .collect();
                        if !defined.contains(&subset.as_str()) {
                            let hint = suggest(subset, defined.iter().copied())
                                .map(|s| format!("; did you mean {s:?}?"))
                                .unwrap_or_default();
                            f.reject(
                                &format!("{p}.subset"),
                                &format!("subset {subset:?} is not defined by any DestinationRule for {host}{hint}"),
                            );
                        }
                    }
                }
            }
            Item::Service(s) => {
                let Endpoints::Selector(selector) = &s.endpoints else {
                    continue;
                };
                if !s
                    .ports
                    .iter()
                    .any(|p| matches!(p.target, TargetPort::Name(_)))
                {
                    continue;
                }
                let selected: Vec<&&Workload> = workloads
                    .get(s.namespace.as_str())
                    .into_iter()
                    .flatten()
                    .filter(|w| selector.iter().all(|(k, v)| w.labels.get(k) == Some(v)))
                    .collect();
                for (i, port) in s.ports.iter().enumerate() {
                    if let TargetPort::Name(name) = &port.target
                        && !selected.is_empty()
                        && !selected.iter().any(|w| w.ports.contains_key(name))
                    {
                        f.warn(
                            &format!("spec.ports[{i}].targetPort"),
                            &format!("unknown port name {name:?}: no selected workload has a port of that name"),
                        );
                    }
                }
            }
            _ => {}
        }
        let entry = &mut report.objects[p.report];
        entry.warnings.append(&mut f.warnings);
        if !f.errors.is_empty() {
            match &mut entry.verdict {
                Verdict::Rejected(existing) => existing.append(&mut f.errors),
                verdict => *verdict = Verdict::Rejected(f.errors),
            }
        }
    }
}

/// The model of a config whose every object passed.
pub(crate) fn build(parsed: Vec<Parsed>, report: &Report) -> Config {
    let mut config = Config::default();
    let mut kubernetes_services = HashMap::new();
    for p in parsed {
        match p.item {
            Item::Namespace(ns) => {
                config.namespaces.insert(ns.name.clone(), ns);
            }
            Item::Node(n) => {
                config.nodes.insert(n.name.clone(), n);
            }
            Item::Service(s) => merge_service(&mut config.services, &mut kubernetes_services, s),
            Item::Workload(w) => config.workloads.push(w),
            Item::WorkloadGroup(g) => config.workload_groups.push(*g),
            Item::PeerAuthentication(pa) => config.peer_authentications.push(pa),
            Item::AuthorizationPolicy(ap) => config.authorization_policies.push(*ap),
            Item::RequestAuthentication(ra) => config.request_authentications.push(*ra),
            Item::DestinationRule(dr) => config.destination_rules.push(*dr),
            Item::VirtualService(vs) => config.virtual_services.push(*vs),
            Item::Gateway(gw) => config.gateways.push(*gw),
        }
    }
    link_groups(&mut config);
    // A workload without its own locality or network has its node's, as a
    // Kubernetes pod has.
    for w in &mut config.workloads {
        let Some(node) = w.node.as_ref().and_then(|n| config.nodes.get(n)) else {
            continue;
        };
        if w.locality.region.is_empty() {
            w.locality = node.locality.clone();
        }
        if w.network.is_empty() {
            w.network = node.network.clone();
        }
    }
    config.ignored = report
        .objects
        .iter()
        .filter(|o| matches!(o.verdict, Verdict::Ignored(_)))
        .map(|o| format!("{} {}", o.api_version, o.object()))
        .collect();
    config.reindex();
    config
}

/// Gives each WorkloadEntry its WorkloadGroup's probe: the group its
/// annotation names, else one in its namespace whose `metadata.labels` it
/// carries (the first by name).
fn link_groups(config: &mut Config) {
    if config.workload_groups.is_empty() {
        return;
    }
    config.workload_groups.sort_by(|a, b| {
        (a.namespace.as_str(), a.name.as_str()).cmp(&(b.namespace.as_str(), b.name.as_str()))
    });
    let groups = &config.workload_groups;
    for w in &mut config.workloads {
        let group = match &w.group {
            Some(name) => groups
                .iter()
                .find(|g| g.namespace == w.namespace && &g.name == name),
            None => groups.iter().find(|g| {
                g.namespace == w.namespace
                    && g.spec.metadata.as_ref().is_some_and(|m| {
                        !m.labels.is_empty()
                            && m.labels.iter().all(|(k, v)| w.labels.get(k) == Some(v))
                    })
            }),
        };
        if let Some(g) = group {
            w.group = Some(g.name.clone());
            w.probe = g.spec.probe.clone().map(Box::new);
        }
    }
}

/// The same Kubernetes Service in several clusters is one service: its
/// addresses and ports are the union. `seen` indexes the Kubernetes
/// services already in `services` by (namespace, name).
fn merge_service(
    services: &mut Vec<Service>,
    seen: &mut HashMap<(String, String), usize>,
    s: Service,
) {
    let key = (s.namespace.clone(), s.name.clone());
    let index = match s.origin {
        ServiceOrigin::Kubernetes => seen.get(&key).copied(),
        _ => None,
    };
    if index.is_none() && s.origin == ServiceOrigin::Kubernetes {
        seen.insert(key, services.len());
    }
    match index.and_then(|i| services.get_mut(i)) {
        Some(existing) => {
            for a in s.addresses {
                if !existing.addresses.contains(&a) {
                    existing.addresses.push(a);
                }
            }
            for port in s.ports {
                if !existing.ports.iter().any(|p| p.port == port.port) {
                    existing.ports.push(port);
                }
            }
        }
        None => services.push(s),
    }
}
