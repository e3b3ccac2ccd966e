//! Kubernetes core objects: Nodes and Services.
use std::{collections::BTreeSet, net::IpAddr};

use super::{Findings, export_to};
use crate::{
    Endpoints, Labels, Locality, Node, Service, ServiceOrigin, ServicePort, TargetPort,
    manifest::{ObjectMeta, core},
};

use super::CLUSTER_DOMAIN;

pub(super) fn node(name: &str, labels: &Labels) -> Node {
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
pub(super) fn valid_port_name(name: &str) -> bool {
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

pub(super) fn service(
    f: &mut Findings,
    name: &str,
    namespace: &str,
    meta: &ObjectMeta,
    spec: core::ServiceSpec,
) -> Service {
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
        } else if !port_name.is_empty()
            && let Err(why) = crate::names::check_label(&port_name)
        {
            f.reject(&format!("{path}.name"), &why);
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
    let mut export = Vec::new();
    if let Some(to) = meta.annotations.get(crate::EXPORT_TO_ANNOTATION) {
        export = to.split(',').map(|t| t.trim().to_owned()).collect();
        export_to(
            f,
            &format!("metadata.annotations.{}", crate::EXPORT_TO_ANNOTATION),
            namespace,
            &export,
        );
    }
    if let Some(selector) = &spec.selector {
        f.labels("spec.selector", selector);
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
        export_to: export,
    }
}
