//! PeerAuthentication, AuthorizationPolicy and RequestAuthentication.
use std::collections::BTreeMap;

use serde_json::Value as Json;

use super::{Findings, ip_or_cidr};
use crate::{Labels, MtlsMode, PeerAuthentication, manifest::security as sec, suggest};

pub(super) fn peer_authentication(
    f: &mut Findings,
    name: &str,
    namespace: &str,
    spec: sec::PeerAuthenticationSpec,
    json: &Json,
) -> Option<PeerAuthentication> {
    let mode = mtls_mode(f, "spec.mtls.mode", spec.mtls.as_ref());
    // An empty selector selects the whole namespace, as none does.
    let selector: Option<Labels> = spec
        .selector
        .as_ref()
        .map(|s| s.match_labels.clone())
        .filter(|labels| !labels.is_empty());
    if let Some(s) = &spec.selector {
        f.selector("spec.selector.matchLabels", &s.match_labels);
    }
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
    if json.get("portLevelMtls").is_some() && spec.port_level_mtls.is_empty() {
        f.reject(
            "spec.portLevelMtls",
            "is empty: list at least one port, or leave it out",
        );
    }
    if !spec.port_level_mtls.is_empty() && selector.is_none() {
        f.reject(
            "spec.portLevelMtls",
            "needs a selector with labels: Istio applies port-level mTLS only to selected workloads",
        );
    }
    (!f.has_errors()).then(|| PeerAuthentication {
        name: name.into(),
        namespace: namespace.into(),
        selector,
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

/// `selector`, `targetRef` and `targetRefs` are alternatives; each target
/// names a Service, ServiceEntry, Gateway or GatewayClass of the policy's
/// own namespace.
fn targets(
    f: &mut Findings,
    selector: Option<&sec::Selector>,
    target_ref: Option<&sec::TargetRef>,
    target_refs: &[sec::TargetRef],
) {
    let set = [
        selector.is_some(),
        target_ref.is_some(),
        !target_refs.is_empty(),
    ];
    if set.iter().filter(|s| **s).count() > 1 {
        f.reject(
            "spec",
            "takes only one of selector, targetRef and targetRefs",
        );
    }
    if let Some(s) = selector {
        f.selector("spec.selector.matchLabels", &s.match_labels);
    }
    let refs = target_ref
        .map(|t| ("spec.targetRef".to_string(), t))
        .into_iter()
        .chain(
            target_refs
                .iter()
                .enumerate()
                .map(|(i, t)| (format!("spec.targetRefs[{i}]"), t)),
        );
    const KINDS: [(&str, &str); 4] = [
        ("", "Service"),
        ("networking.istio.io", "ServiceEntry"),
        ("gateway.networking.k8s.io", "Gateway"),
        ("gateway.networking.k8s.io", "GatewayClass"),
    ];
    for (path, t) in refs {
        if t.name.is_empty() {
            f.reject(&format!("{path}.name"), "is required");
        }
        if t.namespace.as_deref().is_some_and(|n| !n.is_empty()) {
            f.reject(
                &format!("{path}.namespace"),
                "must not be set: a policy can only target objects of its own namespace",
            );
        }
        let group = t.group.as_deref().unwrap_or_default();
        let group = if group == "core" { "" } else { group };
        if !KINDS.contains(&(group, t.kind.as_str())) {
            f.reject(
                &format!("{path}.kind"),
                &format!(
                    "{}/{} is not a Service, ServiceEntry (networking.istio.io), Gateway or GatewayClass (gateway.networking.k8s.io)",
                    if group.is_empty() { "core" } else { group },
                    t.kind
                ),
            );
        }
    }
}

/// Condition keys an AuthorizationPolicy may use, and whether each is L4
/// (enforceable by the node agent) or needs a waypoint.
const L4_KEYS: [&str; 7] = [
    "source.ip",
    "source.serviceAccount",
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

/// The L7 keys a waypoint evaluates.
const WAYPOINT_KEYS: [&str; 6] = [
    "request.auth.principal",
    "request.auth.audiences",
    "request.auth.presenter",
    "request.auth.claims[",
    "request.headers[",
    "connection.sni",
];

/// What an L7 attribute means on a workload without a waypoint.
const L7_WARNING: &str = "is an L7 attribute: only a waypoint can check it; on a workload \
     without one, the rule that uses it never matches (an ALLOW rule allows nothing, a DENY \
     rule denies all its other matches), as in ztunnel";

pub(super) fn authorization_policy(
    f: &mut Findings,
    spec: &sec::AuthorizationPolicySpec,
    json: &Json,
) {
    let action = spec.action.as_deref().unwrap_or("ALLOW");
    f.one_of(
        "spec.action",
        Some(action),
        &["ALLOW", "DENY", "AUDIT", "CUSTOM"],
    );
    let no_rules = json.get("rules").is_none();
    if matches!(action, "DENY" | "CUSTOM") && no_rules {
        f.reject(
            "spec.rules",
            &format!("is required for action {action}: without rules it never applies (an empty rule `{{}}` matches everything)"),
        );
    }
    if action == "CUSTOM" && spec.provider.as_ref().is_none_or(|p| p.name.is_empty()) {
        f.reject("spec.provider.name", "is required for action CUSTOM");
    }
    // Bound with targetRefs, a waypoint enforces it, with the request's
    // attributes; otherwise the node agents do, without them.
    let at_waypoint = spec.target_ref.is_some() || !spec.target_refs.is_empty();
    if action == "CUSTOM" && !at_waypoint {
        f.warn(
            "spec.action",
            "CUSTOM needs an external authorizer, which only a waypoint consults (bind the \
             policy with targetRefs): the node proxy denies the connections its rules match",
        );
    }
    if action != "CUSTOM" && spec.provider.is_some() {
        f.reject("spec.provider", "is only for action CUSTOM");
    }
    targets(
        f,
        spec.selector.as_ref(),
        spec.target_ref.as_ref(),
        &spec.target_refs,
    );
    let rules = json.get("rules").and_then(Json::as_array);
    for (i, rule) in spec.rules.iter().enumerate() {
        let path = format!("spec.rules[{i}]");
        let rule_json = rules.and_then(|r| r.get(i));
        for part in ["from", "to"] {
            if rule_json
                .and_then(|r| r.get(part))
                .and_then(Json::as_array)
                .is_some_and(Vec::is_empty)
            {
                f.reject(
                    &format!("{path}.{part}"),
                    "is empty: leave it out to match anything",
                );
            }
        }
        for (j, from) in rule.from.iter().enumerate() {
            let p = format!("{path}.from[{j}].source");
            let present = rule_json
                .and_then(|r| r.get("from"))
                .and_then(|v| v.get(j))
                .and_then(|v| v.get("source"))
                .is_some();
            source(f, &p, &from.source, present, at_waypoint);
        }
        for (j, to) in rule.to.iter().enumerate() {
            let p = format!("{path}.to[{j}].operation");
            let present = rule_json
                .and_then(|r| r.get("to"))
                .and_then(|v| v.get(j))
                .and_then(|v| v.get("operation"))
                .is_some();
            operation(f, &p, &to.operation, present, at_waypoint);
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
                if !WAYPOINT_KEYS.iter().any(|k| cond.key.starts_with(k)) {
                    f.warn(
                        &format!("{p}.key"),
                        &format!("{} is not evaluated by strait: the rule that uses it never matches in ALLOW and always in DENY", cond.key),
                    );
                } else if !at_waypoint {
                    f.warn(&format!("{p}.key"), &format!("{} {L7_WARNING}", cond.key));
                }
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

/// A rule's `source` or `operation` (at `p`): present, naming at least
/// one of its `lists`, with no empty strings in them.
fn lists_set(f: &mut Findings, p: &str, present: bool, lists: &[(&str, &Vec<String>)]) {
    if !present {
        f.reject(p, "is required");
    } else if lists.iter().all(|(_, v)| v.is_empty()) {
        f.reject(p, "is empty: name at least one field");
    }
    for (field, values) in lists {
        f.no_empty(&format!("{p}.{field}"), values);
    }
}

fn source(f: &mut Findings, p: &str, s: &sec::Source, present: bool, at_waypoint: bool) {
    let lists = [
        ("principals", &s.principals),
        ("notPrincipals", &s.not_principals),
        ("requestPrincipals", &s.request_principals),
        ("notRequestPrincipals", &s.not_request_principals),
        ("namespaces", &s.namespaces),
        ("notNamespaces", &s.not_namespaces),
        ("serviceAccounts", &s.service_accounts),
        ("notServiceAccounts", &s.not_service_accounts),
        ("ipBlocks", &s.ip_blocks),
        ("notIpBlocks", &s.not_ip_blocks),
        ("remoteIpBlocks", &s.remote_ip_blocks),
        ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
    ];
    lists_set(f, p, present, &lists);
    let identities = [
        &s.principals,
        &s.not_principals,
        &s.namespaces,
        &s.not_namespaces,
    ];
    let accounts = [&s.service_accounts, &s.not_service_accounts];
    if identities.iter().any(|v| !v.is_empty()) && accounts.iter().any(|v| !v.is_empty()) {
        f.reject(
            &format!("{p}.serviceAccounts"),
            "cannot be combined with principals or namespaces",
        );
    }
    for (field, values) in [
        ("serviceAccounts", &s.service_accounts),
        ("notServiceAccounts", &s.not_service_accounts),
    ] {
        for (k, v) in values.iter().enumerate() {
            let ok = v
                .split_once('/')
                .is_some_and(|(ns, sa)| !ns.is_empty() && !sa.is_empty() && !sa.contains('/'));
            if !v.is_empty() && !ok {
                f.reject(
                    &format!("{p}.{field}[{k}]"),
                    &format!("{v:?} is not `namespace/name`"),
                );
            }
        }
    }
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
        if !values.is_empty() && !at_waypoint {
            f.warn(&format!("{p}.{field}"), L7_WARNING);
        }
    }
}

fn operation(f: &mut Findings, p: &str, o: &sec::Operation, present: bool, at_waypoint: bool) {
    let lists = [
        ("hosts", &o.hosts),
        ("notHosts", &o.not_hosts),
        ("ports", &o.ports),
        ("notPorts", &o.not_ports),
        ("methods", &o.methods),
        ("notMethods", &o.not_methods),
        ("paths", &o.paths),
        ("notPaths", &o.not_paths),
    ];
    lists_set(f, p, present, &lists);
    for (field, ports) in [("ports", &o.ports), ("notPorts", &o.not_ports)] {
        for (k, port) in ports.iter().enumerate() {
            match port.parse::<u32>() {
                Ok(n) => {
                    f.port(&format!("{p}.{field}[{k}]"), n);
                }
                Err(_) if port.is_empty() => {}
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
        if !values.is_empty() && !at_waypoint {
            f.warn(&format!("{p}.{field}"), L7_WARNING);
        }
    }
}

pub(super) fn request_authentication(f: &mut Findings, spec: &sec::RequestAuthenticationSpec) {
    if spec.target_ref.is_none() && spec.target_refs.is_empty() {
        f.warn(
            "spec",
            "has no effect: JWTs are checked by a waypoint, and a RequestAuthentication reaches \
             one only through targetRefs (its Gateway, or a Service or ServiceEntry that uses it)",
        );
    }

    targets(
        f,
        spec.selector.as_ref(),
        spec.target_ref.as_ref(),
        &spec.target_refs,
    );
    for (i, rule) in spec.jwt_rules.iter().enumerate() {
        let p = format!("spec.jwtRules[{i}]");
        let uri = rule.jwks_uri.as_deref().unwrap_or_default();
        if rule.issuer.is_empty() && uri.is_empty() {
            f.reject(&format!("{p}.issuer"), "is required unless jwksUri is set");
        }
        if !uri.is_empty() {
            let ok = uri.split_once("://").is_some_and(|(scheme, rest)| {
                matches!(scheme, "http" | "https")
                    && !rest.is_empty()
                    && !rest.starts_with('/')
                    && !rest.contains(char::is_whitespace)
            });
            if !ok {
                f.reject(
                    &format!("{p}.jwksUri"),
                    &format!("{uri:?} is not an http:// or https:// URL with a host"),
                );
            }
        }
        if let Some(jwks) = &rule.jwks
            && serde_json::from_str::<serde_json::Map<String, Json>>(jwks).is_err()
        {
            f.reject(
                &format!("{p}.jwks"),
                "is not a JSON Web Key Set (a JSON object)",
            );
        }
        f.no_empty(&format!("{p}.audiences"), &rule.audiences);
        f.no_empty(&format!("{p}.fromParams"), &rule.from_params);
        f.no_empty(&format!("{p}.fromCookies"), &rule.from_cookies);
        f.no_empty(
            &format!("{p}.spaceDelimitedClaims"),
            &rule.space_delimited_claims,
        );
        for (j, h) in rule.from_headers.iter().enumerate() {
            if h.name.is_empty() {
                f.reject(&format!("{p}.fromHeaders[{j}].name"), "is required");
            }
        }
        for (j, c) in rule.output_claim_to_headers.iter().enumerate() {
            let at = format!("{p}.outputClaimToHeaders[{j}]");
            if c.claim.is_empty() {
                f.reject(&format!("{at}.claim"), "is required");
            }
            let strict = !c.header.is_empty()
                && c.header
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '-');
            if !strict {
                f.reject(
                    &format!("{at}.header"),
                    &format!(
                        "{:?} is not a header name (letters, digits and '-')",
                        c.header
                    ),
                );
            }
        }
        f.duration(&format!("{p}.timeout"), rule.timeout.as_ref());
    }
}
