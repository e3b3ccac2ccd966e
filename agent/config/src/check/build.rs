//! The model of a config whose every object passed.
use std::collections::HashMap;

use super::{Item, Parsed};
use crate::{
    Config, Service, ServiceOrigin,
    report::{Report, Verdict},
};

pub(crate) fn build(parsed: Vec<Parsed>, report: &Report) -> Config {
    let mut config = Config::default();
    let mut kubernetes_services = HashMap::new();
    // Where each workload came from, by its index in `config.workloads`.
    let mut claims = Vec::new();
    for p in parsed {
        if matches!(p.item, Item::Workload(_)) {
            claims.push(Claim {
                report: p.report,
                created: p.created,
            });
        }
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
            Item::RateLimitFilter(filter) => config.rate_limit_filters.push(*filter),
            Item::DestinationRule(dr) => config.destination_rules.push(*dr),
            Item::VirtualService(vs) => config.virtual_services.push(*vs),
            Item::HttpRoute(r) => config.http_routes.push(*r),
            Item::GrpcRoute(r) => config.grpc_routes.push(*r),
            Item::Gateway(gw) => config.gateways.push(*gw),
            Item::EastWestGateway(gw) => config.east_west_gateways.push(gw),
            Item::Waypoint(wp) => config.waypoints.push(wp),
        }
    }
    link_groups(&mut config);
    // A workload without its own locality has its node's, as a Kubernetes
    // pod has; without its own network, its namespace's, else its node's
    // (Istio's order).
    for w in &mut config.workloads {
        if w.network.is_empty()
            && let Some(network) = config
                .namespaces
                .get(&w.namespace)
                .and_then(|ns| ns.labels.get(crate::NETWORK_LABEL))
        {
            w.network = network.clone();
        }
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
    let mut conflicts = one_claim_per_address(&mut config, &claims, report);
    let mut unreachable = Vec::new();
    for gw in &mut config.east_west_gateways {
        if gw.addresses.is_empty() {
            gw.addresses = front_addresses(&config.services, gw);
        }
        if gw.addresses.is_empty() {
            unreachable.push(format!(
                "Gateway {}/{}: no address (spec.addresses, status.addresses, or a Service labelled {}={} with external addresses): other networks cannot reach network {:?} through it",
                gw.namespace,
                gw.name,
                crate::GATEWAY_NAME_LABEL,
                gw.name,
                gw.network
            ));
        }
    }
    config.ignored = report
        .objects
        .iter()
        .filter(|o| matches!(o.verdict, Verdict::Ignored(_)))
        .map(|o| format!("{} {}", o.api_version, o.object()))
        .collect();
    config.warnings = report
        .objects
        .iter()
        .flat_map(|o| {
            o.warnings.iter().map(move |w| {
                format!(
                    "{}:{} {}: field {}: {}",
                    o.file.display(),
                    w.line,
                    o.object(),
                    w.field,
                    w.reason
                )
            })
        })
        .collect();
    config.warnings.extend(unreachable);
    config.warnings.append(&mut conflicts);
    config.reindex();
    let unbound = unbound_waypoints(&config);
    config.warnings.extend(unbound);
    config
}

/// `istio.io/use-waypoint` labels that bind nothing: the waypoint does
/// not exist, does not take that traffic, or does not admit the
/// namespace. Their traffic goes straight to the endpoints.
fn unbound_waypoints(config: &Config) -> Vec<String> {
    let label = crate::waypoint::USE_WAYPOINT_LABEL;
    let services = config.services.iter().filter_map(|s| {
        let why = config.service_binding(s).err()?;
        Some(format!(
            "Service {}/{}: label {label} (its own or its namespace's): {why}; its traffic does not go through a waypoint",
            s.namespace, s.name
        ))
    });
    let workloads = config.workloads.iter().filter_map(|w| {
        // Only workloads that name one themselves: a namespace's label
        // for services only is not theirs to take.
        w.labels.get(label)?;
        let why = config.workload_binding(w).err()?;
        Some(format!(
            "workload {}/{}: label {label}: {why}; its traffic does not go through a waypoint",
            w.namespace, w.name
        ))
    });
    services.chain(workloads).collect()
}

/// Where a workload came from.
struct Claim {
    report: usize,
    created: Option<String>,
}

/// One workload per address in a network. Another workload with one of
/// its addresses would be enrolled in its pod's network namespace and be
/// handed its traffic, or, on other nodes, make connections to the address
/// expect the wrong identity. First come keeps it: a Pod's address is its
/// own (its kubelet gave it), so a WorkloadEntry never takes a Pod's; then
/// the older object (`creationTimestamp`), then the one read first. The
/// others are left out, each named in the warnings and in
/// `refused_workloads`.
fn one_claim_per_address(config: &mut Config, claims: &[Claim], report: &Report) -> Vec<String> {
    let object = |i: usize| &report.objects[claims[i].report];
    let mut order: Vec<usize> = (0..config.workloads.len()).collect();
    order.sort_by_cached_key(|&i| {
        (
            object(i).kind != "Pod",
            claims[i].created.is_none(),
            claims[i].created.clone(),
            i,
        )
    });
    let mut owner: HashMap<(&str, std::net::IpAddr), usize> = HashMap::new();
    let mut refused: Vec<(usize, String)> = Vec::new();
    for i in order {
        let w = &config.workloads[i];
        let taken = w
            .addresses
            .iter()
            .find_map(|ip| owner.get(&(w.network.as_str(), *ip)).map(|o| (*ip, *o)));
        match taken {
            Some((ip, keeper)) => {
                let k = object(keeper);
                let network = if w.network.is_empty() {
                    String::new()
                } else {
                    format!(" in network {}", w.network)
                };
                refused.push((
                    i,
                    format!(
                        "{ip} is already the address of {} {}/{}{network} (first come keeps it): left out",
                        k.kind, k.namespace, k.name
                    ),
                ));
            }
            None => {
                for ip in &w.addresses {
                    owner.insert((w.network.as_str(), *ip), i);
                }
            }
        }
    }
    if refused.is_empty() {
        return Vec::new();
    }
    refused.sort_by_key(|(i, _)| *i);
    let mut warnings = Vec::new();
    let mut gone = vec![false; config.workloads.len()];
    for (i, reason) in refused {
        let o = object(i);
        let field = if o.kind == "Pod" {
            "status.podIP"
        } else {
            "spec.address"
        };
        warnings.push(format!(
            "{}:{} {}: field {field}: {reason}",
            o.file.display(),
            o.line,
            o.object()
        ));
        gone[i] = true;
        config.refused_workloads.push(crate::RefusedWorkload {
            workload: config.workloads[i].clone(),
            object: o.object(),
            reason,
        });
    }
    let mut i = 0;
    config.workloads.retain(|_| {
        i += 1;
        !gone[i - 1]
    });
    warnings
}

/// The external addresses of the Service in front of a gateway: in its
/// namespace, labelled with its name (as Istio's controller makes it).
fn front_addresses(services: &[Service], gw: &crate::EastWestGateway) -> Vec<std::net::IpAddr> {
    services
        .iter()
        .filter(|s| {
            s.origin == ServiceOrigin::Kubernetes
                && s.namespace == gw.namespace
                && s.labels.get(crate::GATEWAY_NAME_LABEL) == Some(&gw.name)
        })
        .flat_map(|s| s.ingress.iter().copied())
        .collect()
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
