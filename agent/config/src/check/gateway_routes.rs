//! HTTPRoute and GRPCRoute, checked as the Gateway API's CRDs and webhook
//! would, and translated as the waypoint will translate them
//! ([`crate::gateway_routes`]): a rule that cannot be is refused.
use super::Findings;
use crate::{
    Named, gateway_routes,
    manifest::gateway_api::{
        BackendRef, GATEWAY_KIND, GrpcRouteSpec, HttpRouteFilter, HttpRouteSpec, NameMatch,
        ParentReference,
    },
};

/// An HTTPRoute, checked as the Gateway API's CRD and webhook would, and
/// translated as the waypoint will (a rule that cannot be is refused).
pub(super) fn http_route(f: &mut Findings, route: &Named<HttpRouteSpec>) {
    parent_refs(f, &route.spec.parent_refs);
    for (i, rule) in route.spec.rules.iter().enumerate() {
        let at = format!("spec.rules[{i}]");
        for (j, m) in rule.matches.iter().enumerate() {
            let mat = format!("{at}.matches[{j}]");
            if let Some(p) = &m.path {
                let value = p.value.as_deref().unwrap_or("/");
                match p.kind.as_deref().unwrap_or("PathPrefix") {
                    "RegularExpression" => f.regex(&format!("{mat}.path.value"), value),
                    _ if !value.starts_with('/') => {
                        f.reject(&format!("{mat}.path.value"), "must start with `/`");
                    }
                    _ => {}
                }
            }
            name_matches(f, &format!("{mat}.headers"), &m.headers, true);
            name_matches(f, &format!("{mat}.queryParams"), &m.query_params, false);
        }
        route_filters(f, &format!("{at}.filters"), &rule.filters);
        backend_refs(
            f,
            &format!("{at}.backendRefs"),
            &rule.backend_refs,
            &route.namespace,
        );
        if let Err((path, why)) = gateway_routes::http_rule(route, i, "check") {
            f.reject(&path, &why);
        }
    }
}

/// A GRPCRoute, as [`http_route`].
pub(super) fn grpc_route(f: &mut Findings, route: &Named<GrpcRouteSpec>) {
    parent_refs(f, &route.spec.parent_refs);
    for (i, rule) in route.spec.rules.iter().enumerate() {
        let at = format!("spec.rules[{i}]");
        for (j, m) in rule.matches.iter().enumerate() {
            let mat = format!("{at}.matches[{j}]");
            if let Some(method) = &m.method
                && method.kind.as_deref() == Some("RegularExpression")
            {
                for (field, value) in [("service", &method.service), ("method", &method.method)] {
                    if let Some(v) = value {
                        f.regex(&format!("{mat}.method.{field}"), v);
                    }
                }
            }
            name_matches(f, &format!("{mat}.headers"), &m.headers, true);
        }
        route_filters(f, &format!("{at}.filters"), &rule.filters);
        backend_refs(
            f,
            &format!("{at}.backendRefs"),
            &rule.backend_refs,
            &route.namespace,
        );
        if let Err((path, why)) = gateway_routes::grpc_rule(route, i, "check") {
            f.reject(&path, &why);
        }
    }
}

/// What a route attaches to: a Service (GAMMA) or a waypoint's Gateway.
fn parent_refs(f: &mut Findings, parents: &[ParentReference]) {
    if parents.is_empty() {
        f.warn(
            "spec.parentRefs",
            "is empty: the route attaches to nothing, and no waypoint applies it",
        );
    }
    for (i, p) in parents.iter().enumerate() {
        let kind = p.kind.as_deref().unwrap_or(GATEWAY_KIND);
        let group = p.group.as_deref().unwrap_or("gateway.networking.k8s.io");
        let known = matches!(
            (group, kind),
            ("" | "core", "Service") | ("gateway.networking.k8s.io", "Gateway")
        );
        if !known {
            f.warn(
                &format!("spec.parentRefs[{i}].kind"),
                &format!("{group}/{kind}: strait attaches routes to Services (GAMMA) and to waypoints' Gateways only: this parent has no effect"),
            );
        }
    }
}

fn name_matches(f: &mut Findings, path: &str, list: &[NameMatch], header: bool) {
    for (j, m) in list.iter().enumerate() {
        let at = format!("{path}[{j}]");
        if header && hyper_header_name(&m.name).is_err() {
            f.reject(&format!("{at}.name"), "is not a valid header name");
        }
        if m.kind.as_deref() == Some("RegularExpression") {
            f.regex(&format!("{at}.value"), &m.value);
        }
    }
}

/// HTTP's token characters, as a header name must be.
fn hyper_header_name(name: &str) -> Result<(), ()> {
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if !name.is_empty() && name.chars().all(token) {
        Ok(())
    } else {
        Err(())
    }
}

/// Filter types and what of them strait applies.
fn route_filters(f: &mut Findings, path: &str, filters: &[HttpRouteFilter]) {
    const TYPES: [&str; 7] = [
        "RequestHeaderModifier",
        "ResponseHeaderModifier",
        "RequestMirror",
        "RequestRedirect",
        "URLRewrite",
        "ExtensionRef",
        "CORS",
    ];
    for (k, filter) in filters.iter().enumerate() {
        let at = format!("{path}[{k}]");
        if !TYPES.contains(&filter.kind.as_str()) {
            f.reject(
                &format!("{at}.type"),
                &format!(
                    "{:?} is not a filter type ({})",
                    filter.kind,
                    TYPES.join(", ")
                ),
            );
        }
        for modifier in [
            &filter.request_header_modifier,
            &filter.response_header_modifier,
        ]
        .into_iter()
        .flatten()
        {
            let names = modifier
                .set
                .iter()
                .chain(&modifier.add)
                .map(|h| &h.name)
                .chain(&modifier.remove);
            for name in names {
                if hyper_header_name(name).is_err() {
                    f.reject(&at, &format!("{name:?} is not a valid header name"));
                }
            }
        }
        if let Some(redirect) = &filter.request_redirect
            && redirect
                .path
                .as_ref()
                .is_some_and(|p| p.kind == "ReplacePrefixMatch")
        {
            f.warn(
                &format!("{at}.requestRedirect.path"),
                "ReplacePrefixMatch has no effect yet in a redirect: the location keeps the request's path",
            );
        }
        if let Some(code) = filter.request_redirect.as_ref().and_then(|r| r.status_code)
            && !matches!(code, 301 | 302 | 303 | 307 | 308)
        {
            f.reject(
                &format!("{at}.requestRedirect.statusCode"),
                &format!("{code} is not 301, 302, 303, 307 or 308"),
            );
        }
    }
}

fn backend_refs(f: &mut Findings, path: &str, backends: &[BackendRef], namespace: &str) {
    for (j, b) in backends.iter().enumerate() {
        let at = format!("{path}[{j}]");
        if gateway_routes::elsewhere(b, namespace) {
            f.warn(
                &format!("{at}.namespace"),
                "a backend in another namespace needs a ReferenceGrant, which strait does not read yet: left out (its share is answered 500)",
            );
        }
        route_filters(f, &format!("{at}.filters"), &b.filters);
    }
}
