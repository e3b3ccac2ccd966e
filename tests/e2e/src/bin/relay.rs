//! The floor of any two-proxy data path, for `cargo xtask bench`: a plain
//! user-space TCP relay (no capture, no TLS, no HTTP/2), one per node, each
//! copying bytes with the same buffer size as the agent. One thread: on two
//! shared cores that relays fastest, so this is a floor, not a straw man.
//!
//! `relay LISTEN=TARGET...`: for each pair, accepts on LISTEN and copies
//! every connection to and from TARGET until both sides close.
use std::{net::SocketAddr, process::ExitCode};

use tokio::{
    io::copy_bidirectional_with_sizes,
    net::{TcpListener, TcpStream},
};

const BUFFER: usize = 64 * 1024;

fn main() -> ExitCode {
    let pairs: Result<Vec<(SocketAddr, SocketAddr)>, String> = std::env::args()
        .skip(1)
        .map(|arg| {
            let (listen, target) = arg
                .split_once('=')
                .ok_or_else(|| format!("{arg:?}: expected LISTEN=TARGET"))?;
            let parse = |a: &str| a.parse().map_err(|e| format!("{a:?}: {e}"));
            Ok((parse(listen)?, parse(target)?))
        })
        .collect();
    let pairs = match pairs {
        Ok(pairs) if !pairs.is_empty() => pairs,
        Ok(_) => {
            eprintln!("usage: relay LISTEN=TARGET...");
            return ExitCode::FAILURE;
        }
        Err(err) => {
            eprintln!("relay: {err}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("relay: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(pairs)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("relay: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(pairs: Vec<(SocketAddr, SocketAddr)>) -> std::io::Result<()> {
    let mut listeners = Vec::new();
    for (listen, target) in pairs {
        listeners.push((TcpListener::bind(listen).await?, target));
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (listener, target) in listeners {
        tasks.spawn(async move {
            loop {
                let (mut client, _) = listener.accept().await?;
                tokio::spawn(async move {
                    let _ = client.set_nodelay(true);
                    if let Ok(mut server) = TcpStream::connect(target).await {
                        let _ = server.set_nodelay(true);
                        let _ =
                            copy_bidirectional_with_sizes(&mut client, &mut server, BUFFER, BUFFER)
                                .await;
                    }
                });
            }
        });
    }
    match tasks.join_next().await {
        Some(Ok(result)) => result,
        Some(Err(err)) => Err(std::io::Error::other(err)),
        None => Ok(()),
    }
}
