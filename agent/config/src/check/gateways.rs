//! Gateway API Gateways. Those of class `istio-east-west` become the
//! model's east-west gateways; other classes are for waypoints and
//! ingress, which the node agent does not run.
use std::net::IpAddr;

use serde_json::Value as Json;

use super::Findings;
use crate::{
    EAST_WEST_CLASS, EastWestGateway, GATEWAY_SERVICE_ACCOUNT_ANNOTATION, NETWORK_LABEL,
    ROOT_NAMESPACE,
    manifest::{ObjectMeta, gateway_api::GatewaySpec},
    names,
};

/// HBONE's port, for the message.
const HBONE: u16 = 15008;

pub(super) fn east_west(
    f: &mut Findings,
    name: &str,
    namespace: &str,
    meta: &ObjectMeta,
    spec: &GatewaySpec,
    status: Option<&Json>,
) -> Option<EastWestGateway> {
    if spec.gateway_class_name.is_empty() {
        f.reject("spec.gatewayClassName", "is required");
        return None;
    }
    if spec.gateway_class_name != EAST_WEST_CLASS {
        f.warn(
            "spec.gatewayClassName",
            &format!(
                "{:?}: strait acts on Gateways of class {EAST_WEST_CLASS} only; this one has no effect",
                spec.gateway_class_name
            ),
        );
        return None;
    }
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
    let service_account = match meta.annotations.get(GATEWAY_SERVICE_ACCOUNT_ANNOTATION) {
        Some(sa) => {
            if let Err(why) = names::check_subdomain(sa) {
                f.reject(
                    &format!("metadata.annotations.{GATEWAY_SERVICE_ACCOUNT_ANNOTATION}"),
                    &why,
                );
            }
            sa.clone()
        }
        None => format!("{name}-{EAST_WEST_CLASS}"),
    };
    let mut port = None;
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
                    "{:?}: an east-west gateway serves HBONE only; this listener has no effect",
                    l.protocol
                ),
            );
        } else if port.is_some() {
            f.warn(&at, "a second HBONE listener: only the first is served");
        } else {
            port = Some(p);
        }
    }
    if port.is_none() && !f.has_errors() {
        f.reject(
            "spec.listeners",
            &format!("needs a listener with protocol HBONE (port {HBONE})"),
        );
    }
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
    if f.has_errors() {
        return None;
    }
    Some(EastWestGateway {
        name: name.into(),
        namespace: namespace.into(),
        network,
        addresses,
        port: port?,
        service_account,
    })
}
