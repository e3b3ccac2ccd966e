//! `strait-ratelimit`: the rate-limit service waypoints (and Envoy) ask,
//! over gRPC on `--listen`, with limits from `--config` files and counts
//! in the Redis at `--redis`.
use std::{convert::Infallible, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full, Limited, combinators::BoxBody};
use hyper::{
    Request, Response, StatusCode, body::Incoming, header::HeaderValue, service::service_fn,
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter as Count, family::Family},
    registry::Registry,
};
use strait_ratelimit::{
    counter::Counter,
    limits::Limits,
    proto::{OVER_LIMIT, RateLimitRequest, SHOULD_RATE_LIMIT},
    service,
};
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Where gRPC is served (plaintext HTTP/2: in the mesh, the agents
    /// carry it in mutual TLS).
    #[arg(long, default_value = "0.0.0.0:8081")]
    listen: SocketAddr,
    /// Limits, one domain per file, in Envoy's reference service's YAML.
    /// Repeatable.
    #[arg(long = "config", required = true)]
    config: Vec<PathBuf>,
    /// The Redis the counts live in (`redis://host:port`).
    #[arg(long, env = "STRAIT_REDIS_URL")]
    redis: String,
    /// How long connecting to Redis, or one count, may take.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    redis_timeout: Duration,
    /// Prometheus metrics (`/metrics`) and readiness (`/healthz/ready`:
    /// once Redis is connected).
    #[arg(long, default_value = "0.0.0.0:15020")]
    stats_addr: SocketAddr,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, scale) = match text.strip_suffix("ms") {
        Some(n) => (n, 0.001),
        None => (
            text.strip_suffix('s').ok_or("a duration ends in s or ms")?,
            1.0,
        ),
    };
    number
        .parse::<f64>()
        .ok()
        .filter(|n| n.is_finite() && *n > 0.0)
        .map(|n| Duration::from_secs_f64(n * scale))
        .ok_or_else(|| format!("{text:?} is not a duration"))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Labels {
    /// `ok`, `over_limit` or `error`.
    result: &'static str,
}

struct Service {
    limits: Limits,
    counter: Counter,
    answered: Family<Labels, Count>,
}

type Body = BoxBody<Bytes, Infallible>;

fn main() -> Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("STRAIT_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .init();
    let limits = Limits::read(&args.config).map_err(|e| anyhow::anyhow!("--config {e}"))?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?
        .block_on(run(args, limits))
}

async fn run(args: Args, limits: Limits) -> Result<()> {
    // Ready once Redis is: until then every count fails.
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let counter = Counter::connect(&args.redis, args.redis_timeout, ready.clone())
        .with_context(|| format!("--redis {}", args.redis))?;
    let mut registry = Registry::default();
    let answered = Family::<Labels, Count>::default();
    registry.register(
        "strait_ratelimit_answers",
        "ShouldRateLimit answers, by result",
        answered.clone(),
    );
    let service = Arc::new(Service {
        limits,
        counter,
        answered,
    });
    let registry = Arc::new(registry);
    let encode = Arc::new(move || {
        let mut text = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
        text
    });
    let _stats = strait_http::bind_stats(&[args.stats_addr], "stats", encode, ready)
        .await
        .context("--stats-addr")?;
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("--listen {}", args.listen))?;
    info!(listen = %args.listen, "serving ShouldRateLimit");
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                warn!(%err, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let service = service.clone();
        tokio::spawn(async move {
            let handler = service_fn(move |request| answer(service.clone(), request));
            if let Err(err) = auto::Builder::new(TokioExecutor::new())
                .http2_only()
                .serve_connection(TokioIo::new(tcp), handler)
                .await
            {
                debug!(%peer, %err, "connection ended");
            }
        });
    }
}

async fn answer(
    service: Arc<Service>,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    if request.uri().path() != SHOULD_RATE_LIMIT {
        return Ok(status_only(12, "unknown method"));
    }
    let body = match Limited::new(request.into_body(), strait_http::grpc::MAX_MESSAGE + 5)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(_) => return Ok(status_only(3, "the request could not be read")),
    };
    let Ok(asked) = strait_http::grpc::unframe::<RateLimitRequest>(&body) else {
        return Ok(status_only(3, "not a RateLimitRequest"));
    };
    match service::should_rate_limit(&service.limits, &service.counter, &asked).await {
        Ok(answer) => {
            let result = if answer.overall_code == OVER_LIMIT {
                "over_limit"
            } else {
                "ok"
            };
            service.answered.get_or_create(&Labels { result }).inc();
            let mut trailers = hyper::HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("0"));
            let body = Full::new(strait_http::grpc::frame(&answer))
                .with_trailers(async move { Some(Ok(trailers)) })
                .boxed();
            Ok(grpc_response(body))
        }
        Err(err) => {
            service
                .answered
                .get_or_create(&Labels { result: "error" })
                .inc();
            warn!(%err, domain = %asked.domain, "counting failed");
            Ok(status_only(14, &err.to_string()))
        }
    }
}

fn grpc_response(body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::OK;
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static("application/grpc"));
    response
}

/// A trailers-only answer: `code` and `message`, no message body.
fn status_only(code: u16, message: &str) -> Response<Body> {
    let mut response = grpc_response(Full::new(Bytes::new()).boxed());
    response
        .headers_mut()
        .insert("grpc-status", HeaderValue::from(code));
    if let Ok(message) = HeaderValue::from_str(message) {
        response.headers_mut().insert("grpc-message", message);
    }
    response
}
