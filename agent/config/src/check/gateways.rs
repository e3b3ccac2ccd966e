//! Gateway API Gateways. Those of class `istio-east-west` become the
//! model's east-west gateways, those of class `istio-waypoint` its
//! waypoints; other classes are for ingress, which strait does not run.
use std::net::IpAddr;

use serde_json::Value as Json;

use super::{Findings, Item};
use crate::{
    EAST_WEST_CLASS, EastWestGateway, GATEWAY_SERVICE_ACCOUNT_ANNOTATION, Labels, NETWORK_LABEL,
    ROOT_NAMESPACE,
    manifest::{
        ObjectMeta,
        gateway_api::{GatewaySpec, Listener},
    },
    names,
    waypoint::{
        Admits, Expression, Selector, TrafficType, WAYPOINT_CLASS, WAYPOINT_FOR_LABEL, Waypoint,
    },
};

/// HBONE's port, for the message.
const HBONE: u16 = 15008;

pub(super) fn gateway(
    f: &mut Findings,
    name: &str,
    namespace: &str,
    meta: &ObjectMeta,
    spec: &GatewaySpec,
    status: Option<&Json>,
) -> Option<Item> {
    match spec.gateway_class_name.as_str() {
        "" => {
            f.reject("spec.gatewayClassName", "is required");
            None
        }
        EAST_WEST_CLASS => {
            east_west(f, name, namespace, meta, spec, status).map(Item::EastWestGateway)
        }
        WAYPOINT_CLASS => waypoint(f, name, namespace, meta, spec, status).map(Item::Waypoint),
        other => {
            f.warn(
                "spec.gatewayClassName",
                &format!(
                    "{other:?}: strait acts on Gateways of class {EAST_WEST_CLASS} and {WAYPOINT_CLASS} only; this one has no effect"
                ),
            );
            None
        }
    }
}

fn east_west(
    f: &mut Findings,
    name: &str,
    namespace: &str,
    meta: &ObjectMeta,
    spec: &GatewaySpec,
    status: Option<&Json>,
) -> Option<EastWestGateway> {
    if !crate::east_west_gateways_allowed_in(namespace) {
        // A tenant's own "gateway" would be handed a share of every other
        // network's traffic into this one, identities and all.
        f.warn(
            "metadata.namespace",
            &format!(
                "east-west gateways are accepted only from the mesh's root namespace ({ROOT_NAMESPACE}) and those the operator names (--east-west-gateway-namespaces); this one has no effect"
            ),
        );
        return None;
    }
    let network = meta.labels.get(NETWORK_LABEL).cloned().unwrap_or_default();
    if network.is_empty() {
        f.reject(
            &format!("metadata.labels.{NETWORK_LABEL}"),
            "is required: an east-west gateway leads into one network",
        );
    }
    let service_account = service_account(f, meta, &format!("{name}-{EAST_WEST_CLASS}"));
    let listener = hbone_listener(f, spec, "an east-west gateway");
    let addresses = addresses(f, spec, status);
    if f.has_errors() {
        return None;
    }
    Some(EastWestGateway {
        name: name.into(),
        namespace: namespace.into(),
        network,
        addresses,
        port: listener?.0,
        service_account,
    })
}

fn waypoint(
    f: &mut Findings,
    name: &str,
    namespace: &str,
    meta: &ObjectMeta,
    spec: &GatewaySpec,
    status: Option<&Json>,
) -> Option<Waypoint> {
    let traffic = match meta.labels.get(WAYPOINT_FOR_LABEL) {
        None => TrafficType::default(),
        Some(value) => TrafficType::parse(value).unwrap_or_else(|| {
            f.reject(
                &format!("metadata.labels.{WAYPOINT_FOR_LABEL}"),
                &format!("{value:?}: must be service, workload, all or none"),
            );
            TrafficType::None
        }),
    };
    // Istio's controller runs a waypoint as a service account named after
    // it.
    let service_account = service_account(f, meta, name);
    let listener = hbone_listener(f, spec, "a waypoint");
    let admits = match listener.and_then(|(_, l)| l.allowed_routes.as_ref().map(|a| (l, a))) {
        Some((l, allowed)) => {
            let at = format!(
                "spec.listeners[{}].allowedRoutes",
                spec.listeners
                    .iter()
                    .position(|x| std::ptr::eq(x, l))
                    .unwrap_or_default()
            );
            allowed_routes(f, &at, allowed)
        }
        None => Admits::Same,
    };
    let addresses = addresses(f, spec, status);
    if f.has_errors() {
        return None;
    }
    Some(Waypoint {
        name: name.into(),
        namespace: namespace.into(),
        port: listener?.0,
        traffic,
        admits,
        service_account,
        addresses,
    })
}

/// `allowedRoutes.namespaces` of a waypoint's listener: who may bind to it.
/// Anything strait cannot read admits no other namespace (a tenant's
/// waypoint never takes another's traffic by mistake).
fn allowed_routes(f: &mut Findings, at: &str, allowed: &Json) -> Admits {
    let Some(namespaces) = allowed.get("namespaces") else {
        return Admits::Same;
    };
    match namespaces
        .get("from")
        .and_then(Json::as_str)
        .unwrap_or("Same")
    {
        "Same" => Admits::Same,
        "All" => Admits::All,
        "Selector" => match namespaces
            .get("selector")
            .map(|s| selector(f, &format!("{at}.namespaces.selector"), s))
        {
            Some(Some(selector)) => Admits::Selector(selector),
            Some(None) => Admits::Same,
            None => {
                f.reject(
                    &format!("{at}.namespaces.selector"),
                    "is required when from is Selector",
                );
                Admits::Same
            }
        },
        other => {
            f.reject(
                &format!("{at}.namespaces.from"),
                &format!("{other:?}: must be Same, All or Selector"),
            );
            Admits::Same
        }
    }
}

fn selector(f: &mut Findings, at: &str, json: &Json) -> Option<Selector> {
    let mut selector = Selector::default();
    if let Some(labels) = json.get("matchLabels") {
        match serde_json::from_value::<Labels>(labels.clone()) {
            Ok(labels) => selector.match_labels = labels,
            Err(err) => {
                f.reject(
                    &format!("{at}.matchLabels"),
                    &format!("not a map of strings: {err}"),
                );
                return None;
            }
        }
    }
    for (i, e) in json
        .get("matchExpressions")
        .and_then(Json::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let path = format!("{at}.matchExpressions[{i}]");
        let key = e
            .get("key")
            .and_then(Json::as_str)
            .unwrap_or_default()
            .to_string();
        let values: Vec<String> = e
            .get("values")
            .and_then(Json::as_array)
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        if key.is_empty() {
            f.reject(&format!("{path}.key"), "is required");
            return None;
        }
        let op = e.get("operator").and_then(Json::as_str).unwrap_or_default();
        selector.match_expressions.push(match op {
            "In" | "NotIn" if values.is_empty() => {
                f.reject(&format!("{path}.values"), &format!("{op} needs values"));
                return None;
            }
            "In" => Expression::In(key, values),
            "NotIn" => Expression::NotIn(key, values),
            "Exists" => Expression::Exists(key),
            "DoesNotExist" => Expression::DoesNotExist(key),
            other => {
                f.reject(
                    &format!("{path}.operator"),
                    &format!("{other:?}: must be In, NotIn, Exists or DoesNotExist"),
                );
                return None;
            }
        });
    }
    Some(selector)
}

/// The service account a gateway's instances run as: the annotation's,
/// else `default`.
fn service_account(f: &mut Findings, meta: &ObjectMeta, default: &str) -> String {
    match meta.annotations.get(GATEWAY_SERVICE_ACCOUNT_ANNOTATION) {
        Some(sa) => {
            if let Err(why) = names::check_subdomain(sa) {
                f.reject(
                    &format!("metadata.annotations.{GATEWAY_SERVICE_ACCOUNT_ANNOTATION}"),
                    &why,
                );
            }
            sa.clone()
        }
        None => default.to_string(),
    }
}

/// The first HBONE listener: its port, and the listener.
fn hbone_listener<'a>(
    f: &mut Findings,
    spec: &'a GatewaySpec,
    what: &str,
) -> Option<(u16, &'a Listener)> {
    let mut found = None;
    for (i, l) in spec.listeners.iter().enumerate() {
        let at = format!("spec.listeners[{i}]");
        if let Err(why) = names::check_label(&l.name) {
            f.reject(&format!("{at}.name"), &why);
        }
        let Some(p) = f.port(&format!("{at}.port"), l.port) else {
            continue;
        };
        if l.protocol != "HBONE" {
            f.warn(
                &format!("{at}.protocol"),
                &format!(
                    "{:?}: {what} serves HBONE only; this listener has no effect",
                    l.protocol
                ),
            );
        } else if found.is_some() {
            f.warn(&at, "a second HBONE listener: only the first is served");
        } else {
            found = Some((p, l));
        }
    }
    if found.is_none() && !f.has_errors() {
        f.reject(
            "spec.listeners",
            &format!("needs a listener with protocol HBONE (port {HBONE})"),
        );
    }
    found
}

/// `spec.addresses`, else what the controller reported in
/// `status.addresses`; anything that is not an IP address there is not
/// for strait.
fn addresses(f: &mut Findings, spec: &GatewaySpec, status: Option<&Json>) -> Vec<IpAddr> {
    let mut addresses = Vec::new();
    for (i, a) in spec.addresses.iter().enumerate() {
        let at = format!("spec.addresses[{i}]");
        match a.kind.as_deref() {
            None | Some("IPAddress") => match a.value.parse::<IpAddr>() {
                Ok(ip) if !addresses.contains(&ip) => addresses.push(ip),
                Ok(_) => {}
                Err(_) => f.reject(
                    &format!("{at}.value"),
                    &format!("{:?} is not an IP address", a.value),
                ),
            },
            Some(other) => f.warn(
                &format!("{at}.type"),
                &format!("{other}: strait needs IP addresses; this one is left out"),
            ),
        }
    }
    // What the controller reported, when the spec names none; anything
    // that is not an IP address there is not for strait.
    if addresses.is_empty() {
        let reported = status
            .and_then(|s| s.get("addresses"))
            .and_then(Json::as_array);
        for a in reported.into_iter().flatten() {
            let ip = a
                .get("value")
                .and_then(Json::as_str)
                .and_then(|v| v.parse::<IpAddr>().ok());
            if let Some(ip) = ip.filter(|ip| !addresses.contains(ip)) {
                addresses.push(ip);
            }
        }
    }
    addresses
}
