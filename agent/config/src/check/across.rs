//! Checks that need every object: subsets that some DestinationRule
//! defines, hosts that some service answers to, port names that workloads
//! have, groups that entries name. Istio's webhook judges each object
//! alone, so these are warnings (as `istioctl analyze` gives): a reference
//! to something missing never refuses the config.
use std::collections::{BTreeSet, HashMap};

use super::{Findings, Item, Parsed, qualify};
use crate::{
    Endpoints, GROUP_ANNOTATION, Service, TargetPort, Workload, host_matches,
    manifest::networking as net, report::Report, suggest,
};

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
    // Delegate VirtualServices (no hosts), by namespace and name.
    let delegates: std::collections::HashSet<(&str, &str)> = parsed
        .iter()
        .filter_map(|p| match &p.item {
            Item::VirtualService(vs) if vs.spec.hosts.is_empty() => {
                Some((vs.namespace.as_str(), vs.name.as_str()))
            }
            _ => None,
        })
        .collect();
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
    let namespaces: HashMap<&str, &crate::Labels> = parsed
        .iter()
        .filter_map(|p| match &p.item {
            Item::Namespace(ns) => Some((ns.name.as_str(), &ns.labels)),
            _ => None,
        })
        .collect();
    // Whether a service says it uses a waypoint: its own label, else its
    // namespace's (whether that waypoint exists is the model's warning).
    let uses_waypoint = |s: &Service| {
        let label = |labels: &crate::Labels| {
            labels
                .get(crate::waypoint::USE_WAYPOINT_LABEL)
                .map(|v| v != "none")
        };
        label(&s.labels)
            .or_else(|| namespaces.get(s.namespace.as_str()).and_then(|l| label(l)))
            .unwrap_or(false)
    };
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
                for (i, h) in vs.spec.http.iter().enumerate() {
                    let Some(d) = &h.delegate else { continue };
                    let namespace = d.namespace.as_deref().unwrap_or(&vs.namespace);
                    if !delegates.contains(&(namespace, d.name.as_str())) {
                        f.warn(
                            &format!("spec.http[{i}].delegate"),
                            &format!("{namespace}/{} is no delegate VirtualService (one without hosts): this route takes nothing", d.name),
                        );
                    }
                }
                let in_mesh =
                    vs.spec.gateways.is_empty() || vs.spec.gateways.iter().any(|g| g == "mesh");
                for (i, h) in vs.spec.hosts.iter().enumerate() {
                    let host = qualify(h, &vs.namespace);
                    if !host.starts_with('*') && !known_host(&host) {
                        f.warn(
                            &format!("spec.hosts[{i}]"),
                            &format!("{host} matches no Service or ServiceEntry"),
                        );
                    } else if in_mesh
                        && !vs.spec.http.is_empty()
                        && !services.iter().any(|s| {
                            s.hosts.iter().any(|sh| host_matches(&host, sh)) && uses_waypoint(s)
                        })
                    {
                        f.warn(
                            &format!("spec.hosts[{i}]"),
                            &format!("{host}: no service of it uses a waypoint (label it or its namespace {}), and only a waypoint applies http routes", crate::waypoint::USE_WAYPOINT_LABEL),
                        );
                    }
                }
                let routes = vs
                    .spec
                    .http
                    .iter()
                    .enumerate()
                    .map(|(i, h)| {
                        let to = h.route.iter().map(|r| &r.destination).collect::<Vec<_>>();
                        (format!("spec.http[{i}].route"), to)
                    })
                    .chain(vs.spec.tcp.iter().enumerate().map(|(i, t)| {
                        let to = t.route.iter().map(|r| &r.destination).collect();
                        (format!("spec.tcp[{i}].route"), to)
                    }))
                    .chain(vs.spec.tls.iter().enumerate().map(|(i, t)| {
                        let to = t.route.iter().map(|r| &r.destination).collect();
                        (format!("spec.tls[{i}].route"), to)
                    }));
                for (path, route) in routes {
                    for (j, destination) in route.iter().enumerate() {
                        let p = format!("{path}[{j}].destination");
                        let host = qualify(&destination.host, &vs.namespace);
                        if !known_host(&host) {
                            f.warn(
                                &format!("{p}.host"),
                                &format!("{host} matches no Service or ServiceEntry"),
                            );
                        }
                        let Some(subset) = &destination.subset else {
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
                            f.warn(
                                &format!("{p}.subset"),
                                &format!("subset {subset:?} is not defined by any DestinationRule for {host} (a route to it finds no endpoints){hint}"),
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
        report.objects[p.report].warnings.append(&mut f.warnings);
    }
}
