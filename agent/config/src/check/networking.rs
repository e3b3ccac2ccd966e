//! ServiceEntry, WorkloadEntry and WorkloadGroup: where services and
//! workloads outside Kubernetes' own objects come from.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::PathBuf,
};

use serde_json::Value as Json;

use super::{Findings, PROTOCOLS, export_to, host, ip_or_cidr};
use crate::{
    ADDRESSES_ANNOTATION, Endpoints, GROUP_ANNOTATION, Locality, NETNS_ANNOTATION, NODE_ANNOTATION,
    Service, ServiceOrigin, ServicePort, TargetPort, Workload,
    manifest::{ObjectMeta, networking as net},
    names, suggest,
};

/// Istio's prefix for an endpoint that is a Unix domain socket.
const UNIX: &str = "unix://";

pub(super) fn service_entry(
    f: &mut Findings,
    name: &str,
    namespace: &str,
    labels: &crate::Labels,
    spec: net::ServiceEntrySpec,
) -> Service {
    super::core::global_label(f, labels);
    if spec.hosts.is_empty() {
        f.reject("spec.hosts", "needs at least one host");
    }
    export_to(f, "spec.exportTo", namespace, &spec.export_to);
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
    let dns = resolution.starts_with("DNS");
    for (i, h) in spec.hosts.iter().enumerate() {
        let path = format!("spec.hosts[{i}]");
        if h == "*" {
            f.reject(
                &path,
                "the full wildcard `*` is not allowed in a ServiceEntry",
            );
        } else if host(f, &path, h) {
            if h.starts_with('*') && !h.starts_with("*.") {
                f.warn(
                    &path,
                    "is a partial wildcard: it matches names that end with the rest of it, across labels",
                );
            }
            if dns && spec.endpoints.is_empty() && h.starts_with('*') {
                f.reject(
                    &path,
                    "a wildcard host cannot be resolved by DNS; list endpoints or use resolution NONE",
                );
            }
        }
    }
    let mut addresses = Vec::new();
    for (i, a) in spec.addresses.iter().enumerate() {
        let path = format!("spec.addresses[{i}]");
        match ip_or_cidr(a) {
            Ok(ip) if !a.contains('/') => addresses.push(ip),
            Ok(_) if !matches!(resolution, "NONE" | "STATIC") => f.reject(
                &path,
                "a CIDR block is allowed only with resolution NONE or STATIC",
            ),
            Ok(_) => {}
            Err(e) => f.reject(&path, &e),
        }
    }
    let mut ports = Vec::new();
    let mut port_names = BTreeSet::new();
    let mut numbers = BTreeSet::new();
    for (i, p) in spec.ports.iter().enumerate() {
        let path = format!("spec.ports[{i}]");
        let number = f.port(&format!("{path}.number"), p.number);
        if number.is_some() && !numbers.insert(p.number) {
            f.reject(
                &format!("{path}.number"),
                &format!("port {} is defined twice", p.number),
            );
        }
        let target = p
            .target_port
            .and_then(|t| f.port(&format!("{path}.targetPort"), t));
        let port_name = p.name.clone().unwrap_or_default();
        match names::check_istio_label(&port_name) {
            Err(why) => f.reject(&format!("{path}.name"), &why),
            Ok(()) if !port_names.insert(port_name.clone()) => f.reject(
                &format!("{path}.name"),
                &format!("{port_name:?} is used twice"),
            ),
            Ok(()) => {}
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
    // Plain TCP has no name to tell several hosts apart by.
    if resolution != "NONE" && spec.hosts.len() > 1 {
        let l4 = spec.ports.iter().position(|p| {
            let protocol = p.protocol.as_deref().unwrap_or("TCP").to_ascii_uppercase();
            !matches!(
                protocol.as_str(),
                "HTTP" | "HTTPS" | "GRPC" | "GRPC-WEB" | "HTTP2" | "HTTP_PROXY" | "TLS"
            )
        });
        if let Some(i) = l4 {
            f.reject(
                &format!("spec.ports[{i}].protocol"),
                "several hosts need HTTP or TLS ports (to tell the hosts apart) unless resolution is NONE",
            );
        }
    }
    if let Some(selector) = &spec.workload_selector {
        f.selector("spec.workloadSelector.labels", &selector.labels);
        if !spec.endpoints.is_empty() {
            f.reject(
                "spec.workloadSelector",
                "cannot be used together with endpoints",
            );
        }
        if resolution == "NONE" {
            f.warn(
                "spec.workloadSelector",
                "has no effect with resolution NONE: the service is not load balanced",
            );
        }
    }
    match resolution {
        "NONE" if !spec.endpoints.is_empty() => f.reject(
            "spec.endpoints",
            "resolution NONE takes no endpoints (the address the client dialled is used)",
        ),
        "DNS_ROUND_ROBIN" if spec.endpoints.len() > 1 => f.reject(
            "spec.endpoints",
            "resolution DNS_ROUND_ROBIN takes at most one endpoint",
        ),
        "STATIC" if spec.endpoints.is_empty() && spec.workload_selector.is_none() => f.warn(
            "spec.endpoints",
            "resolution STATIC without endpoints or a workloadSelector: the service has no endpoints",
        ),
        _ => {}
    }
    let mut endpoints = Vec::new();
    let mut dns_hosts = Vec::new();
    for (i, ep) in spec.endpoints.iter().enumerate() {
        let path = format!("spec.endpoints[{i}]");
        for port_name in ep.ports.keys() {
            if !port_names.contains(port_name) {
                let hint = suggest(port_name, port_names.iter().map(String::as_str))
                    .map(|s| format!("; did you mean {s:?}?"))
                    .unwrap_or_default();
                f.reject(
                    &format!("{path}.ports.{port_name}"),
                    &format!(
                        "unknown port name {port_name:?}: the entry's ports are {port_names:?}{hint}"
                    ),
                );
            }
        }
        let address = ep.address.as_deref().unwrap_or_default();
        if dns && !address.is_empty() && address.parse::<IpAddr>().is_err() {
            match names::check_fqdn(address) {
                Ok(()) => {
                    entry_fields(f, &path, ep);
                    dns_hosts.push(address.to_ascii_lowercase());
                }
                Err(why) => f.reject(&format!("{path}.address"), &why),
            }
            continue;
        }
        let ep_name = format!("{name}-{i}");
        let meta = ObjectMeta::default();
        let kind = if dns { Address::Dns } else { Address::Static };
        if let Some(w) = workload(f, &path, &ep_name, namespace, &meta, ep, kind) {
            endpoints.push(w);
        }
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
        labels: labels.clone(),
        ingress: Vec::new(),
    }
}

/// What an endpoint's address may be: a WorkloadEntry's may be a host
/// name; a STATIC ServiceEntry's only an IP or a socket.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Address {
    Entry,
    Static,
    Dns,
}

pub(super) fn workload_entry(
    f: &mut Findings,
    name: &str,
    namespace: &str,
    meta: &ObjectMeta,
    spec: &net::WorkloadEntrySpec,
    json: &Json,
) -> Option<Workload> {
    let ready = healthy_condition(f, json);
    let mut w = workload(f, "spec", name, namespace, meta, spec, Address::Entry)?;
    w.ready = ready;
    w.group = meta.annotations.get(GROUP_ANNOTATION).cloned();
    Some(w)
}

/// Ports and labels of an entry, whatever its address.
fn entry_fields(
    f: &mut Findings,
    path: &str,
    spec: &net::WorkloadEntrySpec,
) -> BTreeMap<String, u16> {
    let mut ports = BTreeMap::new();
    for (port_name, port) in &spec.ports {
        let at = format!("{path}.ports.{port_name}");
        if let Err(why) = names::check_istio_label(port_name) {
            f.reject(&at, &why);
        }
        if let Some(p) = f.port(&at, *port) {
            ports.insert(port_name.clone(), p);
        }
    }
    f.labels(&format!("{path}.labels"), &spec.labels);
    ports
}

/// A WorkloadEntry (or a ServiceEntry endpoint) as a workload. `None`
/// without errors: valid, but not an address strait routes to (a host
/// name, a Unix socket, none on another network); a warning says so.
fn workload(
    f: &mut Findings,
    path: &str,
    name: &str,
    namespace: &str,
    meta: &ObjectMeta,
    spec: &net::WorkloadEntrySpec,
    kind: Address,
) -> Option<Workload> {
    let ports = entry_fields(f, path, spec);
    let at = format!("{path}.address");
    let mut addresses = Vec::new();
    let address = spec.address.as_deref().unwrap_or_default();
    if address.is_empty() {
        match &spec.network {
            Some(network) if !network.is_empty() => f.warn(
                &at,
                &format!("is unset, on network {network:?}: strait cannot route to it yet (only through that network's gateway)"),
            ),
            _ => f.reject(&at, "is required (it may be left out only with a network)"),
        }
    } else if let Some(socket) = address.strip_prefix(UNIX) {
        if !socket.starts_with('@') && (!socket.starts_with('/') || socket.ends_with('/')) {
            f.reject(
                &at,
                &format!("{socket:?} is not an absolute path to a socket"),
            );
        } else if !spec.ports.is_empty() {
            f.reject(
                &format!("{path}.ports"),
                "a Unix socket endpoint has no ports",
            );
        } else {
            f.warn(&at, "is a Unix socket: strait cannot route to it yet");
        }
    } else {
        match address.parse::<IpAddr>() {
            Ok(_) => addresses.extend(f.workload_ip(&at, address)),
            Err(_) if kind == Address::Static => f.reject(
                &at,
                &format!("{address:?} is not an IP address (resolution STATIC; a host name needs resolution DNS)"),
            ),
            Err(_) => match names::check_fqdn(address) {
                Ok(()) => f.warn(
                    &at,
                    &format!("{address:?} is a host name: strait routes to WorkloadEntries by IP address only yet"),
                ),
                Err(why) => f.reject(&at, &why),
            },
        }
    }
    if let Some(more) = meta.annotations.get(ADDRESSES_ANNOTATION) {
        for a in more.split(',').map(str::trim).filter(|a| !a.is_empty()) {
            let path = format!("metadata.annotations.{ADDRESSES_ANNOTATION}");
            addresses.extend(f.workload_ip(&path, a));
        }
    }
    if f.has_errors() || addresses.is_empty() {
        return None;
    }
    Some(Workload {
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
        // Istio reads weight 0 as unset.
        weight: spec.weight.filter(|w| *w > 0).unwrap_or(1),
        node: meta.annotations.get(NODE_ANNOTATION).cloned(),
        netns: meta.annotations.get(NETNS_ANNOTATION).map(PathBuf::from),
        ready: true,
        group: None,
        probe: None,
        owner: None,
        sidecar: false,
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

pub(super) fn workload_group(f: &mut Findings, spec: &net::WorkloadGroupSpec, json: &Json) {
    if json.get("template").is_none() {
        f.reject("spec.template", "is required");
    }
    for (port_name, port) in &spec.template.ports {
        let at = format!("spec.template.ports.{port_name}");
        if let Err(why) = names::check_istio_label(port_name) {
            f.reject(&at, &why);
        }
        f.port(&at, *port);
    }
    f.labels("spec.template.labels", &spec.template.labels);
    if let Some(meta) = &spec.metadata {
        f.labels("spec.metadata.labels", &meta.labels);
    }
    let Some(probe) = &spec.probe else {
        return;
    };
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
        for (i, header) in h.http_headers.iter().enumerate() {
            // Kubernetes' probe header rule: letters, digits and '-'.
            let ok = !header.name.is_empty()
                && header
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-');
            if !ok {
                f.reject(
                    &format!("spec.probe.httpGet.httpHeaders[{i}].name"),
                    &format!(
                        "{:?} is not a probe header name (letters, digits and '-')",
                        header.name
                    ),
                );
            }
        }
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
