//! VirtualService and Gateway: L7 routes and listeners, checked as Istio's
//! webhook does, so a config that works here works in Istio and the
//! reverse. strait's waypoint applies a VirtualService's http routes to
//! the services bound to it; the fields it does not apply yet are named.
use std::collections::BTreeSet;

use super::{Findings, PROTOCOLS, export_to, host, ip_or_cidr};
use crate::{manifest::networking as net, names};

/// Istio's name for the mesh's sidecars and node proxies, as a gateway.
const MESH: &str = "mesh";

/// What a field the waypoint does not apply yet is told.
const NOT_YET: &str = "has no effect yet: strait's waypoint does not apply it";

/// Warns at each field of an http route that strait's waypoint does not
/// apply yet.
fn not_applied_yet(f: &mut Findings, path: &str, h: &net::HttpRoute) {
    for (j, m) in h.matches.iter().enumerate() {
        if m.scheme.is_some() {
            f.warn(&format!("{path}.match[{j}].scheme"), NOT_YET);
        }
    }
    if h.retries.as_ref().is_some_and(|r| r.backoff.is_some()) {
        f.warn(&format!("{path}.retries.backoff"), NOT_YET);
    }
}

pub(super) fn virtual_service(f: &mut Findings, namespace: &str, spec: &net::VirtualServiceSpec) {
    let gateways = spec
        .tcp
        .iter()
        .enumerate()
        .flat_map(|(i, r)| {
            r.matches
                .iter()
                .enumerate()
                .map(move |(j, m)| ("tcp", i, j, &m.gateways))
        })
        .chain(spec.tls.iter().enumerate().flat_map(|(i, r)| {
            r.matches
                .iter()
                .enumerate()
                .map(move |(j, m)| ("tls", i, j, &m.gateways))
        }));
    for (kind, i, j, list) in gateways {
        if !list.is_empty() {
            f.warn(
                &format!("spec.{kind}[{i}].match[{j}].gateways"),
                "has no effect: the waypoint applies a route's matches inside the mesh",
            );
        }
    }
    if spec.hosts.is_empty() {
        // A delegate, included by another VirtualService's http route.
        for (field, set) in [
            ("gateways", !spec.gateways.is_empty()),
            ("tls", !spec.tls.is_empty()),
            ("tcp", !spec.tcp.is_empty()),
        ] {
            if set {
                f.reject(
                    &format!("spec.{field}"),
                    "a delegate VirtualService (one without hosts) has only http routes",
                );
            }
        }
    }
    gateway_names(f, "spec.gateways", &spec.gateways);
    let mesh_only = spec.gateways.is_empty() || spec.gateways.iter().any(|g| g == MESH);
    let mut seen = BTreeSet::new();
    for (i, h) in spec.hosts.iter().enumerate() {
        let path = format!("spec.hosts[{i}]");
        if h.parse::<std::net::IpAddr>().is_ok() {
            continue;
        }
        if h == "*" && mesh_only {
            f.reject(
                &path,
                "the wildcard `*` is not allowed for the mesh (only on gateways)",
            );
        } else if host(f, &path, h) && !seen.insert(h.to_ascii_lowercase()) {
            f.reject(&path, &format!("{h:?} is listed twice"));
        }
    }
    if spec.http.is_empty() && spec.tcp.is_empty() && spec.tls.is_empty() {
        f.reject("spec", "needs http, tcp or tls routes");
    }
    for (i, h) in spec.http.iter().enumerate() {
        http_route(f, &format!("spec.http[{i}]"), h, spec.hosts.is_empty());
        not_applied_yet(f, &format!("spec.http[{i}]"), h);
    }
    // Routes are tried in order: one without matches takes everything.
    let catch_all = |matches: &[bool]| matches.iter().position(|empty| *empty);
    for (kind, empties) in [
        (
            "http",
            spec.http
                .iter()
                .map(|h| h.matches.is_empty())
                .collect::<Vec<_>>(),
        ),
        (
            "tcp",
            spec.tcp.iter().map(|t| t.matches.is_empty()).collect(),
        ),
        (
            "tls",
            spec.tls.iter().map(|t| t.matches.is_empty()).collect(),
        ),
    ] {
        if let Some(first) = catch_all(&empties) {
            for later in first + 1..empties.len() {
                f.warn(
                    &format!("spec.{kind}[{later}]"),
                    &format!(
                        "is never used: route {first} before it has no match and takes all traffic"
                    ),
                );
            }
        }
    }
    for (i, t) in spec.tcp.iter().enumerate() {
        let path = format!("spec.tcp[{i}]");
        if t.route.is_empty() {
            f.reject(&format!("{path}.route"), "needs at least one destination");
        }
        l4_destinations(f, &format!("{path}.route"), &t.route);
        for (j, m) in t.matches.iter().enumerate() {
            let p = format!("{path}.match[{j}]");
            if let Some(port) = m.port {
                f.port(&format!("{p}.port"), port);
            }
            for (k, subnet) in m.destination_subnets.iter().enumerate() {
                if let Err(e) = ip_or_cidr(subnet) {
                    f.reject(&format!("{p}.destinationSubnets[{k}]"), &e);
                }
            }
            if let Some(subnet) = &m.source_subnet
                && let Err(e) = ip_or_cidr(subnet)
            {
                f.reject(&format!("{p}.sourceSubnet"), &e);
            }
            f.labels(&format!("{p}.sourceLabels"), &m.source_labels);
            gateway_names(f, &format!("{p}.gateways"), &m.gateways);
        }
    }
    for (i, t) in spec.tls.iter().enumerate() {
        let path = format!("spec.tls[{i}]");
        if t.matches.is_empty() {
            f.reject(
                &format!("{path}.match"),
                "TLS routes need a match with sniHosts",
            );
        }
        for (j, m) in t.matches.iter().enumerate() {
            let p = format!("{path}.match[{j}]");
            if m.sni_hosts.is_empty() {
                f.reject(&format!("{p}.sniHosts"), "needs at least one host");
            }
            for (k, sni) in m.sni_hosts.iter().enumerate() {
                let at = format!("{p}.sniHosts[{k}]");
                if sni.parse::<std::net::IpAddr>().is_ok() {
                    f.warn(
                        &at,
                        "is an IP address: SNI carries names, and most clients send none for an IP",
                    );
                } else if host(f, &at, sni)
                    && !spec
                        .hosts
                        .iter()
                        .any(|h| h.eq_ignore_ascii_case(sni) || crate::host_matches(h, sni))
                {
                    f.reject(
                        &at,
                        &format!(
                            "{sni:?} is not among the VirtualService's hosts {:?}",
                            spec.hosts
                        ),
                    );
                }
            }
            if let Some(port) = m.port {
                f.port(&format!("{p}.port"), port);
            }
            for (k, subnet) in m.destination_subnets.iter().enumerate() {
                if let Err(e) = ip_or_cidr(subnet) {
                    f.reject(&format!("{p}.destinationSubnets[{k}]"), &e);
                }
            }
            f.labels(&format!("{p}.sourceLabels"), &m.source_labels);
            gateway_names(f, &format!("{p}.gateways"), &m.gateways);
        }
        if t.route.is_empty() {
            f.reject(&format!("{path}.route"), "needs at least one destination");
        }
        l4_destinations(f, &format!("{path}.route"), &t.route);
    }
    export_to(f, "spec.exportTo", namespace, &spec.export_to);
}

/// Gateway references: `namespace/name`, `mesh`, or a legacy host name.
fn gateway_names(f: &mut Findings, path: &str, gateways: &[String]) {
    for (i, g) in gateways.iter().enumerate() {
        let at = format!("{path}[{i}]");
        let ok = match g.split_once('/') {
            Some((ns, name)) => names::check_istio_label(ns).and(names::check_istio_label(name)),
            None => names::check_fqdn(g),
        };
        if let Err(why) = ok {
            f.reject(
                &at,
                &format!("{g:?} is not a gateway reference (`namespace/name` or `mesh`): {why}"),
            );
        }
    }
}

/// Envoy's retry conditions Istio accepts in `retryOn` (besides status
/// codes).
const RETRY_ON: [&str; 16] = [
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "envoy-ratelimited",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

fn http_route(f: &mut Findings, path: &str, h: &net::HttpRoute, in_delegate: bool) {
    if h.delegate.is_some() {
        // A root route hands its requests to the delegate, and only that.
        if in_delegate {
            f.reject(
                &format!("{path}.delegate"),
                "a delegate's routes cannot delegate again",
            );
        }
        for (field, set) in [
            ("redirect", h.redirect.is_some()),
            ("route", !h.route.is_empty()),
        ] {
            if set {
                f.reject(&format!("{path}.{field}"), "cannot be set with delegate");
            }
        }
    } else if h.redirect.is_some() {
        for (field, set) in [
            ("route", !h.route.is_empty()),
            ("fault", h.fault.is_some()),
            ("rewrite", h.rewrite.is_some()),
            ("directResponse", h.direct_response.is_some()),
        ] {
            if set {
                f.reject(&format!("{path}.{field}"), "cannot be set with redirect");
            }
        }
    } else if h.direct_response.is_some() {
        for (field, set) in [
            ("route", !h.route.is_empty()),
            ("fault", h.fault.is_some()),
            ("rewrite", h.rewrite.is_some()),
        ] {
            if set {
                f.reject(
                    &format!("{path}.{field}"),
                    "cannot be set with directResponse",
                );
            }
        }
    } else if h.route.is_empty() {
        f.reject(
            &format!("{path}.route"),
            "needs a route, redirect, directResponse or delegate",
        );
    }
    if h.mirror.is_some() && !h.mirrors.is_empty() {
        f.reject(&format!("{path}.mirrors"), "cannot be set with mirror");
    }
    if let Some(p) = h.mirror_percent {
        f.warn(
            &format!("{path}.mirrorPercent"),
            "is deprecated: use mirrorPercentage",
        );
        f.percent(&format!("{path}.mirrorPercent"), Some(f64::from(p)));
    }
    let authorities = h
        .rewrite
        .as_ref()
        .and_then(|r| r.authority.as_ref())
        .into_iter()
        .count()
        + h.headers
            .as_ref()
            .and_then(|hd| hd.request.as_ref())
            .map_or(0, |r| {
                r.set
                    .keys()
                    .chain(r.add.keys())
                    .filter(|k| authority_header(k))
                    .count()
            });
    if authorities > 1 {
        f.reject(
            &format!("{path}.headers.request"),
            "the authority is rewritten more than once (rewrite.authority, :authority, host)",
        );
    }
    http_destinations(f, &format!("{path}.route"), &h.route);
    for (j, m) in h.matches.iter().enumerate() {
        http_match(f, &format!("{path}.match[{j}]"), m);
    }
    f.duration(&format!("{path}.timeout"), h.timeout.as_ref());
    if let Some(r) = &h.retries {
        retries(f, &format!("{path}.retries"), r);
    }
    if let Some(fault) = &h.fault {
        http_fault(f, &format!("{path}.fault"), fault);
    }
    if let Some(r) = &h.redirect {
        redirect(f, &format!("{path}.redirect"), r);
    }
    if let Some(d) = &h.direct_response {
        let p = format!("{path}.directResponse");
        if !(200..=599).contains(&d.status) {
            f.reject(
                &format!("{p}.status"),
                &format!("{} is not an HTTP status (200-599)", d.status),
            );
        }
        let size = d.body.as_ref().map_or(0, |b| {
            b.string.as_ref().map_or(0, String::len) + b.bytes.as_ref().map_or(0, String::len)
        });
        if size > 1 << 20 {
            f.reject(&format!("{p}.body"), "is larger than 1 MiB");
        }
    }
    if let Some(d) = &h.delegate
        && let Err(why) = names::check_subdomain(&d.name)
    {
        f.reject(&format!("{path}.delegate.name"), &why);
    }
    if let Some(r) = &h.rewrite {
        let p = format!("{path}.rewrite");
        if r.uri.is_some() && r.uri_regex_rewrite.is_some() {
            f.reject(&p, "uri and uriRegexRewrite cannot both be set");
        }
        if r.uri.is_none() && r.uri_regex_rewrite.is_none() && r.authority.is_none() {
            f.reject(&p, "needs uri, uriRegexRewrite or authority");
        }
        if let Some(re) = &r.uri_regex_rewrite {
            f.regex(&format!("{p}.uriRegexRewrite.match"), &re.matches);
            if re.rewrite.is_empty() {
                f.reject(&format!("{p}.uriRegexRewrite.rewrite"), "is required");
            }
        }
    }
    if let Some(m) = &h.mirror {
        destination(f, &format!("{path}.mirror"), m);
    }
    for (i, m) in h.mirrors.iter().enumerate() {
        let p = format!("{path}.mirrors[{i}]");
        match &m.destination {
            Some(d) => destination(f, &format!("{p}.destination"), d),
            None => f.reject(&format!("{p}.destination"), "is required"),
        }
        f.percent(
            &format!("{p}.percentage.value"),
            m.percentage.as_ref().map(|p| p.value),
        );
    }
    f.percent(
        &format!("{path}.mirrorPercentage.value"),
        h.mirror_percentage.as_ref().map(|p| p.value),
    );
    if let Some(cors) = &h.cors_policy {
        let p = format!("{path}.corsPolicy");
        for (i, origin) in cors.allow_origins.iter().enumerate() {
            string_match(f, &format!("{p}.allowOrigins[{i}]"), origin);
        }
        for (i, method) in cors.allow_methods.iter().enumerate() {
            const METHODS: [&str; 10] = [
                "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE", "*",
            ];
            f.one_of(&format!("{p}.allowMethods[{i}]"), Some(method), &METHODS);
        }
        for (field, names_) in [
            ("allowHeaders", &cors.allow_headers),
            ("exposeHeaders", &cors.expose_headers),
        ] {
            for (i, name) in names_.iter().enumerate() {
                if name != "*"
                    && let Err(why) = names::check_header_name(name, false)
                {
                    f.reject(&format!("{p}.{field}[{i}]"), &why);
                }
            }
        }
        f.duration(&format!("{p}.maxAge"), cors.max_age.as_ref());
        f.one_of(
            &format!("{p}.unmatchedPreflights"),
            cors.unmatched_preflights.as_deref(),
            &["UNSPECIFIED", "FORWARD", "IGNORE"],
        );
    }
    if let Some(headers) = &h.headers {
        header_operations(f, &format!("{path}.headers"), headers);
    }
}

fn http_match(f: &mut Findings, path: &str, m: &net::HttpMatch) {
    if let Some(uri) = &m.uri {
        string_match_as(f, &format!("{path}.uri"), uri, Match::Uri);
    }
    for (field, sm) in [
        ("scheme", &m.scheme),
        ("method", &m.method),
        ("authority", &m.authority),
    ] {
        if let Some(sm) = sm {
            string_match(f, &format!("{path}.{field}"), sm);
        }
    }
    for (field, map) in [
        ("headers", &m.headers),
        ("withoutHeaders", &m.without_headers),
    ] {
        for (key, sm) in map {
            let at = format!("{path}.{field}.{key}");
            // `@request.auth.claims.<claim>` routes on a JWT claim.
            if !key.starts_with("@request.auth.claims.")
                && let Err(why) = names::check_header_name(key, true)
            {
                f.reject(&at, &why);
            }
            let what = if field == "withoutHeaders" {
                Match::WithoutHeader
            } else {
                Match::Other
            };
            string_match_as(f, &at, sm, what);
        }
    }
    for (key, sm) in &m.query_params {
        string_match(f, &format!("{path}.queryParams.{key}"), sm);
    }
    if let Some(port) = m.port {
        f.port(&format!("{path}.port"), port);
    }
    f.labels(&format!("{path}.sourceLabels"), &m.source_labels);
    gateway_names(f, &format!("{path}.gateways"), &m.gateways);
    if let Some(ns) = &m.source_namespace
        && let Err(why) = names::check_istio_label(ns)
    {
        f.reject(&format!("{path}.sourceNamespace"), &why);
    }
}

fn string_match(f: &mut Findings, path: &str, m: &net::StringMatch) {
    string_match_as(f, path, m, Match::Other);
}

/// What a string match is of: a URI may match the empty prefix (every
/// path), and `withoutHeaders` takes `regex: "*"` for "absent".
#[derive(PartialEq, Eq)]
enum Match {
    Uri,
    WithoutHeader,
    Other,
}

fn string_match_as(f: &mut Findings, path: &str, m: &net::StringMatch, what: Match) {
    let set = [&m.exact, &m.prefix, &m.regex]
        .iter()
        .filter(|v| v.is_some())
        .count();
    if set > 1 {
        f.reject(path, "takes only one of exact, prefix, regex");
    }
    if m.prefix.as_deref() == Some("") && what != Match::Uri {
        f.reject(&format!("{path}.prefix"), "must not be empty");
    }
    match &m.regex {
        Some(re) if re == "*" && what == Match::WithoutHeader => {}
        Some(re) => f.regex(&format!("{path}.regex"), re),
        None => {}
    }
}

/// `:authority` or `host`: the request's authority.
fn authority_header(name: &str) -> bool {
    name.eq_ignore_ascii_case(":authority") || name.eq_ignore_ascii_case("host")
}

fn destination(f: &mut Findings, path: &str, d: &net::Destination) {
    let at = format!("{path}.host");
    if d.host.is_empty() {
        f.reject(&at, "is required");
    } else if d.host == "*" {
        f.reject(&at, "the wildcard `*` is not a destination");
    } else {
        host(f, &at, &d.host);
    }
    if let Some(subset) = &d.subset
        && let Err(why) = names::check_istio_label(subset)
    {
        f.reject(&format!("{path}.subset"), &why);
    }
    if let Some(port) = &d.port {
        f.port(&format!("{path}.port.number"), port.number);
    }
}

/// Weights are shares: each at least 0, and together more than 0 when
/// there are several (a destination gets `weight / sum`).
fn weights(f: &mut Findings, path: &str, weights: &[Option<i64>]) {
    for (i, w) in weights.iter().enumerate() {
        if let Some(w) = *w
            && !(0..=i64::from(i32::MAX)).contains(&w)
        {
            f.reject(
                &format!("{path}[{i}].weight"),
                &format!("{w} is negative or too large"),
            );
        }
    }
    if weights.len() > 1 && weights.iter().map(|w| w.unwrap_or(0)).sum::<i64>() == 0 {
        f.reject(
            path,
            "the weights sum to 0: no destination would get traffic",
        );
    }
}

fn http_destinations(f: &mut Findings, path: &str, routes: &[net::RouteDestination]) {
    for (i, r) in routes.iter().enumerate() {
        let p = format!("{path}[{i}]");
        destination(f, &format!("{p}.destination"), &r.destination);
        if let Some(headers) = &r.headers {
            header_operations(f, &format!("{p}.headers"), headers);
        }
    }
    let w: Vec<Option<i64>> = routes.iter().map(|r| r.weight).collect();
    weights(f, path, &w);
}

fn l4_destinations(f: &mut Findings, path: &str, routes: &[net::L4RouteDestination]) {
    for (i, r) in routes.iter().enumerate() {
        destination(f, &format!("{path}[{i}].destination"), &r.destination);
    }
    let w: Vec<Option<i64>> = routes.iter().map(|r| r.weight).collect();
    weights(f, path, &w);
}

fn header_operations(f: &mut Findings, path: &str, headers: &net::Headers) {
    for (side, ops) in [
        ("request", &headers.request),
        ("response", &headers.response),
    ] {
        let Some(ops) = ops else {
            continue;
        };
        let p = format!("{path}.{side}");
        for (field, keys) in [
            ("set", ops.set.keys().collect::<Vec<_>>()),
            ("add", ops.add.keys().collect()),
            ("remove", ops.remove.iter().collect()),
        ] {
            for name in keys {
                let at = format!("{p}.{field}.{name}");
                // Only the request's authority may be set, as `:authority`
                // or `host`; no pseudo-header otherwise.
                let authority = side == "request" && field != "remove" && authority_header(name);
                if name.is_empty() {
                    f.reject(&at, "header name is empty");
                } else if (name.starts_with(':') || name.eq_ignore_ascii_case("host")) && !authority
                {
                    f.reject(&at, "pseudo-headers (`:`) and Host cannot be changed here");
                }
            }
        }
        for (field, values) in [("set", &ops.set), ("add", &ops.add)] {
            for (name, value) in values {
                if value.chars().any(|c| c.is_control() && c != '\t') {
                    f.reject(
                        &format!("{p}.{field}.{name}"),
                        "a header value cannot hold control characters",
                    );
                }
            }
        }
    }
}

fn retries(f: &mut Findings, path: &str, r: &net::Retries) {
    let attempts = r.attempts.unwrap_or(0);
    if attempts < 0 {
        f.reject(&format!("{path}.attempts"), "must not be negative");
    }
    if attempts == 0
        && (r.per_try_timeout.is_some()
            || r.retry_on.is_some()
            || r.retry_remote_localities.is_some())
    {
        f.reject(
            &format!("{path}.attempts"),
            "is 0 (retries off), yet the retry policy sets perTryTimeout, retryOn or retryRemoteLocalities",
        );
    }
    f.duration(&format!("{path}.perTryTimeout"), r.per_try_timeout.as_ref());
    f.duration(&format!("{path}.backoff"), r.backoff.as_ref());
    if let Some(on) = &r.retry_on {
        for policy in on.split(',') {
            let status = policy
                .parse::<u16>()
                .is_ok_and(|c| (100..=599).contains(&c));
            if !status && !RETRY_ON.contains(&policy) {
                f.reject(
                    &format!("{path}.retryOn"),
                    &format!("{policy:?} is not a retry condition or an HTTP status"),
                );
            }
        }
    }
}

fn http_fault(f: &mut Findings, path: &str, fault: &net::Fault) {
    if fault.abort.is_none() && fault.delay.is_none() {
        f.reject(path, "needs an abort or a delay");
    }
    // Envoy takes 0, or a fraction from 0.0001 up to 100.
    let fraction = |f: &mut Findings, at: String, p: Option<&net::Percent>| {
        if let Some(v) = p.map(|p| p.value)
            && !(v == 0.0 || (0.0001..=100.0).contains(&v))
        {
            f.reject(&at, &format!("{v} is neither 0 nor within 0.0001-100"));
        }
    };
    if let Some(d) = &fault.delay {
        let p = format!("{path}.delay");
        fraction(f, format!("{p}.percentage.value"), d.percentage.as_ref());
        f.duration(&format!("{p}.fixedDelay"), d.fixed_delay.as_ref());
        if d.exponential_delay.is_some() {
            f.reject(
                &format!("{p}.exponentialDelay"),
                "is not supported by Istio",
            );
        }
        if let Some(pct) = d.percent {
            f.percent(&format!("{p}.percent"), Some(f64::from(pct)));
        }
    }
    if let Some(a) = &fault.abort {
        let p = format!("{path}.abort");
        fraction(f, format!("{p}.percentage.value"), a.percentage.as_ref());
        if let Some(status) = a.http_status
            && !(200..=599).contains(&status)
        {
            f.reject(
                &format!("{p}.httpStatus"),
                &format!("{status} is not an HTTP status (200-599)"),
            );
        }
        f.one_of(
            &format!("{p}.grpcStatus"),
            a.grpc_status.as_deref(),
            &crate::GRPC_STATUS,
        );
        if a.http2_error.is_some() {
            f.reject(&format!("{p}.http2Error"), "is not supported by Istio");
        }
        if a.http_status.is_none() && a.grpc_status.is_none() && a.http2_error.is_none() {
            f.warn(
                &p,
                "has no error type (httpStatus or grpcStatus): it aborts nothing",
            );
        }
    }
}

fn redirect(f: &mut Findings, path: &str, r: &net::Redirect) {
    if r.uri.is_none()
        && r.authority.is_none()
        && r.port.is_none()
        && r.derive_port.is_none()
        && r.scheme.is_none()
    {
        f.reject(path, "needs uri, authority, port, derivePort or scheme");
    }
    if r.port.is_some() && r.derive_port.is_some() {
        f.reject(path, "port and derivePort cannot both be set");
    }
    if let Some(code) = r.redirect_code
        && !(300..=399).contains(&code)
    {
        f.reject(
            &format!("{path}.redirectCode"),
            &format!("{code} is not a 3xx status"),
        );
    }
    f.one_of(
        &format!("{path}.scheme"),
        r.scheme.as_deref(),
        &["http", "https"],
    );
    f.one_of(
        &format!("{path}.derivePort"),
        r.derive_port.as_deref(),
        &["FROM_PROTOCOL_DEFAULT", "FROM_REQUEST_PORT"],
    );
    if let Some(port) = r.port {
        f.port(&format!("{path}.port"), port);
    }
}

pub(super) fn gateway(f: &mut Findings, spec: &net::GatewaySpec) {
    f.warn(
        "spec",
        "has no effect yet: strait runs no ingress or egress gateway",
    );
    f.labels("spec.selector", &spec.selector);
    if spec.servers.is_empty() {
        f.reject("spec.servers", "needs at least one server");
    }
    let mut port_names = BTreeSet::new();
    for (i, s) in spec.servers.iter().enumerate() {
        let path = format!("spec.servers[{i}]");
        if s.hosts.is_empty() {
            f.reject(&format!("{path}.hosts"), "needs at least one host");
        }
        for (j, h) in s.hosts.iter().enumerate() {
            let at = format!("{path}.hosts[{j}]");
            let (ns, name) = h.split_once('/').unwrap_or((".", h));
            if !matches!(ns, "*" | ".") && names::check_istio_label(ns).is_err() {
                f.reject(&at, &format!("{ns:?} is not `*`, `.` or a namespace name"));
            }
            if name == "*" || name.parse::<std::net::IpAddr>().is_ok() {
                continue;
            }
            if !name.contains('.') {
                f.reject(
                    &at,
                    &format!("{name:?} is a short name: a gateway host is fully qualified"),
                );
            } else if name.starts_with('*') && !name.starts_with("*.") {
                f.reject(
                    &at,
                    &format!("{name:?} is a partial wildcard, which a gateway does not take"),
                );
            } else {
                host(f, &at, name);
            }
        }
        let unix = s.bind.as_deref().is_some_and(|b| b.starts_with("unix://"));
        if let Some(bind) = s.bind.as_deref()
            && !unix
            && bind.parse::<std::net::IpAddr>().is_err()
        {
            f.reject(
                &format!("{path}.bind"),
                &format!("{bind:?} is not an IP address or unix:// path"),
            );
        }
        let Some(port) = &s.port else {
            f.reject(&format!("{path}.port"), "is required");
            continue;
        };
        let p = format!("{path}.port");
        if !(unix && port.number == 0) {
            f.port(&format!("{p}.number"), port.number);
        }
        let port_name = port.name.clone().unwrap_or_default();
        if port_name.is_empty() {
            f.reject(&format!("{p}.name"), "is required");
        } else if !port_names.insert(port_name.clone()) {
            f.reject(
                &format!("{p}.name"),
                &format!("{port_name:?} is used by another server"),
            );
        }
        if port.target_port.is_some() {
            f.reject(&format!("{p}.targetPort"), "has no meaning on a Gateway");
        }
        let protocol = port
            .protocol
            .as_deref()
            .unwrap_or_default()
            .to_ascii_uppercase();
        f.one_of(&format!("{p}.protocol"), Some(&protocol), &PROTOCOLS);
        let tls_port = matches!(protocol.as_str(), "HTTPS" | "TLS");
        match &s.tls {
            None if tls_port => f.reject(
                &format!("{path}.tls"),
                "is required for HTTPS and TLS ports",
            ),
            Some(tls) if tls_port => server_tls(f, &format!("{path}.tls"), tls),
            // A plain HTTP port may only redirect to HTTPS.
            Some(tls)
                if protocol.starts_with("HTTP")
                    && tls.mode.is_none()
                    && tls.server_certificate.is_none()
                    && tls.private_key.is_none()
                    && tls.ca_certificates.is_none() => {}
            Some(_) => f.reject(
                &format!("{path}.tls"),
                "only HTTPS and TLS ports take TLS settings (an HTTP port only httpsRedirect)",
            ),
            None => {}
        }
    }
}

fn server_tls(f: &mut Findings, path: &str, tls: &net::ServerTls) {
    let mode = tls.mode.as_deref().unwrap_or("PASSTHROUGH");
    f.one_of(
        &format!("{path}.mode"),
        Some(mode),
        &[
            "PASSTHROUGH",
            "SIMPLE",
            "MUTUAL",
            "AUTO_PASSTHROUGH",
            "ISTIO_MUTUAL",
            "OPTIONAL_MUTUAL",
        ],
    );
    for (field, v) in [
        ("minProtocolVersion", &tls.min_protocol_version),
        ("maxProtocolVersion", &tls.max_protocol_version),
    ] {
        f.one_of(
            &format!("{path}.{field}"),
            v.as_deref(),
            &["TLS_AUTO", "TLSV1_0", "TLSV1_1", "TLSV1_2", "TLSV1_3"],
        );
    }
    let set = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.is_empty());
    let credential = set(&tls.credential_name) || !tls.credential_names.is_empty();
    let files = set(&tls.server_certificate) || set(&tls.private_key);
    let sources = [
        set(&tls.server_certificate) && set(&tls.private_key),
        set(&tls.credential_name),
        !tls.credential_names.is_empty(),
        !tls.tls_certificates.is_empty(),
    ];
    if sources.iter().filter(|s| **s).count() > 1 {
        f.reject(
            path,
            "takes only one of credentialName, credentialNames, serverCertificate/privateKey, tlsCertificates",
        );
    }
    match mode {
        "ISTIO_MUTUAL" if credential || files || set(&tls.ca_certificates) || !tls.tls_certificates.is_empty() => f.reject(
            path,
            "mode ISTIO_MUTUAL uses the mesh's certificates: no certificates, keys or credentials",
        ),
        "SIMPLE" | "MUTUAL" | "OPTIONAL_MUTUAL" if !credential => {
            if tls.tls_certificates.is_empty() {
                for (field, v) in [("serverCertificate", &tls.server_certificate), ("privateKey", &tls.private_key)] {
                    if !set(v) {
                        f.reject(&format!("{path}.{field}"), &format!("is required with mode {mode} without a credentialName"));
                    }
                }
            }
            if mode != "SIMPLE" && !set(&tls.ca_certificates) {
                f.reject(
                    &format!("{path}.caCertificates"),
                    &format!("is required with mode {mode} without a credentialName"),
                );
            }
        }
        _ => {}
    }
    if set(&tls.ca_crl) && (set(&tls.credential_name) || mode == "SIMPLE") {
        f.reject(
            &format!("{path}.caCrl"),
            "works only with MUTUAL certificates given as files",
        );
    }
}
