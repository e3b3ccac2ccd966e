//! Which route a request to a service takes: the service's VirtualService
//! (`http` routes in order, the first whose matches hold), else the
//! Gateway API routes attached to it (HTTPRoute, GRPCRoute, translated to
//! the same routes by [`strait_config::gateway_routes`]), compiled once
//! per config and service; without either, the service itself. What a route
//! does with the request (the destinations by weight, timeout, retries) is
//! [`crate::forward`]'s.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use strait_config::{
    Config, Service,
    manifest::networking::{HttpRoute, Percent, RouteDestination},
};

use crate::{
    actions::{Answer, HeaderActions, Rewriting},
    cors::Cors,
    matching::{Match, Request},
};

/// A service's routes as the config has them now.
#[derive(Debug)]
pub enum Table {
    /// No VirtualService: every request goes to the service.
    Default,
    /// The routes of `namespace/name`, in order; for Gateway API routes
    /// `virtual_service` is empty and each route names its object.
    Routes {
        virtual_service: String,
        routes: Vec<Route>,
    },
    /// The VirtualService cannot be applied (a regex that does not
    /// compile): requests are refused, not sent around its rules.
    Broken {
        virtual_service: String,
        why: String,
    },
}

#[derive(Debug)]
pub struct Route {
    pub name: Option<String>,
    matches: Vec<Match>,
    /// Where it goes, with weights (a single one weighs 100).
    pub destinations: Vec<Weighted>,
    pub timeout: Option<Duration>,
    pub retries: Retries,
    pub fault: Fault,
    /// A redirect or direct response instead of a destination.
    pub answer: Option<Answer>,
    pub rewrite: Rewriting,
    pub headers: HeaderActions,
    pub cors: Option<Cors>,
    pub mirrors: Vec<Mirrored>,
}

/// A route's fault injection: each part applies to its share of requests.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Fault {
    /// A fixed delay, and the share (0 to 1) of requests it delays.
    pub delay: Option<(Duration, f64)>,
    /// An answer instead of the destination's, and the share it takes.
    pub abort: Option<(Abort, f64)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Abort {
    Http(u16),
    /// A gRPC status code, answered as gRPC does (HTTP 200, `grpc-status`).
    Grpc(u8),
}

impl Fault {
    fn from_spec(fault: Option<&strait_config::manifest::networking::Fault>) -> Self {
        let Some(fault) = fault else {
            return Self::default();
        };
        // Istio: a fault without a percentage applies to no request.
        let share = |percentage: Option<&strait_config::manifest::networking::Percent>,
                     percent: Option<u32>| {
            percentage
                .map(|p| p.value)
                .or(percent.map(f64::from))
                .unwrap_or(0.0)
                .clamp(0.0, 100.0)
                / 100.0
        };
        Self {
            delay: fault.delay.as_ref().and_then(|d| {
                let delay = strait_config::duration::parse(d.fixed_delay.as_deref()?).ok()?;
                Some((delay, share(d.percentage.as_ref(), d.percent)))
            }),
            abort: fault.abort.as_ref().and_then(|a| {
                let abort = match (a.http_status, a.grpc_status.as_deref()) {
                    (Some(status), _) => Abort::Http(u16::try_from(status).ok()?),
                    (None, Some(name)) => Abort::Grpc(
                        u8::try_from(strait_config::GRPC_STATUS.iter().position(|c| *c == name)?)
                            .ok()?,
                    ),
                    (None, None) => return None,
                };
                Some((abort, share(a.percentage.as_ref(), None)))
            }),
        }
    }
}

/// Where a route's copies go, and the share of its requests copied.
#[derive(Clone, Debug)]
pub struct Mirrored {
    pub host: String,
    pub subset: Option<String>,
    pub port: Option<u16>,
    pub share: f64,
}

/// A route's mirrors, with Istio's defaults (100% when no percentage).
pub fn mirrors_of(route: &HttpRoute, namespace: &str) -> Vec<Mirrored> {
    let share = |p: Option<&Percent>, legacy: Option<u32>| {
        p.map(|p| p.value)
            .or(legacy.map(f64::from))
            .unwrap_or(100.0)
            .clamp(0.0, 100.0)
            / 100.0
    };
    let to = |d: &strait_config::manifest::networking::Destination, share: f64| Mirrored {
        host: strait_config::qualify(&d.host, namespace),
        subset: d.subset.clone(),
        port: d.port.as_ref().and_then(|p| u16::try_from(p.number).ok()),
        share,
    };
    let mut out: Vec<Mirrored> = route
        .mirror
        .iter()
        .map(|d| {
            to(
                d,
                share(route.mirror_percentage.as_ref(), route.mirror_percent),
            )
        })
        .collect();
    out.extend(route.mirrors.iter().filter_map(|m| {
        let d = m.destination.as_ref()?;
        Some(to(d, share(m.percentage.as_ref(), None)))
    }));
    out
}

#[derive(Debug)]
pub struct Weighted {
    /// The destination host, qualified in the VirtualService's namespace.
    pub host: String,
    pub subset: Option<String>,
    pub port: Option<u16>,
    pub weight: u32,
    pub headers: HeaderActions,
}

/// A route's retry policy; Istio's default when the route sets none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retries {
    pub attempts: u32,
    pub per_try_timeout: Option<Duration>,
    pub on: RetryOn,
    /// `retryRemoteLocalities`: whether a retry may go to an endpoint in
    /// another locality than the first try's (Istio's default: not).
    pub remote_localities: bool,
}

/// What is retried (`retryOn`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetryOn {
    /// Any 5xx answer, or none at all.
    pub five_xx: bool,
    /// 502, 503, 504.
    pub gateway_error: bool,
    pub connect_failure: bool,
    /// The connection broke before an answer.
    pub reset: bool,
    pub refused_stream: bool,
    /// 409.
    pub retriable_4xx: bool,
    pub statuses: Vec<u16>,
    /// gRPC status codes (`cancelled`, `deadline-exceeded`, `internal`,
    /// `resource-exhausted`, `unavailable`), as an answer's headers carry
    /// them when it ends without a body (gRPC's trailers-only answers).
    pub grpc: Vec<u8>,
}

impl Retries {
    /// Istio's default: 2 attempts on connect failures, refused streams,
    /// and 503.
    pub fn istio_default() -> Self {
        Self {
            attempts: 2,
            per_try_timeout: None,
            on: RetryOn {
                connect_failure: true,
                refused_stream: true,
                statuses: vec![503],
                ..RetryOn::default()
            },
            remote_localities: false,
        }
    }

    fn from_spec(retries: Option<&strait_config::manifest::networking::Retries>) -> Self {
        let Some(r) = retries else {
            return Self::istio_default();
        };
        let mut on = RetryOn::default();
        for cond in r
            .retry_on
            .as_deref()
            .unwrap_or(
                "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
            )
            .split(',')
            .map(str::trim)
        {
            match cond {
                // Envoy's 5xx: any 5xx answer, or none at all (connect
                // failures, resets, refused streams).
                "5xx" => {
                    on.five_xx = true;
                    on.connect_failure = true;
                    on.reset = true;
                    on.refused_stream = true;
                }
                "gateway-error" => on.gateway_error = true,
                "connect-failure" => on.connect_failure = true,
                "reset" => on.reset = true,
                "refused-stream" => on.refused_stream = true,
                "retriable-4xx" => on.retriable_4xx = true,
                // gRPC's `unavailable` arrives as a 503 from HTTP/1 peers
                // and as grpc-status 14 from gRPC ones.
                "unavailable" => {
                    on.statuses.push(503);
                    on.grpc.push(14);
                }
                "cancelled" => on.grpc.push(1),
                "deadline-exceeded" => on.grpc.push(4),
                "resource-exhausted" => on.grpc.push(8),
                "internal" => on.grpc.push(13),
                "retriable-status-codes" => on.statuses.push(503),
                code => {
                    if let Ok(code) = code.parse::<u16>() {
                        on.statuses.push(code);
                    }
                }
            }
        }
        Self {
            attempts: r
                .attempts
                .map_or(2, |a| u32::try_from(a.max(0)).unwrap_or(0)),
            per_try_timeout: r
                .per_try_timeout
                .as_deref()
                .and_then(|t| strait_config::duration::parse(t).ok()),
            on,
            remote_localities: r.retry_remote_localities.unwrap_or(false),
        }
    }
}

impl RetryOn {
    /// Whether an answer with `status` is tried again.
    pub fn status(&self, status: u16) -> bool {
        (self.five_xx && status >= 500)
            || (self.gateway_error && matches!(status, 502..=504))
            || (self.retriable_4xx && status == 409)
            || self.statuses.contains(&status)
    }

    /// Whether an answer whose headers carry gRPC status `code` is tried
    /// again.
    pub fn grpc(&self, code: Option<&str>) -> bool {
        code.and_then(|c| c.parse::<u8>().ok())
            .is_some_and(|c| self.grpc.contains(&c))
    }
}

impl Route {
    fn compile(route: &HttpRoute, namespace: &str) -> Result<Self, String> {
        let matches = route
            .matches
            .iter()
            .enumerate()
            .map(|(i, m)| Match::compile(m).map_err(|why| format!("match[{i}].{why}")))
            .collect::<Result<_, _>>()?;
        let weight = |d: &RouteDestination| {
            d.weight
                .map_or(if route.route.len() == 1 { 100 } else { 0 }, |w| {
                    u32::try_from(w.max(0)).unwrap_or(0)
                })
        };
        Ok(Self {
            name: route.name.clone(),
            matches,
            destinations: route
                .route
                .iter()
                .map(|d| Weighted {
                    host: strait_config::qualify(&d.destination.host, namespace),
                    subset: d.destination.subset.clone(),
                    port: d
                        .destination
                        .port
                        .as_ref()
                        .and_then(|p| u16::try_from(p.number).ok()),
                    weight: weight(d),
                    headers: HeaderActions::compile(d.headers.as_ref()).unwrap_or_default(),
                })
                .collect(),
            timeout: route
                .timeout
                .as_deref()
                .and_then(|t| strait_config::duration::parse(t).ok())
                .filter(|t| !t.is_zero()),
            retries: Retries::from_spec(route.retries.as_ref()),
            fault: Fault::from_spec(route.fault.as_ref()),
            answer: Answer::compile(route.redirect.as_ref(), route.direct_response.as_ref())?,
            rewrite: Rewriting::compile(route.rewrite.as_ref())?,
            headers: HeaderActions::compile(route.headers.as_ref())?,
            cors: route.cors_policy.as_ref().map(Cors::compile).transpose()?,
            mirrors: mirrors_of(route, namespace),
        })
    }

    /// Whether `req` takes this route (no matches is every request), and
    /// the match entry that took it.
    pub fn matches(&self, req: &Request<'_>) -> Option<Option<&Match>> {
        if self.matches.is_empty() {
            return Some(None);
        }
        self.matches.iter().find(|m| m.matches(req)).map(Some)
    }

    /// One destination, by weight (`roll` in [0, 1)).
    pub fn pick(&self, roll: f64) -> Option<&Weighted> {
        let total: u32 = self.destinations.iter().map(|d| d.weight).sum();
        if total == 0 {
            return self.destinations.first();
        }
        let mut at = roll * f64::from(total);
        for d in &self.destinations {
            at -= f64::from(d.weight);
            if at < 0.0 {
                return Some(d);
            }
        }
        self.destinations.last()
    }
}

impl Table {
    /// The table for `service`.
    fn build(config: &Config, service: &Service) -> Self {
        let Some(vs) = config.virtual_service_for(service) else {
            return Self::gateway_api(config, service);
        };
        // Delegates inlined: a delegate's routes in its parent's place.
        let compiled: Result<Vec<Route>, String> = config
            .http_routes_of(vs)
            .iter()
            .enumerate()
            .map(|(i, r)| {
                Route::compile(r, &vs.namespace).map_err(|why| {
                    format!("http[{i}] ({}).{why}", r.name.as_deref().unwrap_or("-"))
                })
            })
            .collect();
        let name = format!("{}/{}", vs.namespace, vs.name);
        match compiled {
            Ok(routes) => Self::Routes {
                virtual_service: name,
                routes,
            },
            Err(why) => Self::Broken {
                virtual_service: name,
                why,
            },
        }
    }
}

impl Table {
    /// The Gateway API routes attached to `service`, if any.
    fn gateway_api(config: &Config, service: &Service) -> Self {
        let routes = config.gateway_routes(service);
        if routes.is_empty() {
            return Self::Default;
        }
        let compiled: Result<Vec<Route>, String> = routes
            .iter()
            .map(|r| {
                Route::compile(r, &service.namespace)
                    .map_err(|why| format!("{}: {why}", r.name.as_deref().unwrap_or_default()))
            })
            .collect();
        match compiled {
            Ok(routes) => Self::Routes {
                virtual_service: String::new(),
                routes,
            },
            Err(why) => Self::Broken {
                virtual_service: "Gateway API routes".into(),
                why,
            },
        }
    }
}

/// Route tables by service, for one config generation at a time.
#[derive(Default)]
pub struct Tables {
    inner: Mutex<(u64, HashMap<String, Arc<Table>>)>,
}

impl Tables {
    pub fn get(&self, generation: u64, config: &Config, service: &Service) -> Arc<Table> {
        let key = format!("{}/{}", service.namespace, service.name);
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.0 != generation {
            *inner = (generation, HashMap::new());
        }
        inner
            .1
            .entry(key)
            .or_insert_with(|| Arc::new(Table::build(config, service)))
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_weighted_split_picks_by_weight() {
        let route = Route {
            name: None,
            matches: Vec::new(),
            destinations: vec![
                Weighted {
                    host: "a".into(),
                    subset: None,
                    port: None,
                    weight: 80,
                    headers: HeaderActions::default(),
                },
                Weighted {
                    host: "b".into(),
                    subset: None,
                    port: None,
                    weight: 20,
                    headers: HeaderActions::default(),
                },
            ],
            timeout: None,
            retries: Retries::istio_default(),
            fault: Fault::default(),
            answer: None,
            rewrite: Rewriting::default(),
            headers: HeaderActions::default(),
            cors: None,
            mirrors: Vec::new(),
        };
        assert_eq!(route.pick(0.0).unwrap().host, "a");
        assert_eq!(route.pick(0.79).unwrap().host, "a");
        assert_eq!(route.pick(0.8).unwrap().host, "b");
        assert_eq!(route.pick(0.999).unwrap().host, "b");
    }

    #[test]
    fn faults_take_their_share_and_none_without_one() {
        let spec: strait_config::manifest::networking::Fault = serde_json::from_str(
            r#"{"delay": {"fixedDelay": "200ms", "percentage": {"value": 10}},
                "abort": {"grpcStatus": "UNAVAILABLE", "percentage": {"value": 50}}}"#,
        )
        .unwrap();
        let fault = Fault::from_spec(Some(&spec));
        assert_eq!(fault.delay, Some((Duration::from_millis(200), 0.1)));
        assert_eq!(fault.abort, Some((Abort::Grpc(14), 0.5)));
        let spec: strait_config::manifest::networking::Fault =
            serde_json::from_str(r#"{"abort": {"httpStatus": 418}}"#).unwrap();
        assert_eq!(
            Fault::from_spec(Some(&spec)).abort,
            Some((Abort::Http(418), 0.0))
        );
    }

    #[test]
    fn retry_on_reads_istios_conditions() {
        let spec = strait_config::manifest::networking::Retries {
            attempts: Some(3),
            retry_on: Some("5xx,reset,retriable-4xx,418".into()),
            per_try_timeout: Some("2s".into()),
            ..Default::default()
        };
        let r = Retries::from_spec(Some(&spec));
        assert_eq!(r.attempts, 3);
        assert_eq!(r.per_try_timeout, Some(Duration::from_secs(2)));
        assert!(r.on.five_xx && r.on.reset && r.on.retriable_4xx);
        // 5xx includes not answering at all.
        assert!(r.on.connect_failure && r.on.refused_stream);
        assert!(r.on.status(500) && r.on.status(409) && r.on.status(418));
        let grpc = Retries::from_spec(Some(&strait_config::manifest::networking::Retries {
            attempts: Some(2),
            retry_on: Some("unavailable,resource-exhausted".into()),
            ..Default::default()
        }));
        assert!(grpc.on.grpc(Some("14")) && grpc.on.grpc(Some("8")));
        assert!(!grpc.on.grpc(Some("5")) && !grpc.on.grpc(Some("x")) && !grpc.on.grpc(None));
        assert!(!r.on.status(404));
        // Without a policy: Istio's default.
        let d = Retries::from_spec(None);
        assert_eq!(d, Retries::istio_default());
        assert!(d.on.status(503) && !d.on.status(500));
    }
}
