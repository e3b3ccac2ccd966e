//! `straitctl dashboard`: a live topology view of the mesh drawn from
//! Prometheus alone. A small web server with its page embedded: `/` is the
//! page, `/api/graph` the graph it draws ([`graph`]), built from instant
//! queries to one or more Prometheus servers (one per cluster or network,
//! as Istio's multi-cluster setups run them; each should scrape its own
//! proxies, or their counts add up twice).
mod graph;
mod prometheus;

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Bytes, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::{net::TcpListener, sync::Semaphore};

use graph::{Graph, Query};
use prometheus::Prometheus;

const PAGE: &str = include_str!("assets/index.html");
const SCRIPT: &str = include_str!("assets/app.js");
const STYLE: &str = include_str!("assets/style.css");

/// Browsers keep a few connections each: more than this many at once are
/// turned away instead of each holding a task.
const CONNECTIONS: usize = 64;
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Graphs asked for within this long of the last share its queries: any
/// number of open pages cost Prometheus one set of queries per second.
const FRESH: Duration = Duration::from_secs(1);

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A Prometheus that scrapes strait's agents and gateways
    /// (`http://host:port[/prefix]`); repeat it for one per cluster or
    /// network.
    #[arg(long, default_value = "http://127.0.0.1:9090")]
    prometheus: Vec<String>,
    /// Where to serve the page (port 0: any free port; the address is
    /// printed).
    #[arg(long, default_value = "127.0.0.1:15030")]
    listen: SocketAddr,
    /// The window rates are taken over, as PromQL writes it (`30s`, `1m`,
    /// `5m`).
    #[arg(long, default_value = "1m")]
    window: String,
    /// Seconds between the page's updates.
    #[arg(long, default_value_t = 5)]
    refresh: u64,
}

pub async fn run(args: &Args) -> Result<()> {
    let window = checked_window(&args.window)?;
    if !(1..=3600).contains(&args.refresh) {
        bail!("--refresh {}: must be 1 to 3600 seconds", args.refresh);
    }
    let prometheus = args
        .prometheus
        .iter()
        .map(|url| Prometheus::parse(url))
        .collect::<Result<Vec<_>>>()?;
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("--listen {}: cannot listen there", args.listen))?;
    let addr = listener.local_addr().context("the listening address")?;
    let urls: Vec<&str> = prometheus.iter().map(Prometheus::url).collect();
    println!("dashboard: http://{addr}/ (from {})", urls.join(", "));
    use std::io::Write;
    std::io::stdout().flush().context("writing the address")?;
    let dashboard = Arc::new(Dashboard {
        prometheus,
        window,
        refresh: Duration::from_secs(args.refresh),
        cache: tokio::sync::Mutex::new(None),
    });
    let permits = Arc::new(Semaphore::new(CONNECTIONS));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            // Out of descriptors, or a connection reset before accept:
            // the next one may do.
            Err(err) => {
                eprintln!("straitctl dashboard: accepting: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            continue;
        };
        let dashboard = dashboard.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let dashboard = dashboard.clone();
                async move { Ok::<_, Infallible>(dashboard.answer(req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            drop(permit);
        });
    }
}

/// A PromQL duration (`90s`, `1m`, `1h30m`): it is written into every
/// query, so nothing else passes.
fn checked_window(window: &str) -> Result<String> {
    let mut rest = window;
    let mut parts = 0;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit_len = rest[digits..]
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len() - digits);
        let unit = &rest[digits..digits + unit_len];
        if digits == 0 || !["ms", "s", "m", "h", "d", "w", "y"].contains(&unit) {
            bail!("--window {window:?}: not a PromQL duration (like 30s, 1m, 1h30m)");
        }
        rest = &rest[digits + unit_len..];
        parts += 1;
    }
    if parts == 0 {
        bail!("--window: empty; give a PromQL duration (like 1m)");
    }
    Ok(window.to_string())
}

struct Dashboard {
    prometheus: Vec<Prometheus>,
    window: String,
    refresh: Duration,
    cache: tokio::sync::Mutex<Option<(Instant, Bytes)>>,
}

/// What `/api/graph` answers.
#[derive(Serialize)]
struct Document<'a> {
    /// Unix time, seconds.
    generated_at: u64,
    window: &'a str,
    refresh_ms: u128,
    prometheus: Vec<Source<'a>>,
    #[serde(flatten)]
    graph: Graph,
}

#[derive(Serialize)]
struct Source<'a> {
    url: &'a str,
    /// Why its answers are missing from the graph.
    error: Option<String>,
}

impl Dashboard {
    async fn answer(&self, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return reply(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                "GET only\n".into(),
            );
        }
        match req.uri().path() {
            "/" | "/index.html" => reply(StatusCode::OK, "text/html; charset=utf-8", PAGE.into()),
            "/app.js" => reply(
                StatusCode::OK,
                "text/javascript; charset=utf-8",
                SCRIPT.into(),
            ),
            "/style.css" => reply(StatusCode::OK, "text/css; charset=utf-8", STYLE.into()),
            "/api/graph" => reply(StatusCode::OK, "application/json", self.graph().await),
            _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
        }
    }

    /// The graph, at most [`FRESH`] old; one request queries at a time.
    async fn graph(&self) -> Bytes {
        let mut cache = self.cache.lock().await;
        if let Some((at, body)) = &*cache
            && at.elapsed() < FRESH
        {
            return body.clone();
        }
        let mut answers: BTreeMap<Query, Vec<graph::Sample>> = BTreeMap::new();
        let mut sources = Vec::new();
        for prometheus in &self.prometheus {
            let mut error = None;
            let mut got = BTreeMap::new();
            for query in Query::ALL {
                match prometheus.query(&query.promql(&self.window)).await {
                    Ok(samples) => {
                        got.insert(query, samples);
                    }
                    Err(err) => {
                        error = Some(format!("{err:#}"));
                        break;
                    }
                }
            }
            // A Prometheus that failed a query adds none of its answers:
            // half its figures would draw a wrong picture.
            if error.is_none() {
                for (query, samples) in got {
                    answers.entry(query).or_default().extend(samples);
                }
            }
            sources.push(Source {
                url: prometheus.url(),
                error,
            });
        }
        let document = Document {
            generated_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            window: &self.window,
            refresh_ms: self.refresh.as_millis(),
            prometheus: sources,
            graph: graph::build(&answers),
        };
        let body = Bytes::from(serde_json::to_vec(&document).unwrap_or_default());
        *cache = Some((Instant::now(), body.clone()));
        body
    }
}

fn reply(status: StatusCode, content_type: &str, body: Bytes) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    let set = |headers: &mut hyper::HeaderMap, name, value: &str| {
        if let Ok(value) = hyper::header::HeaderValue::from_str(value) {
            headers.insert(name, value);
        }
    };
    set(headers, hyper::header::CONTENT_TYPE, content_type);
    set(headers, hyper::header::CACHE_CONTROL, "no-store");
    // The page loads nothing but its own script, style and graph.
    set(
        headers,
        hyper::header::CONTENT_SECURITY_POLICY,
        "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    );
    set(headers, hyper::header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_is_a_promql_duration_and_nothing_else() {
        for good in ["30s", "1m", "1h30m", "500ms", "2d"] {
            assert_eq!(checked_window(good).expect(good), good);
        }
        for bad in ["", "1", "m", "1m]", "1m) or vector(1", "-1m", "1 m", "1x"] {
            let err = checked_window(bad).expect_err(bad).to_string();
            assert!(err.contains("--window"), "{bad}: {err}");
        }
    }
}
