//! One request through the waypoint: its route ([`crate::routes`]), a
//! destination by weight, an endpoint of that destination (by locality,
//! readiness and health, [`strait_route`]), and the attempts: a retry goes
//! to another endpoint when there is one, within the route's retry policy
//! and timeout, with the request body [`crate::replay`] kept.
use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, atomic::AtomicU64},
    time::Instant,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::{
    Request, Response, StatusCode,
    body::Incoming,
    header::{self, HeaderMap, HeaderName, HeaderValue},
};
use strait_config::{authz::WaypointScope, service::ServiceAt};
use strait_identity::Identity;
use strait_route::Target;
use strait_state::Snapshot;
use strait_telemetry::{Peer, Reason};
use strait_trace::{Context as TraceContext, Kind as TraceKind};
use tracing::{debug, warn};

use crate::{
    actions::{Answer, Ops, location_header},
    affinity, authz,
    breaker::{Counters, Kind},
    cors::Verdict,
    extauthz, jwt,
    matching::{self, Match},
    metrics::RequestLabels,
    mirror,
    normalize::Normalization,
    origination::Tls,
    plan::{
        Edits, Plan, endpoint_of, head_of, port_of, request_authority, subset_labels, targets,
        upstream_request,
    },
    pool::{Body, BoxError, Dialing},
    proxy::{Client, Waypoint},
    ratelimit,
    record::{Counted, Log, Metered, Record},
    replay::Replay,
    routes::{Abort, Route, Table},
};

/// Headers that belong to one hop, never passed on.
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::TE,
];

/// How a request ended, for its metrics and log line.
struct Outcome {
    response: Response<Body>,
    /// `virtual service/route` that decided, when one did.
    route: Option<String>,
    flags: &'static str,
    destination: Option<(Peer, Identity)>,
    attempts: u32,
}

pub async fn handle(
    waypoint: Arc<Waypoint>,
    client: Arc<Client>,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let state = waypoint.state.snapshot();
    if !waypoint.serves(&state.config, client.authority) {
        // Served still (its client's agent chose the waypoint while it was
        // bound), and the connection closes after it.
        client.unbound.notify_one();
    }
    let grpc = is_grpc(request.headers());
    let service = state.config.service_at(client.authority.ip());
    let (mut parts, body) = request.into_parts();
    let normalized = normalize_path(waypoint.normalization, &mut parts);
    // The request's span: under the trace the request carries, else under
    // its connection's (the client's agent may have started one).
    let parent = TraceContext::from_headers(&parts.headers).or_else(|| client.trace.clone());
    let operation = match service {
        Some(at) => format!("{}:{}/*", at.host, client.authority.port()),
        None => client.authority.to_string(),
    };
    let mut span = waypoint
        .tracer
        .span(&operation, TraceKind::Server, parent.as_ref());
    if let Some(span) = &mut span {
        span.context()
            .inject(&mut parts.headers, parent.as_ref().map(|p| &p.span_id));
        span.set("http.request.method", parts.method.as_str());
        span.set("url.path", parts.uri.path());
        span.set("source.principal", client.identity.to_string());
    }
    let traceparent = span.as_ref().map(|s| s.context().traceparent());
    let log = Log {
        src: client.addr,
        method: parts.method.clone(),
        path: parts.uri.path().to_string(),
        authority: client.authority,
        route: None,
    };
    let received = Arc::new(AtomicU64::new(0));
    let body = Counted::new(body, received.clone());
    // A path that cannot be normalized is refused, as Envoy does; then the
    // policies attached to this waypoint decide.
    let refused = if normalized {
        let scope = WaypointScope {
            namespace: &waypoint.namespace,
            name: &waypoint.name,
            service: service.map(|at| at.service),
        };
        match jwt::authenticate(&waypoint.jwt_keys, &state.config, scope, &mut parts).await {
            Ok(auth) => {
                let asker = authz::Asker {
                    identity: &client.identity,
                    addr: client.addr,
                    authority: client.authority,
                };
                let verdict = authz::request(
                    &waypoint,
                    &state.config,
                    asker,
                    scope,
                    &parts,
                    auth.as_ref(),
                );
                match authorized(&waypoint, &client, &verdict.custom, &mut parts, grpc).await {
                    Some(refused) => Some(refused),
                    None => (!verdict.decision.allowed).then(|| forbidden(grpc)),
                }
            }
            Err(refused) => Some(unauthenticated(grpc, &refused, &parts)),
        }
    } else {
        Some(reply(StatusCode::BAD_REQUEST, "-", None, 0))
    };
    let outcome = match refused {
        Some(outcome) => outcome,
        None => {
            // The client's turn: held until the answer's head is back.
            let _share = waypoint
                .shares
                .enter((client.addr.ip(), client.identity.clone()))
                .await;
            // Boxed: the request's state machine is large, and the
            // stream's task would otherwise move all of it around.
            Box::pin(forward(
                (&waypoint, &client, &state),
                service,
                (parts, body),
                traceparent.as_deref(),
            ))
            .await
        }
    };
    let (service_host, service_name, service_namespace) = match service {
        Some(at) => (
            at.host.to_string(),
            at.service.name.clone(),
            at.service.namespace.clone(),
        ),
        None => ("unknown".into(), "unknown".into(), "unknown".into()),
    };
    let source = Peer::at(&state, client.addr.ip());
    let (destination, dest_principal) = match &outcome.destination {
        Some((peer, identity)) => (peer.clone(), identity.to_string()),
        None => (Peer::unknown(), "unknown".into()),
    };
    let labels = RequestLabels {
        reporter: "waypoint",
        source_workload: source.workload,
        source_workload_namespace: client.identity.namespace.clone(),
        source_principal: client.identity.to_string(),
        source_app: source.app,
        source_version: source.version,
        source_canonical_service: source.canonical_service,
        source_canonical_revision: source.canonical_revision,
        source_cluster: source.cluster,
        destination_workload: destination.workload,
        destination_workload_namespace: destination.namespace,
        destination_principal: dest_principal,
        destination_app: destination.app,
        destination_version: destination.version,
        destination_canonical_service: destination.canonical_service,
        destination_canonical_revision: destination.canonical_revision,
        destination_cluster: destination.cluster,
        destination_service: service_host,
        destination_service_name: service_name,
        destination_service_namespace: service_namespace,
        request_protocol: if grpc { "grpc" } else { "http" },
        response_code: outcome.response.status().as_u16(),
        grpc_response_status: String::new(),
        response_flags: outcome.flags,
        connection_security_policy: "mutual_tls",
    };
    let record = Record {
        waypoint: waypoint.clone(),
        started,
        labels,
        attempts: outcome.attempts,
        received,
        log: Log {
            route: outcome.route,
            ..log
        },
        span,
    };
    let (head, body) = outcome.response.into_parts();
    let body = Metered::new(body, &head.headers, record).boxed();
    Ok(Response::from_parts(head, body))
}

async fn forward(
    (waypoint, client, state): (&Arc<Waypoint>, &Arc<Client>, &Snapshot),
    service: Option<ServiceAt<'_>>,
    (mut parts, body): (hyper::http::request::Parts, Counted),
    traceparent: Option<&str>,
) -> Outcome {
    // Where the request goes: the service's routes, or the workload the
    // client dialled.
    let plan = match service {
        Some(at) => {
            let table = waypoint
                .tables
                .get(state.generation, &state.config, at.service);
            match choose(waypoint, client, state, at, &parts, &table) {
                Ok(plan) => plan.with_limits(waypoint, state),
                Err(outcome) => return *outcome,
            }
        }
        None => Plan {
            at: None,
            ..Plan::to_service(None, client.authority.port(), None)
        },
    };
    // Session affinity: the request's key, and a cookie to set.
    let mut plan = plan;
    if let Some(hash) = plan.hash {
        let key = affinity::key_of(hash, &parts.headers, parts.uri.query(), client.addr.ip());
        plan.hash_key = key.key;
        if let Some(cookie) = key.set_cookie {
            plan.edits
                .response
                .push(Ops::adding(vec![(header::SET_COOKIE, cookie)]));
        }
    }
    // Rate limits: the route's descriptors against this replica's buckets.
    if let Some(refused) = rate_limited(waypoint, client, state, service, &parts, &plan).await {
        return refused;
    }
    let counters = waypoint.breakers.of(&plan.destination);
    let Some(_request) = counters.take(Kind::Request, plan.limits.max_requests) else {
        debug!(destination = %plan.destination, "http2MaxRequests reached");
        let mut outcome = reply(StatusCode::SERVICE_UNAVAILABLE, "UO", None, 0);
        outcome.route = plan.route;
        return outcome;
    };
    // Fault injection: a delay first, then perhaps an answer of its own.
    let mut delayed = false;
    if let Some((delay, share)) = plan.fault.delay
        && fastrand::f64() < share
    {
        tokio::time::sleep(delay).await;
        delayed = true;
    }
    if let Some((abort, share)) = plan.fault.abort
        && fastrand::f64() < share
    {
        let mut outcome = aborted(abort);
        outcome.route = plan.route;
        if delayed {
            outcome.flags = "DI,FI";
        }
        return outcome;
    }
    plan.edits.request(&mut parts);
    strip_hop_by_hop(&mut parts.headers);
    if !parts.headers.contains_key("x-request-id") {
        let id = format!("{:032x}", fastrand::u128(..));
        if let Ok(v) = HeaderValue::from_str(&id) {
            parts.headers.insert("x-request-id", v);
        }
    }
    let mut body = Replay::new(body);
    // The mirrors' copy of the request, taken before the attempts use it.
    let mirrored_head = (!plan.mirrors.is_empty()).then(|| head_of(&parts));
    let work = Box::pin(attempts(
        (waypoint, client, state),
        (&plan, &counters),
        parts,
        &mut body,
        traceparent,
    ));
    let mut outcome = match plan.timeout {
        Some(limit) => match tokio::time::timeout(limit, work).await {
            Ok(outcome) => outcome,
            Err(_) => reply(StatusCode::GATEWAY_TIMEOUT, "UT", None, 0),
        },
        None => work.await,
    };
    if let Some(head) = mirrored_head {
        for to in &plan.mirrors {
            if fastrand::f64() < to.share {
                mirror::send(
                    waypoint.clone(),
                    client.clone(),
                    to.clone(),
                    head_of(&head),
                    body.take(),
                );
            }
        }
    }
    plan.edits.response(outcome.response.headers_mut());
    outcome.route = plan.route;
    if delayed && outcome.flags == "-" {
        outcome.flags = "DI";
    }
    outcome
}

/// A route's own answer: a redirect or a direct response.
fn answered(answer: &Answer, client: &Client, parts: &hyper::http::request::Parts) -> Outcome {
    match answer {
        Answer::Direct { code, body } => {
            let mut outcome = reply(*code, "-", None, 0);
            *outcome.response.body_mut() = Full::new(body.clone())
                .map_err(|never| match never {})
                .boxed();
            outcome
        }
        Answer::Redirect {
            code,
            uri,
            authority,
            scheme,
            port,
        } => {
            let host = request_authority(parts).unwrap_or_else(|| client.authority.to_string());
            let location = Answer::location(
                &parts.uri,
                &host,
                client.authority.port(),
                (
                    uri.as_deref(),
                    authority.as_deref(),
                    scheme.as_deref(),
                    *port,
                ),
            );
            let mut outcome = reply(*code, "-", None, 0);
            *outcome.response.body_mut() = Empty::new().map_err(|never| match never {}).boxed();
            if let Some((name, value)) = location_header(&location) {
                outcome.response.headers_mut().insert(name, value);
            }
            outcome
        }
    }
}

/// Matches the request to a route and picks its destination.
fn choose<'a>(
    waypoint: &Waypoint,
    client: &Client,
    state: &'a Snapshot,
    at: ServiceAt<'a>,
    parts: &hyper::http::request::Parts,
    table: &Table,
) -> Result<Plan<'a>, Box<Outcome>> {
    let config = &state.config;
    let route: Option<(&str, &Route, Option<String>)> = match table {
        Table::Default => None,
        Table::Broken {
            virtual_service,
            why,
        } => {
            warn!(%virtual_service, why, "VirtualService cannot be applied: refused");
            return Err(Box::new(reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "NR",
                None,
                0,
            )));
        }
        Table::Routes {
            virtual_service,
            routes,
        } => {
            let source = config.workload_by_address(client.addr.ip());
            let authority = parts
                .uri
                .authority()
                .map(|a| a.as_str())
                .or_else(|| {
                    parts
                        .headers
                        .get(header::HOST)
                        .and_then(|h| h.to_str().ok())
                })
                .unwrap_or_default();
            let req = matching::Request {
                method: &parts.method,
                path: parts.uri.path(),
                query: parts.uri.query(),
                authority,
                headers: &parts.headers,
                port: client.authority.port(),
                source_labels: source.map(|w| &w.labels),
                source_namespace: &client.identity.namespace,
            };
            let taken = routes.iter().find_map(|r| {
                let entry = r.matches(&req)?;
                Some((r, entry.and_then(Match::uri_prefix).map(str::to_string)))
            });
            match taken {
                Some((route, prefix)) => Some((virtual_service.as_str(), route, prefix)),
                None => return Err(Box::new(reply(StatusCode::NOT_FOUND, "NR", None, 0))),
            }
        }
    };
    let Some((virtual_service, route, prefix)) = route else {
        return Ok(Plan::to(at, client.authority.port(), None));
    };
    let name = match (virtual_service, route.name.as_deref()) {
        ("", name) => name.unwrap_or("-").to_string(),
        (vs, name) => format!("{vs}/{}", name.unwrap_or("-")),
    };
    // CORS comes first: an allowed origin's preflight is answered here.
    let mut cors = Vec::new();
    match route
        .cors
        .as_ref()
        .map(|c| c.judge(&parts.method, &parts.headers))
    {
        None | Some(Verdict::Pass) => {}
        Some(Verdict::Preflight(headers)) => {
            let mut outcome = reply(StatusCode::OK, "-", None, 0);
            *outcome.response.body_mut() = Empty::new().map_err(|never| match never {}).boxed();
            outcome.response.headers_mut().extend(headers);
            outcome.route = Some(name);
            return Err(Box::new(outcome));
        }
        Some(Verdict::Actual(headers)) => cors = headers,
    }
    let cors = Ops::setting(cors);
    if let Some(answer) = &route.answer {
        let mut outcome = answered(answer, client, parts);
        route.headers.response.apply(outcome.response.headers_mut());
        cors.apply(outcome.response.headers_mut());
        outcome.route = Some(name);
        return Err(Box::new(outcome));
    }
    let Some(dest) = route.pick(fastrand::f64()) else {
        // A route without destinations (redirect, direct response) is not
        // served yet: say so rather than guess.
        return Err(Box::new(reply(StatusCode::NOT_FOUND, "NR", None, 0)));
    };
    let Some(dest_at) = config.find_service(&dest.host) else {
        debug!(host = %dest.host, "route destination is no service");
        return Err(Box::new(reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "UH",
            None,
            0,
        )));
    };
    let port = dest
        .port
        .unwrap_or_else(|| port_of(dest_at, Some(at), client.authority.port()));
    let subset = match &dest.subset {
        None => None,
        Some(name) => match subset_labels(waypoint, config, dest_at, name) {
            Some(labels) => Some(labels),
            None => {
                debug!(host = %dest.host, subset = %name, "no such subset");
                return Err(Box::new(reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "NC",
                    None,
                    0,
                )));
            }
        },
    };
    let edits = Edits {
        path: route.rewrite.path(parts.uri.path(), prefix.as_deref()),
        authority: route.rewrite.authority.clone(),
        request: vec![route.headers.request.clone(), dest.headers.request.clone()],
        response: vec![
            route.headers.response.clone(),
            dest.headers.response.clone(),
            cors,
        ],
    };
    Ok(Plan {
        route: Some(name),
        edits,
        timeout: route.timeout,
        retries: route.retries.clone(),
        fault: route.fault.clone(),
        mirrors: route.mirrors.clone(),
        ..Plan::to(dest_at, port, subset)
    })
}

/// Tries the request up to `1 + retries.attempts` times.
async fn attempts(
    (waypoint, client, state): (&Waypoint, &Client, &Snapshot),
    (plan, counters): (&Plan<'_>, &Arc<Counters>),
    parts: hyper::http::request::Parts,
    body: &mut Replay,
    traceparent: Option<&str>,
) -> Outcome {
    let tries = 1 + plan.retries.attempts;
    let version = plan.version(client.version);
    // The host TLS is originated for (outside the mesh): the request's, as
    // the endpoint gets it.
    let host = request_authority(&parts)
        .map(|a| crate::origination::host_of(&a).to_string())
        .unwrap_or_default();
    let tls = plan.tls.map(|settings| Tls {
        settings,
        host: &host,
        origins: &waypoint.origins,
    });
    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut last = reply(StatusCode::SERVICE_UNAVAILABLE, "UH", None, 0);
    let mut _retry = None;
    for attempt in 1..=tries {
        if attempt > 1 {
            // maxRetries: retries in flight to the destination, together.
            match counters.take(Kind::Retry, plan.limits.max_retries) {
                Some(slot) => _retry = Some(slot),
                None => {
                    debug!(destination = %plan.destination, "maxRetries reached: not retried");
                    return last;
                }
            }
        }
        let endpoints = match targets(waypoint, client, state, plan).await {
            Ok(endpoints) => endpoints,
            Err(reason) => {
                debug!(?reason, "no endpoint");
                return reply(StatusCode::SERVICE_UNAVAILABLE, "UH", None, attempt);
            }
        };
        let failed = |addr: SocketAddr| {
            if waypoint
                .health
                .failure(addr, &endpoints.all, endpoints.outlier, Instant::now())
            {
                warn!(endpoint = %addr, "endpoint set aside");
            }
        };
        // Another endpoint than those tried, when there is one; a retry
        // stays in the first try's locality unless the route lets it roam
        // (`retryRemoteLocalities`).
        let locality_of = |t: &Target| {
            state
                .config
                .workload_by_address(endpoint_of(t).ip())
                .map(|w| &w.locality)
        };
        let first = tried.first().and_then(|addr| {
            state
                .config
                .workload_by_address(addr.ip())
                .map(|w| &w.locality)
        });
        let allowed = |t: &&Target| {
            tried.is_empty() || plan.retries.remote_localities || locality_of(t) == first
        };
        let Some(target) = endpoints
            .targets
            .iter()
            .filter(allowed)
            .find(|t| !tried.contains(&endpoint_of(t)))
            .or_else(|| endpoints.targets.iter().find(allowed))
            .or(endpoints.targets.first())
            .cloned()
        else {
            return reply(StatusCode::SERVICE_UNAVAILABLE, "UH", None, attempt);
        };
        let addr = endpoint_of(&target);
        tried.push(addr);
        let destination = destination_of(state, &target);
        // The client is named only to a destination bound to this waypoint
        // (only there is the claim believed); anywhere else the waypoint
        // goes as itself, as Istio's does.
        let on_behalf = speaks_for_client(waypoint, state, &target).then_some(&client.identity);
        let mut sender = match waypoint
            .upstreams
            .take(
                Dialing {
                    dialer: &waypoint.dialer,
                    origin: waypoint,
                    timeout: waypoint.connect_timeout,
                    tls,
                },
                state,
                &target,
                (version, on_behalf, traceparent),
                (
                    counters,
                    plan.limits.max_connections,
                    plan.limits.max_pending,
                    plan.limits.reuse,
                ),
            )
            .await
        {
            Ok(lease) => lease,
            Err(Reason::Overflow) => {
                debug!(destination = %plan.destination, "http1MaxPendingRequests reached");
                return reply(StatusCode::SERVICE_UNAVAILABLE, "UO", destination, attempt);
            }
            Err(reason) => {
                failed(addr);
                last = reply(StatusCode::SERVICE_UNAVAILABLE, "UF", destination, attempt);
                if plan.retries.on.connect_failure && attempt < tries {
                    debug!(?reason, %addr, "connect failed; retrying");
                    continue;
                }
                return last;
            }
        };
        let Some(send_body) = body.take() else {
            return last;
        };
        let request = upstream_request(&parts, send_body, addr, version);
        let exchange = sender.sender.send(request);
        let result = match plan.retries.per_try_timeout {
            Some(limit) => tokio::time::timeout(limit, exchange).await.ok(),
            None => Some(exchange.await),
        };
        waypoint.upstreams.give_back(
            &target,
            (
                on_behalf.unwrap_or(&waypoint.identity),
                tls.as_ref().map(Tls::name),
            ),
            sender,
            plan.limits.reuse,
        );
        match result {
            None => {
                // A timeout or a broken exchange may be the client's doing
                // (a body that never ends): it counts only under the
                // destination's own outlierDetection.
                if endpoints.five_xx_counts {
                    failed(addr);
                }
                last = reply(StatusCode::GATEWAY_TIMEOUT, "UT", destination, attempt);
                if attempt < tries && body.replayable() {
                    continue;
                }
                return last;
            }
            Some(Err(err)) if body.client_broke() => {
                // The client's body broke off: its doing, not the
                // endpoint's.
                debug!(%err, "the client's body broke");
                return reply(StatusCode::BAD_REQUEST, "DC", destination, attempt);
            }
            Some(Err(err)) => {
                if endpoints.five_xx_counts {
                    failed(addr);
                }
                let refused = err.is_canceled();
                last = reply(StatusCode::SERVICE_UNAVAILABLE, "UC", destination, attempt);
                let retry = (plan.retries.on.reset
                    || (refused && plan.retries.on.refused_stream)
                    || plan.retries.on.connect_failure && refused)
                    && attempt < tries
                    && body.replayable();
                if retry {
                    debug!(%err, %addr, "exchange failed; retrying");
                    continue;
                }
                return last;
            }
            Some(Ok(response)) => {
                let status = response.status().as_u16();
                if status < 500 {
                    waypoint.health.success(addr);
                } else if endpoints.five_xx_counts {
                    failed(addr);
                }
                let grpc_failed = plan
                    .retries
                    .on
                    .grpc(crate::record::grpc_status(response.headers()).as_deref());
                if (plan.retries.on.status(status) || grpc_failed)
                    && attempt < tries
                    && body.replayable()
                {
                    debug!(status, %addr, attempt, "retrying");
                    last = reply(
                        StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
                        "URX",
                        destination,
                        attempt,
                    );
                    continue;
                }
                let (mut head, incoming) = response.into_parts();
                strip_hop_by_hop(&mut head.headers);
                let body: Body = incoming.map_err(|e| Box::new(e) as BoxError).boxed();
                return Outcome {
                    response: Response::from_parts(head, body),
                    route: None,
                    flags: "-",
                    destination,
                    attempts: attempt,
                };
            }
        }
    }
    last
}

/// Whether the destination at `target` is bound to this waypoint, so its
/// agent believes the client the waypoint names; a binding replaced
/// moments ago still counts, as it does there (what the waypoint took
/// while bound is sent as it was taken).
pub fn speaks_for_client(waypoint: &Waypoint, state: &Snapshot, target: &Target) -> bool {
    let identity = &waypoint.identity;
    let bound_in = |config: &strait_config::Config| {
        let bound = |w: &strait_config::Workload| {
            config.waypoint_serves(w, &identity.namespace, &identity.service_account)
        };
        match target {
            Target::Direct(addr) => config
                .workload_by_address(addr.ip())
                .filter(|w| config.enrolled(w))
                .is_some_and(bound),
            // Another network's endpoints: those the gateway may pick.
            Target::Remote(via) => config
                .workloads
                .iter()
                .filter(|w| via.identities.contains(&state.identity(w)))
                .any(bound),
            Target::Waypoint(_) => false,
        }
    };
    waypoint.state.held_recently(bound_in)
}

/// The workload and identity at `target`, for metrics.
fn destination_of(state: &Snapshot, target: &Target) -> Option<(Peer, Identity)> {
    match target {
        Target::Direct(addr) => state
            .mesh_workload(addr.ip())
            .map(|w| (Peer::of(state, w), state.identity(w))),
        _ => None,
    }
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers the Connection header names are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::try_from(n.trim()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        // gRPC needs `te: trailers`.
        if name == header::TE
            && headers
                .get(header::TE)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"))
        {
            continue;
        }
        headers.remove(name);
    }
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// A response the waypoint makes itself.
fn reply(
    status: StatusCode,
    flags: &'static str,
    destination: Option<(Peer, Identity)>,
    attempts: u32,
) -> Outcome {
    let body: Body = Full::new(Bytes::from(format!(
        "{} {}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    )))
    .map_err(|never| match never {})
    .boxed();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    Outcome {
        response,
        route: None,
        flags,
        destination,
        attempts,
    }
}

/// `path` normalized in place (its query kept); false when the result is
/// not a path.
fn normalize_path(mode: Normalization, parts: &mut hyper::http::request::Parts) -> bool {
    let path = match mode.apply(parts.uri.path()) {
        Ok(Some(path)) => path,
        Ok(None) => return true,
        Err(_) => return false,
    };
    if path == parts.uri.path() {
        return true;
    }
    let with_query = match parts.uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path,
    };
    let mut uri = std::mem::take(&mut parts.uri).into_parts();
    uri.path_and_query = with_query.parse().ok();
    match hyper::Uri::from_parts(uri) {
        Ok(normalized) if normalized.path_and_query().is_some() => {
            parts.uri = normalized;
            true
        }
        _ => false,
    }
}

/// AuthorizationPolicy's refusal, as Envoy's RBAC filter answers: 403, or
/// for gRPC a trailers-only PERMISSION_DENIED.
fn forbidden(grpc: bool) -> Outcome {
    const MESSAGE: &str = "RBAC: access denied";
    if grpc {
        let mut outcome = reply(StatusCode::OK, "RBAC", None, 0);
        *outcome.response.body_mut() = Empty::new().map_err(|never| match never {}).boxed();
        let headers = outcome.response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert("grpc-status", HeaderValue::from(7u16));
        headers.insert("grpc-message", HeaderValue::from_static(MESSAGE));
        return outcome;
    }
    let mut outcome = reply(StatusCode::FORBIDDEN, "RBAC", None, 0);
    *outcome.response.body_mut() = Full::new(Bytes::from_static(MESSAGE.as_bytes()))
        .map_err(|never| match never {})
        .boxed();
    outcome
}

/// The answer for a request the rate limits refuse, if they do.
async fn rate_limited(
    waypoint: &Waypoint,
    client: &Client,
    state: &Snapshot,
    service: Option<ServiceAt<'_>>,
    parts: &hyper::http::request::Parts,
    plan: &Plan<'_>,
) -> Option<Outcome> {
    if state.config.rate_limit_filters.is_empty() {
        return None;
    }
    let scope = WaypointScope {
        namespace: &waypoint.namespace,
        name: &waypoint.name,
        service: service.map(|at| at.service),
    };
    let authority = request_authority(parts).unwrap_or_default();
    let request = ratelimit::Request {
        headers: &parts.headers,
        path: parts.uri.path(),
        method: parts.method.as_str(),
        authority: &authority,
        remote: client.addr.ip(),
        vhost: service.map(|at| format!("{}:{}", at.host, client.authority.port())),
        route: plan.route.as_deref(),
        source_cluster: &waypoint.name,
        destination_cluster: &plan.destination,
    };
    let refusal = ratelimit::check((waypoint, client), &state.config, scope, &request)
        .await
        .err()?;
    waypoint.metrics.rate_limited(&refusal.filter);
    let status = StatusCode::from_u16(refusal.status).unwrap_or(StatusCode::TOO_MANY_REQUESTS);
    let mut outcome = reply(status, "RL", None, 0);
    outcome.route = plan.route.clone();
    for (name, value) in refusal.headers {
        outcome.response.headers_mut().append(name, value);
    }
    Some(outcome)
}

/// Puts the request to the external authorizer of each CUSTOM policy that
/// matched it; the first refusal is the answer. An authorizer the mesh
/// config does not name refuses (a policy must not be skipped).
async fn authorized(
    waypoint: &Waypoint,
    client: &Client,
    custom: &[(String, String)],
    parts: &mut hyper::http::request::Parts,
    grpc: bool,
) -> Option<Outcome> {
    for (policy, provider) in custom {
        let Some(authorizer) = waypoint.authorizers.get(provider) else {
            debug!(%policy, %provider, "CUSTOM policy names an unknown authorizer: refused");
            waypoint.metrics.denied(Some(policy));
            return Some(forbidden(grpc));
        };
        match extauthz::check(waypoint, client, authorizer, parts).await {
            extauthz::Answer::Allow { set, remove } => {
                extauthz::Answer::edit(set, remove, &mut parts.headers);
            }
            extauthz::Answer::Deny {
                status,
                headers,
                body,
            } => {
                waypoint.metrics.denied(Some(policy));
                let mut outcome = reply(status, "UAEX", None, 0);
                if grpc {
                    *outcome.response.status_mut() = StatusCode::OK;
                    *outcome.response.body_mut() =
                        Empty::new().map_err(|never| match never {}).boxed();
                    let h = outcome.response.headers_mut();
                    h.insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/grpc"),
                    );
                    h.insert("grpc-status", HeaderValue::from(grpc_code_of(status)));
                } else {
                    *outcome.response.body_mut() =
                        Full::new(body).map_err(|never| match never {}).boxed();
                    for (name, value) in headers {
                        outcome.response.headers_mut().append(name, value);
                    }
                }
                return Some(outcome);
            }
        }
    }
    None
}

/// The gRPC status Envoy gives a local answer of `status`.
fn grpc_code_of(status: StatusCode) -> u16 {
    match status.as_u16() {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502..=504 => 14,
        _ => 2,
    }
}

/// RequestAuthentication's refusal, as Envoy's `jwt_authn` answers: 401
/// saying why (403 for a token of another audience), or for gRPC a
/// trailers-only UNAUTHENTICATED (PERMISSION_DENIED).
fn unauthenticated(
    grpc: bool,
    refused: &jwt::Refused,
    parts: &hyper::http::request::Parts,
) -> Outcome {
    let why = refused.why.as_str();
    if grpc {
        let mut outcome = reply(StatusCode::OK, "UAEX", None, 0);
        *outcome.response.body_mut() = Empty::new().map_err(|never| match never {}).boxed();
        let headers = outcome.response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        let code: u16 = if refused.forbidden { 7 } else { 16 };
        headers.insert("grpc-status", HeaderValue::from(code));
        if let Ok(message) = HeaderValue::from_str(why) {
            headers.insert("grpc-message", message);
        }
        return outcome;
    }
    let status = if refused.forbidden {
        StatusCode::FORBIDDEN
    } else {
        StatusCode::UNAUTHORIZED
    };
    let mut outcome = reply(status, "UAEX", None, 0);
    *outcome.response.body_mut() = Full::new(Bytes::from(why.to_string()))
        .map_err(|never| match never {})
        .boxed();
    let host = parts
        .uri
        .authority()
        .map(|a| a.to_string())
        .or_else(|| {
            parts
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_default();
    let challenge = format!(
        "Bearer realm=\"http://{host}{}\", error=\"invalid_token\"",
        parts.uri.path()
    );
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        outcome
            .response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    outcome
}

/// The answer an injected abort gives instead of the destination's.
fn aborted(abort: Abort) -> Outcome {
    match abort {
        Abort::Http(code) => reply(
            StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
            "FI",
            None,
            0,
        ),
        Abort::Grpc(code) => {
            // A trailers-only gRPC answer: HTTP 200 with the status.
            let mut outcome = reply(StatusCode::OK, "FI", None, 0);
            let response = &mut outcome.response;
            *response.body_mut() = Empty::new().map_err(|never| match never {}).boxed();
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            headers.insert("grpc-status", HeaderValue::from(u16::from(code)));
            headers.insert(
                "grpc-message",
                HeaderValue::from_static("fault filter abort"),
            );
            outcome
        }
    }
}
