//! The origin of `cargo xtask bench`'s L7 rows: answers every request on
//! its port, HTTP/1.1 or HTTP/2 with prior knowledge, with 200 and a short
//! body naming it, after reading the request's body. Small and fast, so the
//! proxies in front of it are what the figures measure.
//!
//! `http-origin PORT NAME`
use std::{convert::Infallible, process::ExitCode};

use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, body::Bytes, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::net::TcpListener;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (Some(port), Some(name)) = (args.next(), args.next()) else {
        eprintln!("usage: http-origin PORT NAME");
        return ExitCode::from(2);
    };
    let Ok(port) = port.parse::<u16>() else {
        eprintln!("http-origin: {port:?} is not a port");
        return ExitCode::from(2);
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("http-origin: {err}");
            return ExitCode::FAILURE;
        }
    };
    let body = Bytes::from(format!("{name}\n"));
    runtime.block_on(async move {
        let listener = match TcpListener::bind(("::", port)).await {
            Ok(listener) => listener,
            Err(err) => {
                eprintln!("http-origin: binding port {port}: {err}");
                return ExitCode::FAILURE;
            }
        };
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let body = body.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                    let body = body.clone();
                    async move {
                        // Read what the client sent before answering.
                        let _ = request.into_body().collect().await;
                        Ok::<_, Infallible>(Response::new(Full::new(body)))
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}
