//! Kubernetes core objects: Nodes, Pods and Services.
use std::{collections::BTreeSet, net::IpAddr};

use serde_json::Value as Json;

use super::{Findings, export_to};
use crate::{
    Endpoints, Labels, Locality, NETNS_ANNOTATION, Node, SIDECAR_CONTAINER,
    SIDECAR_STATUS_ANNOTATION, Service, ServiceOrigin, ServicePort, TargetPort, Workload,
    manifest::{ObjectMeta, core, decode},
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
    status: Option<&Json>,
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
    global_label(f, &meta.labels);
    // Addresses outside the cluster use; the status is the cloud's, read
    // as far as it is an address.
    let mut ingress = Vec::new();
    let outside = spec
        .external_ips
        .iter()
        .enumerate()
        .map(|(i, ip)| (format!("spec.externalIPs[{i}]"), ip.as_str()))
        .chain(
            spec.load_balancer_ip
                .as_deref()
                .map(|ip| ("spec.loadBalancerIP".to_string(), ip)),
        );
    for (path, ip) in outside {
        match ip.parse::<IpAddr>() {
            Ok(ip) if !ingress.contains(&ip) => ingress.push(ip),
            Ok(_) => {}
            Err(_) => f.reject(&path, &format!("{ip:?} is not an IP address")),
        }
    }
    let balancer = status
        .and_then(|s| s.pointer("/loadBalancer/ingress"))
        .and_then(Json::as_array);
    for entry in balancer.into_iter().flatten() {
        if let Some(ip) = entry
            .get("ip")
            .and_then(Json::as_str)
            .and_then(|ip| ip.parse::<IpAddr>().ok())
            .filter(|ip| !ingress.contains(ip))
        {
            ingress.push(ip);
        }
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
        labels: meta.labels.clone(),
        ingress,
    }
}

/// `istio.io/global` is `"true"` or `"false"`: anything else would leave
/// a service's reach to a guess.
pub(super) fn global_label(f: &mut Findings, labels: &Labels) {
    if let Some(value) = labels.get(crate::GLOBAL_LABEL)
        && value != "true"
        && value != "false"
    {
        f.reject(
            &format!("metadata.labels.{}", crate::GLOBAL_LABEL),
            &format!("{value:?} is not \"true\" or \"false\""),
        );
    }
}

/// A Pod as a workload: its addresses, labels, service account and node
/// as its kubelet reported them. `None` without errors while it has no
/// address yet, once it has finished, or when it shares its node's network
/// (a mesh does not capture those, as in Istio).
pub(super) fn pod(
    f: &mut Findings,
    name: &str,
    namespace: &str,
    meta: &ObjectMeta,
    json: &Json,
) -> Option<Workload> {
    let part = |field: &str| {
        json.get(field)
            .cloned()
            .unwrap_or(Json::Object(Default::default()))
    };
    let spec: core::PodSpec = match decode(&part("spec"), "spec") {
        Ok(spec) => spec,
        Err((path, why)) => {
            f.reject(&path, &why);
            return None;
        }
    };
    let status: core::PodStatus = match decode(&part("status"), "status") {
        Ok(status) => status,
        Err((path, why)) => {
            f.reject(&path, &why);
            return None;
        }
    };
    let mut addresses = Vec::new();
    let listed = status.pod_ips.iter().map(|p| p.ip.as_str());
    for (i, ip) in status
        .pod_ip
        .iter()
        .map(String::as_str)
        .chain(listed)
        .enumerate()
    {
        let path = if i == 0 && status.pod_ip.is_some() {
            "status.podIP"
        } else {
            "status.podIPs"
        };
        if let Some(ip) = f.workload_ip(path, ip)
            && !addresses.contains(&ip)
        {
            addresses.push(ip);
        }
    }
    let mut ports = std::collections::BTreeMap::new();
    for (i, c) in spec.containers.iter().enumerate() {
        for (j, p) in c.ports.iter().enumerate() {
            let at = format!("spec.containers[{i}].ports[{j}].containerPort");
            if let (Some(port_name), Some(port)) = (&p.name, f.port(&at, p.container_port)) {
                ports.insert(port_name.clone(), port);
            }
        }
    }
    let finished = matches!(status.phase.as_deref(), Some("Succeeded" | "Failed"));
    if f.has_errors() || addresses.is_empty() || finished || spec.host_network == Some(true) {
        return None;
    }
    let ready = status
        .conditions
        .iter()
        .any(|c| c.kind == "Ready" && c.status == "True");
    Some(Workload {
        name: name.into(),
        namespace: namespace.into(),
        addresses,
        labels: meta.labels.clone(),
        service_account: spec
            .service_account_name
            .unwrap_or_else(|| "default".into()),
        // Its node's, unless the pod says otherwise (as Istio reads it).
        locality: Locality::default(),
        network: meta
            .labels
            .get("topology.istio.io/network")
            .cloned()
            .unwrap_or_default(),
        ports,
        weight: 1,
        node: spec.node_name,
        netns: meta
            .annotations
            .get(NETNS_ANNOTATION)
            .map(std::path::PathBuf::from),
        ready,
        group: None,
        probe: None,
        owner: controller_workload(meta, json),
        sidecar: meta.annotations.contains_key(SIDECAR_STATUS_ANNOTATION)
            || spec
                .containers
                .iter()
                .chain(&spec.init_containers)
                .any(|c| c.name.as_deref() == Some(SIDECAR_CONTAINER)),
    })
}

/// The workload a pod's controller makes it part of, as Istio names it:
/// a ReplicaSet's pods belong to the Deployment whose name it carries
/// before `-<pod-template-hash>`, a Job's named `<cronjob>-<schedule
/// time>` to the CronJob, any other controller's to that controller. `None`
/// for a pod no controller owns (its own name is the workload's).
fn controller_workload(meta: &ObjectMeta, json: &Json) -> Option<String> {
    let refs = json.get("metadata")?.get("ownerReferences")?.as_array()?;
    let owner = refs
        .iter()
        .find(|r| r.get("controller").and_then(Json::as_bool) == Some(true))?;
    let kind = owner.get("kind")?.as_str()?;
    let name = owner.get("name")?.as_str()?;
    let owned = match kind {
        "ReplicaSet" => meta
            .labels
            .get("pod-template-hash")
            .and_then(|hash| name.strip_suffix(hash.as_str())?.strip_suffix('-'))
            .unwrap_or(name),
        "Job" => name
            .rsplit_once('-')
            .filter(|(cron, time)| {
                !cron.is_empty()
                    && (8..=10).contains(&time.len())
                    && time.bytes().all(|b| b.is_ascii_digit())
            })
            .map_or(name, |(cron, _)| cron),
        _ => name,
    };
    Some(owned.to_string())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Istio's workload names: a Deployment's pods by the Deployment, a
    /// CronJob's by the CronJob, a StatefulSet's by it, a bare pod by none.
    #[test]
    fn a_pods_workload_is_its_controller() {
        let owned = |kind: &str, name: &str, hash: Option<&str>| {
            let mut meta = ObjectMeta::default();
            if let Some(hash) = hash {
                meta.labels.insert("pod-template-hash".into(), hash.into());
            }
            let json = json!({"metadata": {"ownerReferences": [
                {"kind": "Node", "name": "not-a-controller"},
                {"kind": kind, "name": name, "controller": true},
            ]}});
            controller_workload(&meta, &json)
        };
        let rs = |name, hash| owned("ReplicaSet", name, hash);
        assert_eq!(
            rs("reviews-v1-5b8f6d9c7", Some("5b8f6d9c7")).as_deref(),
            Some("reviews-v1")
        );
        // A ReplicaSet of its own, not a Deployment's: its name stands.
        assert_eq!(rs("frontend", None).as_deref(), Some("frontend"));
        assert_eq!(rs("frontend-x", Some("y")).as_deref(), Some("frontend-x"));
        let job = |name| owned("Job", name, None);
        assert_eq!(job("backup-28312480").as_deref(), Some("backup"));
        assert_eq!(job("migrate-v2").as_deref(), Some("migrate-v2"));
        assert_eq!(job("sync-1234567").as_deref(), Some("sync-1234567"));
        assert_eq!(owned("StatefulSet", "db", None).as_deref(), Some("db"));
        assert_eq!(owned("DaemonSet", "agent", None).as_deref(), Some("agent"));
        let bare = json!({"metadata": {"ownerReferences": [{"kind": "ReplicaSet", "name": "x"}]}});
        assert_eq!(controller_workload(&ObjectMeta::default(), &bare), None);
        assert_eq!(
            controller_workload(&ObjectMeta::default(), &json!({})),
            None
        );
    }
}
