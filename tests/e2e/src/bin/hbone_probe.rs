//! A raw HBONE client for the tests that play a hostile or curious mesh
//! member: one CONNECT, as `source`, to the HBONE peer at `addr` that must
//! hold `peer`, asking for `authority`. Prints the peer's answer: `200`,
//! `refused <status>`, or `failed <why>` (TLS, connection).
//!
//! `hbone-probe CA_DIR SOURCE PEER ADDR AUTHORITY [CONNECTIONS]`: CA_DIR
//! holds the mesh root's certificate and key (the tests play the operator
//! there, and sign the probe's certificate themselves). With CONNECTIONS,
//! that many HBONE connections at once, each with one CONNECT held open
//! until all have answered; prints each distinct answer with its count
//! (`200 x40`).
//!
//! `HBONE_PROBE_SOURCE_NETWORK=NET` sends the CONNECTs as an agent sends
//! those through an east-west gateway (naming the client's network);
//! `HBONE_PROBE_ON_BEHALF_OF=ID` claims to send for another identity, as
//! a waypoint does for its clients; `HBONE_PROBE_HOLD=SECONDS` keeps the tunnels open (silent) that long
//! after printing the answers.
use std::{net::SocketAddr, path::Path, process::ExitCode, sync::Arc, time::Duration};

use strait_hbone::{Authority, Pool, PoolKey};
use strait_identity::{CertManager, Identity, Signer, tls::ClientConfigs};

const TIMEOUT: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (ca_dir, source, peer, addr, authority, count) = match args.as_slice() {
        [ca_dir, source, peer, addr, authority] => (ca_dir, source, peer, addr, authority, None),
        [ca_dir, source, peer, addr, authority, count] => match count.parse::<usize>() {
            Ok(n) if (1..=10_000).contains(&n) => (ca_dir, source, peer, addr, authority, Some(n)),
            _ => {
                eprintln!("hbone-probe: CONNECTIONS {count:?}: a number from 1 to 10000");
                return ExitCode::from(2);
            }
        },
        _ => {
            eprintln!("usage: hbone-probe CA_DIR SOURCE PEER ADDR AUTHORITY [CONNECTIONS]");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("hbone-probe: runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let probe = probe(
        Path::new(ca_dir),
        source,
        peer,
        addr,
        authority,
        count.unwrap_or(1),
        count.is_some(),
    );
    match runtime.block_on(probe) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("hbone-probe: {err}");
            ExitCode::from(2)
        }
    }
}

/// Prints the peers' answers (then holds the tunnels if asked to), or
/// fails on an error in the probe's own arguments or setup.
async fn probe(
    ca_dir: &Path,
    source: &str,
    peer: &str,
    addr: &str,
    authority: &str,
    count: usize,
    counted: bool,
) -> Result<(), String> {
    let network = std::env::var("HBONE_PROBE_SOURCE_NETWORK").ok();
    let hold = match std::env::var("HBONE_PROBE_HOLD") {
        Ok(s) => Duration::from_secs(
            s.parse::<u64>()
                .ok()
                .filter(|s| *s <= 600)
                .ok_or("HBONE_PROBE_HOLD: seconds, at most 600")?,
        ),
        Err(_) => Duration::ZERO,
    };
    let from = network.map(|network| strait_hbone::Source {
        network,
        ..Default::default()
    });
    let on_behalf_of: Option<Identity> = match std::env::var("HBONE_PROBE_ON_BEHALF_OF") {
        Ok(id) => Some(
            id.parse()
                .map_err(|e| format!("HBONE_PROBE_ON_BEHALF_OF: {e}"))?,
        ),
        Err(_) => None,
    };
    let source: Identity = source.parse().map_err(|e| format!("SOURCE: {e}"))?;
    let peer: Identity = peer.parse().map_err(|e| format!("PEER: {e}"))?;
    let addr: SocketAddr = addr.parse().map_err(|e| format!("ADDR: {e}"))?;
    let authority: Authority = authority.parse().map_err(|e| format!("AUTHORITY: {e}"))?;
    let signer = Signer::open_or_create(ca_dir, &source.trust_domain)
        .map_err(|e| format!("CA_DIR {}: {e}", ca_dir.display()))?;
    let certs = CertManager::new(Arc::new(signer), Duration::from_secs(3600))
        .map_err(|e| format!("certificates: {e}"))?;
    certs.want(&source);
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while certs.current(&source).is_none() {
        if tokio::time::Instant::now() > deadline {
            return Err(format!("no certificate for {source}"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let tls = ClientConfigs::new(certs)
        .get(&source, &peer)
        .map_err(|e| format!("TLS configuration: {e}"))?;
    let key = PoolKey {
        source,
        destination: peer,
        addr,
    };
    // A pool of its own per connection: each is a new HBONE connection.
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..count {
        let (key, authority, tls) = (key.clone(), authority.clone(), tls.clone());
        let (from, on_behalf_of) = (from.clone(), on_behalf_of.clone());
        set.spawn(async move {
            let claims = strait_hbone::Claims {
                source: from.as_ref(),
                on_behalf_of: on_behalf_of.as_ref(),
                traceparent: None,
            };
            let pool = Pool::new();
            let attempt = async {
                let mut tunnel = pool
                    .connect(&key, &authority, claims, tls, || {
                        tokio::net::TcpStream::connect(addr)
                    })
                    .await
                    .map_err(|e| e.to_string())?;
                tunnel.established().await.map_err(|e| e.to_string())?;
                Ok::<_, String>(tunnel)
            };
            match tokio::time::timeout(TIMEOUT, attempt).await {
                Ok(Ok(tunnel)) => ("200".to_string(), Some((pool, tunnel))),
                Ok(Err(err)) if err.contains("refused by the peer") => (
                    format!("refused {}", err.rsplit(": ").next().unwrap_or(&err)),
                    None,
                ),
                Ok(Err(err)) => (format!("failed {err}"), None),
                Err(_) => ("failed timed out".to_string(), None),
            }
        });
    }
    // Every connection is held (in `answers`) until all have answered.
    let mut answers = Vec::with_capacity(count);
    while let Some(joined) = set.join_next().await {
        answers.push(joined.map_err(|e| format!("a probe task: {e}"))?);
    }
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for (answer, _) in &answers {
        *counts.entry(answer.clone()).or_default() += 1;
    }
    let line = if counted {
        counts
            .iter()
            .map(|(answer, n)| format!("{answer} x{n}"))
            .collect::<Vec<_>>()
            .join(", ")
    } else {
        counts.into_keys().next().unwrap_or_default()
    };
    println!("{line}");
    // Silent while held: what a flood of idle tunnels looks like.
    tokio::time::sleep(hold).await;
    drop(answers);
    Ok(())
}
