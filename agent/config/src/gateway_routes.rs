//! Gateway API routes in the mesh: an `HTTPRoute` or `GRPCRoute` whose
//! `parentRefs` name a Service (GAMMA: a producer route, in the Service's
//! namespace) or the waypoint the Service is bound to. Each is translated
//! into Istio's `http` routes (as Istio itself does), so the waypoint
//! applies one route model whichever API the user wrote; the rules of all
//! routes attached to a service are ordered by the Gateway API's
//! precedence. A service's VirtualService, when it has one, comes first
//! ([`Config::virtual_service_for`]).
use std::cmp::Reverse;

use crate::{
    Config, Named, Service,
    manifest::{
        gateway_api::{
            BackendRef, GATEWAY_KIND, GrpcRouteMatch, GrpcRouteSpec, HttpRouteFilter,
            HttpRouteMatch, HttpRouteSpec, NameMatch, ParentReference, PathModifier,
        },
        networking as net,
    },
    qualify,
};

/// The Gateway API's group, as `parentRefs` and `backendRefs` write it.
const GROUP: &str = "gateway.networking.k8s.io";

/// A rule of an attached route, translated: where it came from, and the
/// precedence it sorts by.
struct Translated {
    http: net::HttpRoute,
    precedence: Precedence,
}

/// Sorted ascending: the first matching rule wins.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Precedence {
    /// gRPC rules first (they match only gRPC paths), then HTTP.
    http: bool,
    /// 0 exact, 1 prefix, 2 regular expression.
    path_kind: u8,
    /// Longer paths (or gRPC service and method names) first.
    length: Reverse<usize>,
    method: Reverse<bool>,
    headers: Reverse<usize>,
    query_params: Reverse<usize>,
    /// The config's order (oldest first), then the rule's own.
    order: usize,
}

/// What a rule translates to, one route per match (with the match, for
/// precedence), or why it cannot be (the field and the reason, from the
/// rule).
pub type Translation<M> = Result<Vec<(net::HttpRoute, M)>, (String, String)>;

impl Config {
    /// The VirtualService for `service`'s hosts that applies inside the
    /// mesh (no `gateways`, or `mesh` among them) and is visible from its
    /// namespace; the first in the config's order (Istio: the oldest). A
    /// waypoint applies it before any Gateway API route.
    pub fn virtual_service_for(
        &self,
        service: &Service,
    ) -> Option<&Named<net::VirtualServiceSpec>> {
        self.virtual_services.iter().find(|vs| {
            let spec = &vs.spec;
            let in_mesh = spec.gateways.is_empty() || spec.gateways.iter().any(|g| g == "mesh");
            let visible = crate::exported_to(&spec.export_to, &vs.namespace, &service.namespace);
            let host = spec.hosts.iter().any(|h| {
                let h = qualify(h, &vs.namespace);
                service.hosts.iter().any(|s| crate::host_matches(&h, s))
            });
            in_mesh && visible && host
        })
    }

    /// The `http` routes of `vs` with each `delegate` replaced by the
    /// delegate VirtualService's routes (one level, as Istio), each of
    /// their matches merged with the delegating route's (the delegate's
    /// conditions added to, or narrowing, the parent's); a delegate that is
    /// not in the config takes nothing (its requests go on to the next
    /// routes). Where each came from is in its name (`delegate/route`).
    pub fn http_routes_of(&self, vs: &Named<net::VirtualServiceSpec>) -> Vec<net::HttpRoute> {
        let mut out = Vec::new();
        for route in &vs.spec.http {
            let Some(delegate) = &route.delegate else {
                out.push(route.clone());
                continue;
            };
            let namespace = delegate.namespace.as_deref().unwrap_or(&vs.namespace);
            let Some(target) = self.virtual_services.iter().find(|d| {
                d.name == delegate.name && d.namespace == namespace && d.spec.hosts.is_empty()
            }) else {
                continue;
            };
            for inner in &target.spec.http {
                let mut merged = inner.clone();
                merged.matches = merge_matches(&route.matches, &inner.matches);
                merged.name = Some(format!(
                    "{}/{}",
                    route.name.as_deref().unwrap_or("-"),
                    inner.name.as_deref().unwrap_or("-")
                ));
                // The delegate's destinations are its own namespace's.
                for d in &mut merged.route {
                    d.destination.host = qualify(&d.destination.host, &target.namespace);
                }
                out.push(merged);
            }
        }
        out
    }

    /// The Gateway API routes attached to `service`, translated and in
    /// precedence order; each `http` route is named
    /// `<Kind>/<namespace>/<name>/<rule>`. Empty when none is attached.
    pub fn gateway_routes(&self, service: &Service) -> Vec<net::HttpRoute> {
        let waypoint = self.service_waypoint(service);
        let mut found: Vec<Translated> = Vec::new();
        let mut order = 0;
        let attached = |parents: &[ParentReference], namespace: &str, hostnames: &[String]| {
            parents.iter().find_map(|p| {
                let kind = p.kind.as_deref().unwrap_or(GATEWAY_KIND);
                let group = p.group.as_deref().unwrap_or(GROUP);
                let parent_ns = p.namespace.as_deref().unwrap_or(namespace);
                let to_service = kind == "Service"
                    && (group.is_empty() || group == "core")
                    && p.name == service.name
                    // Producer routes only: a route in another namespace
                    // (a consumer route) would apply to every client.
                    && parent_ns == service.namespace
                    && namespace == service.namespace;
                let to_waypoint = kind == GATEWAY_KIND
                    && group == GROUP
                    && waypoint.is_some_and(|w| w.name == p.name && w.namespace == parent_ns)
                    && (hostnames.is_empty()
                        || hostnames.iter().any(|h| {
                            service.hosts.iter().any(|s| {
                                crate::host_matches(&h.to_ascii_lowercase(), s)
                                    || h.eq_ignore_ascii_case(&service.name)
                            })
                        }));
                (to_service || to_waypoint).then_some(p.port)
            })
        };
        for route in &self.http_routes {
            let spec = &route.spec;
            let Some(port) = attached(&spec.parent_refs, &route.namespace, &spec.hostnames) else {
                continue;
            };
            for (i, rule) in spec.rules.iter().enumerate() {
                let name = format!(
                    "HTTPRoute/{}/{}/{}",
                    route.namespace,
                    route.name,
                    rule_name(rule.name.as_deref(), i)
                );
                if let Ok(routes) = http_rule(route, i, &name) {
                    for (mut http, m) in routes {
                        order += 1;
                        let precedence = http_precedence(&m, order);
                        restrict_port(&mut http, port);
                        found.push(Translated { http, precedence });
                    }
                }
            }
        }
        for route in &self.grpc_routes {
            let spec = &route.spec;
            let Some(port) = attached(&spec.parent_refs, &route.namespace, &spec.hostnames) else {
                continue;
            };
            for (i, rule) in spec.rules.iter().enumerate() {
                let name = format!(
                    "GRPCRoute/{}/{}/{}",
                    route.namespace,
                    route.name,
                    rule_name(rule.name.as_deref(), i)
                );
                if let Ok(routes) = grpc_rule(route, i, &name) {
                    for (mut http, m) in routes {
                        order += 1;
                        let precedence = grpc_precedence(m.as_ref(), order);
                        restrict_port(&mut http, port);
                        found.push(Translated { http, precedence });
                    }
                }
            }
        }
        found.sort_by(|a, b| a.precedence.cmp(&b.precedence));
        found.into_iter().map(|t| t.http).collect()
    }
}

/// Every pair of a parent's and a delegate's match entries, the
/// delegate's conditions over the parent's (no entries on a side: that
/// side matches everything).
fn merge_matches(parent: &[net::HttpMatch], inner: &[net::HttpMatch]) -> Vec<net::HttpMatch> {
    match (parent.is_empty(), inner.is_empty()) {
        (true, _) => inner.to_vec(),
        (false, true) => parent.to_vec(),
        (false, false) => parent
            .iter()
            .flat_map(|p| {
                inner.iter().map(move |i| {
                    let mut m = p.clone();
                    let take = |a: &mut Option<net::StringMatch>, b: &Option<net::StringMatch>| {
                        if b.is_some() {
                            a.clone_from(b);
                        }
                    };
                    take(&mut m.uri, &i.uri);
                    take(&mut m.method, &i.method);
                    take(&mut m.authority, &i.authority);
                    take(&mut m.scheme, &i.scheme);
                    m.headers.extend(i.headers.clone());
                    m.without_headers.extend(i.without_headers.clone());
                    m.query_params.extend(i.query_params.clone());
                    m.source_labels.extend(i.source_labels.clone());
                    if i.port.is_some() {
                        m.port = i.port;
                    }
                    if i.ignore_uri_case.is_some() {
                        m.ignore_uri_case = i.ignore_uri_case;
                    }
                    if i.source_namespace.is_some() {
                        m.source_namespace.clone_from(&i.source_namespace);
                    }
                    m
                })
            })
            .collect(),
    }
}

fn rule_name(name: Option<&str>, i: usize) -> String {
    name.map_or_else(|| i.to_string(), str::to_string)
}

fn restrict_port(http: &mut net::HttpRoute, port: Option<u32>) {
    if let Some(port) = port {
        for m in &mut http.matches {
            m.port = Some(port);
        }
    }
}

fn exact(value: &str) -> net::StringMatch {
    net::StringMatch {
        exact: Some(value.to_string()),
        ..Default::default()
    }
}

fn prefix(value: &str) -> net::StringMatch {
    net::StringMatch {
        prefix: Some(value.to_string()),
        ..Default::default()
    }
}

fn regex(value: &str) -> net::StringMatch {
    net::StringMatch {
        regex: Some(value.to_string()),
        ..Default::default()
    }
}

/// A header or query parameter match; the first of a name counts, as the
/// Gateway API says.
fn name_matches(
    list: &[NameMatch],
    at: &str,
    lowercase: bool,
) -> Result<std::collections::BTreeMap<String, net::StringMatch>, (String, String)> {
    let mut out = std::collections::BTreeMap::new();
    for (j, m) in list.iter().enumerate() {
        let name = if lowercase {
            m.name.to_ascii_lowercase()
        } else {
            m.name.clone()
        };
        let value = match m.kind.as_deref().unwrap_or("Exact") {
            "Exact" => exact(&m.value),
            "RegularExpression" => regex(&m.value),
            other => {
                return Err((
                    format!("{at}[{j}].type"),
                    format!("{other:?} is not Exact or RegularExpression"),
                ));
            }
        };
        out.entry(name).or_insert(value);
    }
    Ok(out)
}

/// An HTTPRoute match as Istio's; a path prefix matches whole path
/// elements (`/api` matches `/api` and `/api/x`, not `/apix`). The
/// prefix, when the match has one, for `ReplacePrefixMatch`.
fn http_match(
    m: &HttpRouteMatch,
    at: &str,
) -> Result<(net::HttpMatch, Option<String>), (String, String)> {
    let mut out = net::HttpMatch::default();
    let mut matched_prefix = None;
    let (kind, value) = match &m.path {
        None => ("PathPrefix", "/".to_string()),
        Some(p) => (
            p.kind.as_deref().unwrap_or("PathPrefix"),
            p.value.clone().unwrap_or_else(|| "/".into()),
        ),
    };
    out.uri = Some(match kind {
        "Exact" => exact(&value),
        "PathPrefix" => {
            let trimmed = value.trim_end_matches('/');
            matched_prefix = Some(trimmed.to_string());
            if trimmed.is_empty() {
                prefix("/")
            } else {
                regex(&format!("{}(/.*)?", regex_escape(trimmed)))
            }
        }
        "RegularExpression" => regex(&value),
        other => {
            return Err((
                format!("{at}.path.type"),
                format!("{other:?} is not Exact, PathPrefix or RegularExpression"),
            ));
        }
    });
    out.headers = name_matches(&m.headers, &format!("{at}.headers"), true)?;
    out.query_params = name_matches(&m.query_params, &format!("{at}.queryParams"), false)?;
    out.method = m.method.as_deref().map(exact);
    Ok((out, matched_prefix))
}

fn regex_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn header_ops(filter: &crate::manifest::gateway_api::HeaderFilter) -> net::HeaderOperations {
    net::HeaderOperations {
        set: filter
            .set
            .iter()
            .map(|h| (h.name.clone(), h.value.clone()))
            .collect(),
        add: filter
            .add
            .iter()
            .map(|h| (h.name.clone(), h.value.clone()))
            .collect(),
        remove: filter.remove.clone(),
    }
}

/// `RequestMirror` filters as Istio's `mirrors` (a backend elsewhere is
/// left out, as in [`destinations`]).
fn mirrors_of(filters: &[HttpRouteFilter], namespace: &str) -> Vec<net::Mirror> {
    filters
        .iter()
        .filter_map(|f| f.request_mirror.as_ref())
        .filter(|m| !elsewhere(&m.backend_ref, namespace))
        .map(|m| {
            let share = match (&m.fraction, m.percent) {
                (Some(f), _) => {
                    f64::from(f.numerator) * 100.0 / f64::from(f.denominator.unwrap_or(100).max(1))
                }
                (None, Some(p)) => f64::from(p),
                (None, None) => 100.0,
            };
            net::Mirror {
                destination: Some(net::Destination {
                    host: qualify(&m.backend_ref.name, namespace),
                    subset: None,
                    port: m
                        .backend_ref
                        .port
                        .map(|number| net::PortSelector { number }),
                }),
                percentage: Some(net::Percent { value: share }),
            }
        })
        .collect()
}

/// Filters that change headers, as Istio's `headers`; the others are
/// applied by the caller.
fn headers_of(filters: &[HttpRouteFilter]) -> Option<net::Headers> {
    let request = filters
        .iter()
        .find_map(|f| f.request_header_modifier.as_ref())
        .map(header_ops);
    let response = filters
        .iter()
        .find_map(|f| f.response_header_modifier.as_ref())
        .map(header_ops);
    (request.is_some() || response.is_some()).then_some(net::Headers { request, response })
}

/// A path modifier as Istio's rewrite: a full path, or the matched
/// prefix replaced (whole path elements).
fn path_rewrite(
    modifier: &PathModifier,
    matched_prefix: Option<&str>,
    at: &str,
) -> Result<net::Rewrite, (String, String)> {
    match modifier.kind.as_str() {
        "ReplaceFullPath" => Ok(net::Rewrite {
            uri: Some(
                modifier
                    .replace_full_path
                    .clone()
                    .unwrap_or_else(|| "/".into()),
            ),
            ..Default::default()
        }),
        "ReplacePrefixMatch" => {
            let Some(prefix) = matched_prefix else {
                return Err((
                    format!("{at}.type"),
                    "ReplacePrefixMatch needs the rule's matches to be PathPrefix".into(),
                ));
            };
            let with = modifier
                .replace_prefix_match
                .clone()
                .unwrap_or_else(|| "/".into());
            // `/api` -> `/v2`: `/api/x` becomes `/v2/x`, `/api` `/v2`; a
            // replacement ending in `/` takes the rest without its slash.
            let (pattern, rewrite) = if with.ends_with('/') {
                (
                    format!("^{}/?(.*)$", regex_escape(prefix)),
                    format!("{with}\\1"),
                )
            } else {
                (
                    format!("^{}(/.*)?$", regex_escape(prefix)),
                    format!("{with}\\1"),
                )
            };
            Ok(net::Rewrite {
                uri_regex_rewrite: Some(net::RegexRewrite {
                    matches: pattern,
                    rewrite,
                }),
                ..Default::default()
            })
        }
        other => Err((
            format!("{at}.type"),
            format!("{other:?} is not ReplaceFullPath or ReplacePrefixMatch"),
        )),
    }
}

/// Backends as weighted destinations. One in another namespace needs a
/// ReferenceGrant, which strait does not read: left out (the check warns),
/// so a rule with nothing else answers 500, as the Gateway API says of an
/// unresolved reference.
fn destinations(
    backends: &[BackendRef],
    namespace: &str,
    at: &str,
) -> Result<Vec<net::RouteDestination>, (String, String)> {
    backends
        .iter()
        .enumerate()
        .filter(|(_, b)| !elsewhere(b, namespace))
        .map(|(j, b)| {
            let here = format!("{at}[{j}]");
            let kind = b.kind.as_deref().unwrap_or("Service");
            let host = match (b.group.as_deref().unwrap_or(""), kind) {
                ("" | "core", "Service") => qualify(&b.name, namespace),
                ("networking.istio.io", "Hostname") => b.name.to_ascii_lowercase(),
                (group, kind) => {
                    return Err((
                        format!("{here}.kind"),
                        format!("{group}/{kind} is not a backend strait knows (Service, or Istio's Hostname)"),
                    ));
                }
            };
            Ok(net::RouteDestination {
                destination: net::Destination {
                    host,
                    subset: None,
                    port: b.port.map(|number| net::PortSelector { number }),
                },
                weight: Some(i64::from(b.weight.unwrap_or(1))),
                headers: headers_of(&b.filters),
            })
        })
        .collect()
}

/// Whether a backend is in another namespace than its route's.
pub fn elsewhere(b: &BackendRef, namespace: &str) -> bool {
    b.namespace.as_deref().is_some_and(|n| n != namespace)
}

/// One HTTPRoute rule as Istio http routes: one per match (each keeps
/// its own precedence).
pub fn http_rule(
    route: &Named<HttpRouteSpec>,
    i: usize,
    name: &str,
) -> Translation<HttpRouteMatch> {
    let rule = &route.spec.rules[i];
    let at = format!("spec.rules[{i}]");
    let matches = if rule.matches.is_empty() {
        vec![HttpRouteMatch::default()]
    } else {
        rule.matches.clone()
    };
    let route_to = destinations(
        &rule.backend_refs,
        &route.namespace,
        &format!("{at}.backendRefs"),
    )?;
    let duration = |d: &Option<String>| d.clone().filter(|t| t != "0s");
    let mut retries = rule.retry.as_ref().map(|r| net::Retries {
        attempts: r.attempts.map(i64::from),
        retry_on: Some(
            std::iter::once("connect-failure,refused-stream".to_string())
                .chain(r.codes.iter().map(u32::to_string))
                .collect::<Vec<_>>()
                .join(","),
        ),
        ..Default::default()
    });
    if let Some(per_try) = rule
        .timeouts
        .as_ref()
        .and_then(|t| duration(&t.backend_request))
    {
        let r = retries.get_or_insert_with(|| net::Retries {
            attempts: Some(2),
            retry_on: Some("connect-failure,refused-stream,503".into()),
            ..Default::default()
        });
        r.per_try_timeout = Some(per_try);
    }
    let mut out = Vec::new();
    for (j, m) in matches.iter().enumerate() {
        let (istio_match, matched_prefix) = http_match(m, &format!("{at}.matches[{j}]"))?;
        let mut http = net::HttpRoute {
            name: Some(name.to_string()),
            matches: vec![istio_match],
            route: route_to.clone(),
            timeout: rule.timeouts.as_ref().and_then(|t| duration(&t.request)),
            retries: retries.clone(),
            headers: headers_of(&rule.filters),
            mirrors: mirrors_of(&rule.filters, &route.namespace),
            ..Default::default()
        };
        for (k, filter) in rule.filters.iter().enumerate() {
            let fat = format!("{at}.filters[{k}]");
            if let Some(rewrite) = &filter.url_rewrite {
                let mut r = match &rewrite.path {
                    Some(p) => path_rewrite(
                        p,
                        matched_prefix.as_deref(),
                        &format!("{fat}.urlRewrite.path"),
                    )?,
                    None => net::Rewrite::default(),
                };
                r.authority = rewrite.hostname.clone();
                http.rewrite = Some(r);
            }
            if let Some(redirect) = &filter.request_redirect {
                let uri = match &redirect.path {
                    Some(p) if p.kind == "ReplaceFullPath" => p.replace_full_path.clone(),
                    _ => None,
                };
                http.redirect = Some(net::Redirect {
                    uri,
                    authority: redirect.hostname.clone(),
                    port: redirect.port,
                    scheme: redirect.scheme.clone(),
                    redirect_code: Some(redirect.status_code.unwrap_or(302)),
                    derive_port: None,
                });
                http.route.clear();
            }
        }
        if http.redirect.is_none() && http.route.iter().all(|d| d.weight == Some(0)) {
            // Nothing to send to: the Gateway API's 500.
            http.direct_response = Some(net::DirectResponse {
                status: 500,
                ..Default::default()
            });
            http.route.clear();
        }
        out.push((http, m.clone()));
    }
    Ok(out)
}

/// One GRPCRoute rule as Istio http routes, each with its match (for
/// precedence).
pub fn grpc_rule(
    route: &Named<GrpcRouteSpec>,
    i: usize,
    name: &str,
) -> Translation<Option<GrpcRouteMatch>> {
    let rule = &route.spec.rules[i];
    let at = format!("spec.rules[{i}]");
    let route_to = destinations(
        &rule.backend_refs,
        &route.namespace,
        &format!("{at}.backendRefs"),
    )?;
    let matches: Vec<Option<GrpcRouteMatch>> = if rule.matches.is_empty() {
        vec![None]
    } else {
        rule.matches.iter().cloned().map(Some).collect()
    };
    let mut out = Vec::new();
    for (j, m) in matches.into_iter().enumerate() {
        let mat = format!("{at}.matches[{j}]");
        let mut istio_match = net::HttpMatch::default();
        if let Some(m) = &m {
            if let Some(method) = &m.method {
                let (service, name) = (method.service.as_deref(), method.method.as_deref());
                istio_match.uri = Some(
                    match (method.kind.as_deref().unwrap_or("Exact"), service, name) {
                        (_, None, None) => {
                            return Err((
                                format!("{mat}.method"),
                                "names neither a service nor a method".into(),
                            ));
                        }
                        ("Exact", Some(s), Some(n)) => exact(&format!("/{s}/{n}")),
                        ("Exact", Some(s), None) => prefix(&format!("/{s}/")),
                        ("Exact", None, Some(n)) => regex(&format!("/[^/]+/{}", regex_escape(n))),
                        ("RegularExpression", s, n) => regex(&format!(
                            "/{}/{}",
                            s.unwrap_or("[^/]+"),
                            n.unwrap_or("[^/]+")
                        )),
                        (other, _, _) => {
                            return Err((
                                format!("{mat}.method.type"),
                                format!("{other:?} is not Exact or RegularExpression"),
                            ));
                        }
                    },
                );
            }
            istio_match.headers = name_matches(&m.headers, &format!("{mat}.headers"), true)?;
        }
        let http = net::HttpRoute {
            name: Some(name.to_string()),
            matches: vec![istio_match],
            route: route_to.clone(),
            headers: headers_of(&rule.filters),
            mirrors: mirrors_of(&rule.filters, &route.namespace),
            ..Default::default()
        };
        out.push((http, m));
    }
    Ok(out)
}

/// The Gateway API's order: an exact path, then the longest prefix (as
/// written), then a method, then more headers, then more query
/// parameters.
fn http_precedence(m: &HttpRouteMatch, order: usize) -> Precedence {
    let (path_kind, length) = match &m.path {
        None => (1, 1),
        Some(p) => {
            let length = p.value.as_deref().map_or(1, str::len);
            match p.kind.as_deref().unwrap_or("PathPrefix") {
                "Exact" => (0, length),
                "PathPrefix" => (1, length),
                _ => (2, length),
            }
        }
    };
    Precedence {
        http: true,
        path_kind,
        length: Reverse(length),
        method: Reverse(m.method.is_some()),
        headers: Reverse(m.headers.len()),
        query_params: Reverse(m.query_params.len()),
        order,
    }
}

fn grpc_precedence(m: Option<&GrpcRouteMatch>, order: usize) -> Precedence {
    let method = m.and_then(|m| m.method.as_ref());
    let service = method
        .and_then(|m| m.service.as_deref())
        .map_or(0, str::len);
    let name = method.and_then(|m| m.method.as_deref()).map_or(0, str::len);
    Precedence {
        http: false,
        path_kind: 0,
        length: Reverse(service * 1000 + name),
        method: Reverse(false),
        headers: Reverse(m.map_or(0, |m| m.headers.len())),
        query_params: Reverse(0),
        order,
    }
}
