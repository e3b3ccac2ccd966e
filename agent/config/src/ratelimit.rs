//! Rate limits as Istio users write them: EnvoyFilter patches that insert
//! Envoy's `envoy.filters.http.local_ratelimit` (token buckets in each
//! proxy) or `envoy.filters.http.ratelimit` (a rate-limit service shared
//! by all), and route or virtual-host `rate_limits` whose actions make the
//! descriptors. An EnvoyFilter is read into [`RateLimitFilter`], what a
//! waypoint applies; any patch strait does not apply is refused, naming
//! the patch and the field, never dropped in silence.
use std::time::Duration;

use serde::Serialize;
use serde_json::Value as Json;

use crate::{Config, Labels, Named, authz::WaypointScope, manifest::security::TargetRef};

/// What one EnvoyFilter asks of the waypoints it selects.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RateLimitFilter {
    pub target_refs: Vec<TargetRef>,
    pub workload_selector: Option<Labels>,
    pub local: Option<LocalRateLimit>,
    pub global: Option<GlobalRateLimit>,
    pub routes: Vec<RouteLimits>,
}

/// Envoy's `LocalRateLimit`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LocalRateLimit {
    /// The bucket every request draws from (absent: descriptors only).
    pub bucket: Option<TokenBucket>,
    /// Shares (0 to 1) of requests checked, and of those over the limit
    /// refused (the rest only counted).
    pub enabled: f64,
    pub enforced: f64,
    /// Added to refused answers.
    pub response_headers: Vec<(String, String)>,
    /// The refusal's status (429 unless `status`).
    pub status: u16,
    pub descriptors: Vec<LocalDescriptor>,
    /// `enable_x_ratelimit_headers: DRAFT_VERSION_03`.
    pub x_ratelimit_headers: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct TokenBucket {
    pub max_tokens: u64,
    pub tokens_per_fill: u64,
    pub fill_interval: Duration,
}

/// A descriptor with its own bucket.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LocalDescriptor {
    pub entries: Vec<(String, String)>,
    pub bucket: TokenBucket,
}

/// Envoy's `RateLimit` filter: descriptors put to a rate-limit service.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GlobalRateLimit {
    pub domain: String,
    pub failure_mode_deny: bool,
    pub timeout: Duration,
    /// The rate-limit service's host and port (from its cluster name,
    /// `outbound|PORT||HOST`, or `authority`).
    pub service: String,
    pub port: u16,
    pub x_ratelimit_headers: bool,
}

/// `rate_limits` (and a local filter's per-route settings) for a route or
/// a virtual host.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RouteLimits {
    /// The virtual host (`host:port`), or any.
    pub vhost: Option<String>,
    /// The route's name, or any.
    pub route: Option<String>,
    pub rate_limits: Vec<Vec<Action>>,
    pub local: Option<LocalRateLimit>,
}

/// One `rate_limits` action: an entry of the request's descriptor.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum Action {
    RemoteAddress,
    SourceCluster,
    DestinationCluster,
    RequestHeaders {
        header: String,
        key: String,
        skip_if_absent: bool,
    },
    GenericKey {
        key: String,
        value: String,
    },
    HeaderValueMatch {
        key: String,
        value: String,
        expect_match: bool,
        headers: Vec<HeaderMatch>,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HeaderMatch {
    pub name: String,
    pub kind: MatchKind,
    pub invert: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum MatchKind {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
    Present(bool),
}

impl Config {
    /// The EnvoyFilters a waypoint applies to a request of `scope`: those
    /// whose `targetRefs` attach to it (its Gateway, the request's Service,
    /// the `istio-waypoint` GatewayClass from the root namespace), whose
    /// `workloadSelector` matches its instance's `labels`, or (with
    /// neither) every waypoint of their namespace (of the mesh, from the
    /// root namespace).
    pub fn waypoint_rate_limits<'a>(
        &'a self,
        scope: WaypointScope<'a>,
        labels: &'a Labels,
    ) -> impl Iterator<Item = &'a Named<RateLimitFilter>> + 'a {
        self.rate_limit_filters.iter().filter(move |f| {
            let in_scope = f.namespace == scope.namespace || f.namespace == self.root_namespace;
            match (&f.spec.workload_selector, f.spec.target_refs.is_empty()) {
                (_, false) => self.attached(&f.namespace, f.spec.target_refs.iter(), scope),
                (Some(selector), true) => {
                    in_scope && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
                }
                (None, true) => in_scope,
            }
        })
    }
}

pub const LOCAL: &str = "envoy.filters.http.local_ratelimit";
pub const GLOBAL: &str = "envoy.filters.http.ratelimit";
const LOCAL_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit";
const GLOBAL_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit";
const TYPED_STRUCT: [&str; 2] = [
    "type.googleapis.com/udpa.type.v1.TypedStruct",
    "type.googleapis.com/xds.type.v3.TypedStruct",
];

/// A problem at a field path of the object.
pub type Refusal = (String, String);

fn refuse<T>(path: impl Into<String>, why: impl Into<String>) -> Result<T, Refusal> {
    Err((path.into(), why.into()))
}

/// Reads an EnvoyFilter's `spec` (as JSON) into what a waypoint applies.
pub fn read(spec: &Json) -> Result<RateLimitFilter, Refusal> {
    let mut out = RateLimitFilter::default();
    for (key, value) in object(spec, "spec")? {
        match key.as_str() {
            "workloadSelector" => {
                let labels = value
                    .get("labels")
                    .cloned()
                    .map(serde_json::from_value::<Labels>)
                    .transpose()
                    .or_else(|e| refuse("spec.workloadSelector.labels", e.to_string()))?;
                out.workload_selector = Some(labels.unwrap_or_default());
            }
            "targetRefs" | "targetRef" => {
                let refs = match value {
                    Json::Array(list) => list.clone(),
                    other => vec![other.clone()],
                };
                for (i, r) in refs.into_iter().enumerate() {
                    let t: TargetRef = serde_json::from_value(r)
                        .or_else(|e| refuse(format!("spec.{key}[{i}]"), e.to_string()))?;
                    out.target_refs.push(t);
                }
            }
            "priority" => {}
            "configPatches" => {
                let patches = value.as_array().ok_or((
                    "spec.configPatches".to_string(),
                    "is not a list".to_string(),
                ))?;
                for (i, patch) in patches.iter().enumerate() {
                    read_patch(&mut out, patch, &format!("spec.configPatches[{i}]"))?;
                }
            }
            other => return refuse(format!("spec.{other}"), "is not an EnvoyFilter field"),
        }
    }
    if out.local.is_none() && out.global.is_none() && out.routes.is_empty() {
        return refuse("spec.configPatches", "is required: the patches to apply");
    }
    Ok(out)
}

fn object<'a>(value: &'a Json, path: &str) -> Result<&'a serde_json::Map<String, Json>, Refusal> {
    value
        .as_object()
        .ok_or_else(|| (path.to_string(), "is not an object".to_string()))
}

fn text<'a>(value: &'a Json, key: &str, path: &str) -> Result<Option<&'a str>, Refusal> {
    match value.get(key) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) => Ok(Some(s)),
        Some(_) => refuse(format!("{path}.{key}"), "is not a string"),
    }
}

fn read_patch(out: &mut RateLimitFilter, patch: &Json, path: &str) -> Result<(), Refusal> {
    for key in object(patch, path)?.keys() {
        if !matches!(key.as_str(), "applyTo" | "match" | "patch") {
            return refuse(format!("{path}.{key}"), "is not a field of a config patch");
        }
    }
    let apply_to = text(patch, "applyTo", path)?.unwrap_or("INVALID");
    let matched = patch.get("match").cloned().unwrap_or(Json::Null);
    let context = text(&matched, "context", &format!("{path}.match"))?.unwrap_or("ANY");
    if !matches!(context, "ANY" | "SIDECAR_INBOUND" | "GATEWAY") {
        return refuse(
            format!("{path}.match.context"),
            format!(
                "{context} is not applied: a waypoint takes ANY, SIDECAR_INBOUND or GATEWAY patches"
            ),
        );
    }
    let body = patch.get("patch").cloned().unwrap_or(Json::Null);
    let operation = text(&body, "operation", &format!("{path}.patch"))?.unwrap_or("INVALID");
    let value = body.get("value").cloned().unwrap_or(Json::Null);
    let at = format!("{path}.patch.value");
    match apply_to {
        "HTTP_FILTER" => {
            if !matches!(
                operation,
                "INSERT_BEFORE" | "INSERT_AFTER" | "INSERT_FIRST" | "ADD"
            ) {
                return refuse(
                    format!("{path}.patch.operation"),
                    format!("{operation} is not applied to an HTTP filter: insert or add one"),
                );
            }
            let name = text(&value, "name", &at)?.unwrap_or("");
            let config = typed_config(&value, &format!("{at}.typed_config"))?;
            match name {
                LOCAL => {
                    expect_type(&config, LOCAL_TYPE, &format!("{at}.typed_config"))?;
                    out.local = Some(local(&config.1, &format!("{at}.typed_config"))?);
                }
                GLOBAL => {
                    expect_type(&config, GLOBAL_TYPE, &format!("{at}.typed_config"))?;
                    out.global = Some(global(&config.1, &format!("{at}.typed_config"))?);
                }
                other => {
                    return refuse(
                        format!("{at}.name"),
                        format!("{other:?} is not a filter strait applies ({LOCAL}, {GLOBAL})"),
                    );
                }
            }
        }
        "HTTP_ROUTE" | "VIRTUAL_HOST" => {
            if operation != "MERGE" {
                return refuse(
                    format!("{path}.patch.operation"),
                    format!(
                        "{operation} is not applied to a {apply_to}: MERGE rate_limits into it"
                    ),
                );
            }
            let route_config = matched
                .get("routeConfiguration")
                .cloned()
                .unwrap_or(Json::Null);
            let vhost = route_config.get("vhost").cloned().unwrap_or(Json::Null);
            let vhost_name = text(
                &vhost,
                "name",
                &format!("{path}.match.routeConfiguration.vhost"),
            )?
            .filter(|n| !n.is_empty())
            .map(str::to_string);
            let route = vhost.get("route").cloned().unwrap_or(Json::Null);
            let route_name = text(
                &route,
                "name",
                &format!("{path}.match.routeConfiguration.vhost.route"),
            )?
            .filter(|n| !n.is_empty())
            .map(str::to_string);
            let mut limits = RouteLimits {
                vhost: vhost_name,
                route: if apply_to == "HTTP_ROUTE" {
                    route_name
                } else {
                    None
                },
                ..RouteLimits::default()
            };
            // HTTP_ROUTE: {route: {rate_limits}, typed_per_filter_config};
            // VIRTUAL_HOST: {rate_limits, typed_per_filter_config}.
            for (key, v) in object(&value, &at)? {
                match (apply_to, key.as_str()) {
                    ("HTTP_ROUTE", "route") => {
                        for (k, inner) in object(v, &format!("{at}.route"))? {
                            if k != "rate_limits" {
                                return refuse(
                                    format!("{at}.route.{k}"),
                                    "is not applied: strait merges rate_limits into routes",
                                );
                            }
                            limits.rate_limits =
                                rate_limits(inner, &format!("{at}.route.rate_limits"))?;
                        }
                    }
                    ("VIRTUAL_HOST", "rate_limits") => {
                        limits.rate_limits = rate_limits(v, &format!("{at}.rate_limits"))?;
                    }
                    (_, "typed_per_filter_config") => {
                        for (filter, config) in object(v, &format!("{at}.typed_per_filter_config"))?
                        {
                            let p = format!("{at}.typed_per_filter_config.{filter}");
                            if filter != LOCAL {
                                return refuse(
                                    p,
                                    "is not applied per route: only the local rate limit is",
                                );
                            }
                            let config = typed_config_of(config, &p)?;
                            expect_type(&config, LOCAL_TYPE, &p)?;
                            limits.local = Some(local(&config.1, &p)?);
                        }
                    }
                    (_, other) => {
                        return refuse(
                            format!("{at}.{other}"),
                            format!(
                                "is not applied to a {apply_to}: strait merges rate_limits and typed_per_filter_config"
                            ),
                        );
                    }
                }
            }
            out.routes.push(limits);
        }
        other => {
            return refuse(
                format!("{path}.applyTo"),
                format!(
                    "{other} is not applied: strait applies HTTP_FILTER (the rate-limit filters), HTTP_ROUTE and VIRTUAL_HOST (their rate_limits)"
                ),
            );
        }
    }
    Ok(())
}

/// A filter's `typed_config`: its type URL and its fields, through a
/// TypedStruct or not.
fn typed_config(value: &Json, path: &str) -> Result<(String, Json), Refusal> {
    match value.get("typed_config") {
        Some(config) => typed_config_of(config, path),
        None => refuse(path, "is required"),
    }
}

fn typed_config_of(config: &Json, path: &str) -> Result<(String, Json), Refusal> {
    let kind = text(config, "@type", path)?.unwrap_or("");
    if TYPED_STRUCT.contains(&kind) {
        let url = text(config, "type_url", path)?.unwrap_or("").to_string();
        let fields = config
            .get("value")
            .cloned()
            .unwrap_or(Json::Object(Default::default()));
        return Ok((url, fields));
    }
    let mut fields = config.clone();
    if let Json::Object(map) = &mut fields {
        map.remove("@type");
    }
    Ok((kind.to_string(), fields))
}

fn expect_type(config: &(String, Json), want: &str, path: &str) -> Result<(), Refusal> {
    if config.0 == want {
        Ok(())
    } else {
        refuse(path, format!("{:?} is not {want}", config.0))
    }
}

fn local(fields: &Json, path: &str) -> Result<LocalRateLimit, Refusal> {
    let mut out = LocalRateLimit {
        enabled: 0.0,
        enforced: 0.0,
        status: 429,
        ..LocalRateLimit::default()
    };
    for (key, v) in object(fields, path)? {
        let p = format!("{path}.{key}");
        match key.as_str() {
            "stat_prefix" => {}
            "token_bucket" => out.bucket = Some(bucket(v, &p)?),
            "filter_enabled" => out.enabled = fraction(v, &p)?,
            "filter_enforced" => out.enforced = fraction(v, &p)?,
            "response_headers_to_add" => out.response_headers = headers(v, &p)?,
            "status" => {
                out.status = v
                    .get("code")
                    .and_then(status_code)
                    .ok_or((p.clone(), "is not an HTTP status".to_string()))?
            }
            "descriptors" => {
                for (i, d) in v
                    .as_array()
                    .ok_or((p.clone(), "is not a list".into()))?
                    .iter()
                    .enumerate()
                {
                    let dp = format!("{p}[{i}]");
                    let mut entries = Vec::new();
                    for (j, e) in d
                        .get("entries")
                        .and_then(Json::as_array)
                        .ok_or((format!("{dp}.entries"), "is required".to_string()))?
                        .iter()
                        .enumerate()
                    {
                        let ep = format!("{dp}.entries[{j}]");
                        let key = text(e, "key", &ep)?
                            .ok_or((format!("{ep}.key"), "is required".to_string()))?;
                        let value = text(e, "value", &ep)?.unwrap_or("");
                        entries.push((key.to_string(), value.to_string()));
                    }
                    let b = bucket(
                        d.get("token_bucket").unwrap_or(&Json::Null),
                        &format!("{dp}.token_bucket"),
                    )?;
                    out.descriptors.push(LocalDescriptor { entries, bucket: b });
                }
            }
            "enable_x_ratelimit_headers" => {
                out.x_ratelimit_headers = match v.as_str() {
                    Some("DRAFT_VERSION_03") => true,
                    Some("OFF") => false,
                    _ => return refuse(p, "is not OFF or DRAFT_VERSION_03"),
                }
            }
            other => {
                return refuse(
                    p,
                    format!("{other} is not applied by strait's local rate limit"),
                );
            }
        }
    }
    if out.bucket.is_none() && out.descriptors.is_empty() {
        return refuse(
            format!("{path}.token_bucket"),
            "is required (or descriptors with their own)",
        );
    }
    Ok(out)
}

fn status_code(v: &Json) -> Option<u16> {
    let code = match v {
        Json::Number(n) => n.as_u64()?,
        Json::String(s) => s.parse().ok().or(match s.as_str() {
            "TooManyRequests" => Some(429),
            "ServiceUnavailable" => Some(503),
            "Forbidden" => Some(403),
            _ => None,
        })?,
        _ => return None,
    };
    u16::try_from(code).ok().filter(|c| (400..600).contains(c))
}

fn global(fields: &Json, path: &str) -> Result<GlobalRateLimit, Refusal> {
    let mut out = GlobalRateLimit {
        domain: String::new(),
        failure_mode_deny: false,
        timeout: Duration::from_millis(20),
        service: String::new(),
        port: 0,
        x_ratelimit_headers: false,
    };
    for (key, v) in object(fields, path)? {
        let p = format!("{path}.{key}");
        match key.as_str() {
            "domain" => out.domain = text(fields, "domain", path)?.unwrap_or("").to_string(),
            "failure_mode_deny" => {
                out.failure_mode_deny = v.as_bool().ok_or((p.clone(), "is not a boolean".into()))?
            }
            "timeout" => out.timeout = proto_duration(v, &p)?,
            "stage" | "request_type" if v.as_u64() == Some(0) || v.as_str() == Some("both") => {}
            "rate_limit_service" => {
                for (k, inner) in object(v, &p)? {
                    match k.as_str() {
                        "transport_api_version" => {
                            if inner.as_str() != Some("V3") {
                                return refuse(format!("{p}.{k}"), "is not V3");
                            }
                        }
                        "grpc_service" => {
                            let gp = format!("{p}.grpc_service");
                            let envoy_grpc = inner.get("envoy_grpc").ok_or((
                                format!("{gp}.envoy_grpc"),
                                "is required (the rate-limit service's cluster)".to_string(),
                            ))?;
                            let ep = format!("{gp}.envoy_grpc");
                            let cluster = text(envoy_grpc, "cluster_name", &ep)?.unwrap_or("");
                            let authority = text(envoy_grpc, "authority", &ep)?;
                            let (host, port) = service_of(cluster, authority).ok_or((
                                format!("{ep}.cluster_name"),
                                format!("{cluster:?} does not name a service: outbound|PORT||HOST"),
                            ))?;
                            out.service = host;
                            out.port = port;
                            if let Some(t) = inner.get("timeout") {
                                out.timeout = proto_duration(t, &format!("{gp}.timeout"))?;
                            }
                        }
                        other => return refuse(format!("{p}.{other}"), "is not applied"),
                    }
                }
            }
            "enable_x_ratelimit_headers" => {
                out.x_ratelimit_headers = match v.as_str() {
                    Some("DRAFT_VERSION_03") => true,
                    Some("OFF") => false,
                    _ => return refuse(p, "is not OFF or DRAFT_VERSION_03"),
                }
            }
            other => {
                return refuse(
                    p,
                    format!("{other} is not applied by strait's rate-limit client"),
                );
            }
        }
    }
    if out.domain.is_empty() {
        return refuse(format!("{path}.domain"), "is required");
    }
    if out.service.is_empty() {
        return refuse(format!("{path}.rate_limit_service"), "is required");
    }
    Ok(out)
}

/// `outbound|8081||ratelimit.default.svc.cluster.local` → the host and
/// port; `authority` (`host[:port]`) stands in when the name is not one.
fn service_of(cluster: &str, authority: Option<&str>) -> Option<(String, u16)> {
    let parts: Vec<&str> = cluster.split('|').collect();
    if let [_, port, _, host] = parts[..]
        && let Ok(port) = port.parse::<u16>()
        && !host.is_empty()
        && port != 0
    {
        return Some((host.to_string(), port));
    }
    let (host, port) = authority?.rsplit_once(':')?;
    Some((host.to_string(), port.parse().ok().filter(|p| *p != 0)?))
}

fn bucket(v: &Json, path: &str) -> Result<TokenBucket, Refusal> {
    let number = |key: &str, default: Option<u64>| -> Result<u64, Refusal> {
        match v.get(key) {
            None | Some(Json::Null) => {
                default.ok_or((format!("{path}.{key}"), "is required".into()))
            }
            Some(n) => n
                .as_u64()
                .or_else(|| n.as_str()?.parse().ok())
                .filter(|n| *n > 0 && *n <= u64::from(u32::MAX))
                .ok_or((
                    format!("{path}.{key}"),
                    "is not a whole number above 0".into(),
                )),
        }
    };
    object(v, path)?;
    let max_tokens = number("max_tokens", None)?;
    let tokens_per_fill = number("tokens_per_fill", Some(1))?;
    let fill_interval = proto_duration(
        v.get("fill_interval").unwrap_or(&Json::Null),
        &format!("{path}.fill_interval"),
    )?;
    if fill_interval < Duration::from_millis(50) {
        return refuse(
            format!("{path}.fill_interval"),
            "is under 50ms, Envoy's least",
        );
    }
    Ok(TokenBucket {
        max_tokens,
        tokens_per_fill,
        fill_interval,
    })
}

/// A protobuf Duration as JSON writes it: `"1s"`, `"0.25s"`.
fn proto_duration(v: &Json, path: &str) -> Result<Duration, Refusal> {
    let parsed = v
        .as_str()
        .and_then(|s| s.strip_suffix('s'))
        .and_then(|n| n.parse::<f64>().ok())
        .filter(|n| n.is_finite() && *n >= 0.0 && *n < 1e9);
    match parsed {
        Some(seconds) => Ok(Duration::from_secs_f64(seconds)),
        None => refuse(path, "is not a duration in seconds (\"1s\", \"0.5s\")"),
    }
}

/// A RuntimeFractionalPercent's `default_value` as a share.
fn fraction(v: &Json, path: &str) -> Result<f64, Refusal> {
    let value = v.get("default_value").unwrap_or(v);
    let numerator = value.get("numerator").and_then(Json::as_u64).unwrap_or(0) as f64;
    let denominator = match value
        .get("denominator")
        .and_then(Json::as_str)
        .unwrap_or("HUNDRED")
    {
        "HUNDRED" => 100.0,
        "TEN_THOUSAND" => 10_000.0,
        "MILLION" => 1_000_000.0,
        other => {
            return refuse(
                format!("{path}.default_value.denominator"),
                format!("{other} is not HUNDRED, TEN_THOUSAND or MILLION"),
            );
        }
    };
    Ok((numerator / denominator).min(1.0))
}

fn headers(v: &Json, path: &str) -> Result<Vec<(String, String)>, Refusal> {
    let mut out = Vec::new();
    for (i, h) in v
        .as_array()
        .ok_or((path.to_string(), "is not a list".into()))?
        .iter()
        .enumerate()
    {
        let p = format!("{path}[{i}].header");
        let header = h
            .get("header")
            .ok_or((p.clone(), "is required".to_string()))?;
        let key =
            text(header, "key", &p)?.ok_or((format!("{p}.key"), "is required".to_string()))?;
        let value = text(header, "value", &p)?.unwrap_or("");
        out.push((key.to_ascii_lowercase(), value.to_string()));
    }
    Ok(out)
}

fn rate_limits(v: &Json, path: &str) -> Result<Vec<Vec<Action>>, Refusal> {
    let mut out = Vec::new();
    for (i, limit) in v
        .as_array()
        .ok_or((path.to_string(), "is not a list".into()))?
        .iter()
        .enumerate()
    {
        let lp = format!("{path}[{i}]");
        for key in object(limit, &lp)?.keys() {
            if key != "actions" {
                return refuse(
                    format!("{lp}.{key}"),
                    "is not applied: strait takes a rate limit's actions",
                );
            }
        }
        let mut actions = Vec::new();
        for (j, action) in limit
            .get("actions")
            .and_then(Json::as_array)
            .ok_or((format!("{lp}.actions"), "is required".to_string()))?
            .iter()
            .enumerate()
        {
            actions.push(self::action(action, &format!("{lp}.actions[{j}]"))?);
        }
        out.push(actions);
    }
    Ok(out)
}

fn action(v: &Json, path: &str) -> Result<Action, Refusal> {
    let map = object(v, path)?;
    let [(kind, body)] = map.iter().collect::<Vec<_>>()[..] else {
        return refuse(path, "must name exactly one action");
    };
    let p = format!("{path}.{kind}");
    Ok(match kind.as_str() {
        "remote_address" => Action::RemoteAddress,
        "source_cluster" => Action::SourceCluster,
        "destination_cluster" => Action::DestinationCluster,
        "request_headers" => Action::RequestHeaders {
            header: text(body, "header_name", &p)?
                .ok_or((format!("{p}.header_name"), "is required".to_string()))?
                .to_ascii_lowercase(),
            key: text(body, "descriptor_key", &p)?
                .ok_or((format!("{p}.descriptor_key"), "is required".to_string()))?
                .to_string(),
            skip_if_absent: body
                .get("skip_if_absent")
                .and_then(Json::as_bool)
                .unwrap_or(false),
        },
        "generic_key" => Action::GenericKey {
            key: text(body, "descriptor_key", &p)?
                .unwrap_or("generic_key")
                .to_string(),
            value: text(body, "descriptor_value", &p)?
                .ok_or((format!("{p}.descriptor_value"), "is required".to_string()))?
                .to_string(),
        },
        "header_value_match" => {
            let mut matches = Vec::new();
            for (i, h) in body
                .get("headers")
                .and_then(Json::as_array)
                .ok_or((format!("{p}.headers"), "is required".to_string()))?
                .iter()
                .enumerate()
            {
                matches.push(header_match(h, &format!("{p}.headers[{i}]"))?);
            }
            Action::HeaderValueMatch {
                key: text(body, "descriptor_key", &p)?
                    .unwrap_or("header_match")
                    .to_string(),
                value: text(body, "descriptor_value", &p)?
                    .ok_or((format!("{p}.descriptor_value"), "is required".to_string()))?
                    .to_string(),
                expect_match: body
                    .get("expect_match")
                    .and_then(Json::as_bool)
                    .unwrap_or(true),
                headers: matches,
            }
        }
        other => {
            return refuse(
                p,
                format!(
                    "{other} is not an action strait takes (remote_address, source_cluster, destination_cluster, request_headers, generic_key, header_value_match)"
                ),
            );
        }
    })
}

fn header_match(v: &Json, path: &str) -> Result<HeaderMatch, Refusal> {
    let name = text(v, "name", path)?
        .ok_or((format!("{path}.name"), "is required".to_string()))?
        .to_ascii_lowercase();
    let invert = v
        .get("invert_match")
        .and_then(Json::as_bool)
        .unwrap_or(false);
    let string = |key: &str| text(v, key, path).map(|s| s.map(str::to_string));
    let kind = if let Some(s) = string("exact_match")? {
        MatchKind::Exact(s)
    } else if let Some(s) = string("prefix_match")? {
        MatchKind::Prefix(s)
    } else if let Some(s) = string("suffix_match")? {
        MatchKind::Suffix(s)
    } else if let Some(s) = string("contains_match")? {
        MatchKind::Contains(s)
    } else if let Some(m) = v.get("string_match") {
        let sp = format!("{path}.string_match");
        if let Some(s) = text(m, "exact", &sp)? {
            MatchKind::Exact(s.to_string())
        } else if let Some(s) = text(m, "prefix", &sp)? {
            MatchKind::Prefix(s.to_string())
        } else if let Some(s) = text(m, "suffix", &sp)? {
            MatchKind::Suffix(s.to_string())
        } else if let Some(s) = text(m, "contains", &sp)? {
            MatchKind::Contains(s.to_string())
        } else {
            return refuse(sp, "is not an exact, prefix, suffix or contains match");
        }
    } else if let Some(p) = v.get("present_match") {
        MatchKind::Present(p.as_bool().unwrap_or(true))
    } else {
        return refuse(
            path,
            "names no match strait applies (exact, prefix, suffix, contains, present)",
        );
    };
    Ok(HeaderMatch { name, kind, invert })
}

impl MatchKind {
    /// Whether a header's value (`None`: absent) matches.
    pub fn matches(&self, value: Option<&str>) -> bool {
        match (self, value) {
            (MatchKind::Present(want), v) => v.is_some() == *want,
            (_, None) => false,
            (MatchKind::Exact(s), Some(v)) => v == s,
            (MatchKind::Prefix(s), Some(v)) => v.starts_with(s.as_str()),
            (MatchKind::Suffix(s), Some(v)) => v.ends_with(s.as_str()),
            (MatchKind::Contains(s), Some(v)) => v.contains(s.as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> Json {
        crate::yaml::parse(yaml).unwrap().to_json()
    }

    /// Istio's documented local rate limit, and its route-level variant.
    #[test]
    fn the_documented_filters_are_read() {
        let filter = read(&spec(
            r#"
targetRefs:
- {kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}
configPatches:
- applyTo: HTTP_FILTER
  match:
    context: SIDECAR_INBOUND
    listener:
      filterChain:
        filter:
          name: envoy.filters.network.http_connection_manager
  patch:
    operation: INSERT_BEFORE
    value:
      name: envoy.filters.http.local_ratelimit
      typed_config:
        "@type": type.googleapis.com/udpa.type.v1.TypedStruct
        type_url: type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
        value:
          stat_prefix: http_local_rate_limiter
          token_bucket: {max_tokens: 1000, tokens_per_fill: 10, fill_interval: 0.1s}
          filter_enabled:
            runtime_key: local_rate_limit_enabled
            default_value: {numerator: 100, denominator: HUNDRED}
          filter_enforced:
            runtime_key: local_rate_limit_enforced
            default_value: {numerator: 100, denominator: HUNDRED}
          response_headers_to_add:
          - append: false
            header: {key: x-local-rate-limit, value: 'true'}
- applyTo: HTTP_ROUTE
  match:
    context: SIDECAR_INBOUND
    routeConfiguration:
      vhost:
        name: "inbound|http|9080"
        route: {action: ANY}
  patch:
    operation: MERGE
    value:
      route:
        rate_limits:
        - actions:
          - header_value_match:
              descriptor_value: path
              headers: [{name: ":path", prefix_match: /foo}]
"#,
        ))
        .unwrap();
        let local = filter.local.unwrap();
        assert_eq!(
            local.bucket,
            Some(TokenBucket {
                max_tokens: 1000,
                tokens_per_fill: 10,
                fill_interval: Duration::from_millis(100)
            })
        );
        assert_eq!(
            (local.enabled, local.enforced, local.status),
            (1.0, 1.0, 429)
        );
        assert_eq!(
            local.response_headers,
            vec![("x-local-rate-limit".into(), "true".into())]
        );
        assert_eq!(filter.routes.len(), 1);
        assert_eq!(filter.routes[0].rate_limits[0].len(), 1);
    }

    #[test]
    fn a_patch_strait_does_not_apply_is_refused_by_name() {
        for (yaml, field) in [
            (
                "configPatches:\n- applyTo: CLUSTER\n  patch: {operation: MERGE, value: {}}\n",
                "spec.configPatches[0].applyTo",
            ),
            (
                "configPatches:\n- applyTo: HTTP_FILTER\n  patch:\n    operation: INSERT_BEFORE\n    value: {name: envoy.filters.http.lua, typed_config: {'@type': x}}\n",
                "spec.configPatches[0].patch.value.name",
            ),
            (
                "configPatches:\n- applyTo: HTTP_FILTER\n  patch:\n    operation: INSERT_BEFORE\n    value:\n      name: envoy.filters.http.local_ratelimit\n      typed_config:\n        '@type': type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit\n        token_bucket: {max_tokens: 1, fill_interval: 1s}\n        local_rate_limit_per_downstream_connection: true\n",
                "spec.configPatches[0].patch.value.typed_config.local_rate_limit_per_downstream_connection",
            ),
            (
                "configPatches:\n- applyTo: HTTP_FILTER\n  match: {context: SIDECAR_OUTBOUND}\n  patch: {operation: INSERT_BEFORE, value: {}}\n",
                "spec.configPatches[0].match.context",
            ),
        ] {
            let (path, why) = read(&spec(yaml)).unwrap_err();
            assert_eq!(path, field, "{why}");
        }
    }

    #[test]
    fn a_global_filter_names_its_service() {
        let filter = read(&spec(
            r#"
configPatches:
- applyTo: HTTP_FILTER
  patch:
    operation: INSERT_BEFORE
    value:
      name: envoy.filters.http.ratelimit
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit
        domain: ratelimit
        failure_mode_deny: true
        timeout: 10s
        rate_limit_service:
          grpc_service:
            envoy_grpc:
              cluster_name: outbound|8081||ratelimit.default.svc.cluster.local
              authority: ratelimit.default.svc.cluster.local
          transport_api_version: V3
"#,
        ))
        .unwrap();
        let global = filter.global.unwrap();
        assert_eq!(global.service, "ratelimit.default.svc.cluster.local");
        assert_eq!((global.port, global.failure_mode_deny), (8081, true));
        assert_eq!(global.timeout, Duration::from_secs(10));
    }
}
