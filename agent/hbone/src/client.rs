//! The outbound side: a pool of mutual-TLS HTTP/2 connections, one CONNECT
//! stream per proxied TCP connection.
//!
//! A tunnel is usable as soon as its CONNECT is sent: the client's first
//! bytes follow the request headers at once instead of waiting a round trip
//! for the answer, which is read before the first byte from the far end (a
//! refusal shows there, as `ConnectionRefused`).
//!
//! Concurrent streams to the same peer are spread over up to one connection
//! per core, so TLS and framing for parallel bulk flows run on all cores;
//! sequential streams keep reusing one connection. Dials in progress count
//! against that allowance: a burst of streams to a new peer waits for the
//! dials already under way instead of each starting a handshake of its own
//! (which the peer's per-address handshake bound would refuse, and which
//! would cost every other client of this proxy the CPU).
use std::{
    collections::HashMap,
    future::Future,
    io,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
};

use hyper::{Method, Request, body::Bytes};
use rustls::{ClientConfig, pki_types::ServerName};
use strait_identity::Identity;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
    sync::Notify,
};
use tokio_rustls::TlsConnector;
use tracing::debug;

use crate::{
    Authority, CONNECTION_WINDOW, Claims, Error, MAX_FRAME, STREAM_WINDOW, STREAMS_PER_CONNECTION,
    tunnel::{Active, Tunnel},
};

/// Connections are shared only between the same two identities towards the
/// same address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub source: Identity,
    pub destination: Identity,
    /// The destination's HBONE address (`ip:15008`).
    pub addr: SocketAddr,
}

type Sender = h2::client::SendRequest<Bytes>;

struct Pooled {
    sender: Sender,
    /// Open tunnels on this connection.
    active: Arc<AtomicUsize>,
    /// Set when the connection ended.
    closed: Arc<AtomicBool>,
}

/// One key's connections, and its dials under way.
#[derive(Default)]
struct Entry {
    conns: Vec<Pooled>,
    dialing: usize,
}

/// What a stream does with the pool as it stands.
enum Choice {
    Use(Sender, Arc<AtomicUsize>),
    Dial,
    /// No live connection, and the allowance is taken by dials under way.
    Wait,
}

pub struct Pool {
    connections: Mutex<HashMap<PoolKey, Entry>>,
    /// Woken when a dial ends, well or badly.
    dialed: Notify,
    max_per_key: usize,
    /// Whether its connections' flushes are put off once to gather other
    /// streams' frames ([`crate::coalesce`]).
    coalesce: bool,
}

impl Default for Pool {
    fn default() -> Self {
        Self {
            connections: Mutex::new(HashMap::new()),
            dialed: Notify::new(),
            max_per_key: std::thread::available_parallelism().map_or(1, usize::from),
            coalesce: false,
        }
    }
}

impl Pool {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// A pool whose connections gather their streams' writes (the
    /// waypoint's: many small requests on each).
    pub fn coalescing() -> Arc<Self> {
        Arc::new(Self {
            coalesce: true,
            ..Self::default()
        })
    }

    /// Opens a tunnel to `authority` through the HBONE peer of `key`,
    /// reusing a pooled connection or making one with `dial` (which opens the
    /// TCP connection, from whichever namespace and address it must leave).
    /// `claims` say where the client is (to an east-west gateway) or whom
    /// a waypoint sends for.
    pub async fn connect<D, F>(
        &self,
        key: &PoolKey,
        authority: &Authority,
        claims: Claims<'_>,
        tls: Arc<ClientConfig>,
        dial: D,
    ) -> Result<Tunnel, Error>
    where
        D: Fn() -> F,
        F: Future<Output = io::Result<TcpStream>>,
    {
        let mut waited = false;
        let slot = loop {
            // Made before looking, so a dial that ends in between wakes it.
            let dialed = self.dialed.notified();
            match self.choose(key, waited) {
                Choice::Use(sender, active) => {
                    match open_stream(sender, key.addr, authority, claims, active).await {
                        // The pooled connection died (the peer restarted, the
                        // link broke): forget it and try once on a new one.
                        Err(Error::H2 { .. }) => {
                            debug!(addr = %key.addr, "pooled HBONE connection is gone; reconnecting");
                            self.forget_closed(key);
                            break DialSlot::take(self, key);
                        }
                        other => return other,
                    }
                }
                Choice::Dial => break DialSlot { pool: self, key },
                // Once: if those dials failed, this stream tries its own.
                Choice::Wait => {
                    dialed.await;
                    waited = true;
                }
            }
        };
        let opened = self.open(key, tls, dial).await;
        drop(slot);
        let (sender, active) = match opened {
            Ok(opened) => opened,
            // No new connection (the peer is over a handshake limit, say),
            // but a live one: it carries this stream too, busy or not.
            Err(err) => match self.least_busy(key) {
                Some(live) => {
                    debug!(addr = %key.addr, %err, "no new HBONE connection; sharing a pooled one");
                    live
                }
                None => return Err(err),
            },
        };
        open_stream(sender, key.addr, authority, claims, active).await
    }

    /// Dials, handshakes and pools a new connection for `key`.
    async fn open<D, F>(
        &self,
        key: &PoolKey,
        tls: Arc<ClientConfig>,
        dial: D,
    ) -> Result<(Sender, Arc<AtomicUsize>), Error>
    where
        D: Fn() -> F,
        F: Future<Output = io::Result<TcpStream>>,
    {
        let tcp = dial().await.map_err(|source| Error::Dial {
            addr: key.addr,
            source,
        })?;
        let _ = tcp.set_nodelay(true);
        let (sender, closed, _) = handshake(key.addr, tls, tcp, self.coalesce).await?;
        let active = Arc::new(AtomicUsize::new(0));
        self.lock()
            .entry(key.clone())
            .or_default()
            .conns
            .push(Pooled {
                sender: sender.clone(),
                active: active.clone(),
                closed,
            });
        Ok((sender, active))
    }

    /// Drops every pooled connection for `key` (one did not answer in
    /// time: a cut link gives no error, so the pool would keep it).
    /// Tunnels already open on them go on until they end.
    pub fn forget(&self, key: &PoolKey) {
        self.lock().remove(key);
    }

    /// Keeps the pooled connections `keep` wants (say, of identities still on
    /// this node) and forgets ended ones, so the pool is bounded by what is
    /// in use. Tunnels open on forgotten connections go on until they end.
    pub fn retain(&self, keep: impl Fn(&PoolKey) -> bool) {
        self.lock().retain(|key, entry| {
            entry.conns.retain(|c| !c.closed.load(Ordering::Acquire));
            (!entry.conns.is_empty() || entry.dialing > 0) && keep(key)
        });
    }

    /// Keys with a pooled connection.
    pub fn keys(&self) -> usize {
        self.lock().values().filter(|e| !e.conns.is_empty()).count()
    }

    /// Connections currently pooled.
    pub fn len(&self) -> usize {
        self.lock().values().map(|e| e.conns.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a stream uses a live connection (the least busy: idle, or
    /// busy when no more may be opened), dials a new one (taking a dial
    /// slot), or waits for the dials under way. After a wait it dials
    /// rather than wait again.
    fn choose(&self, key: &PoolKey, waited: bool) -> Choice {
        let mut pool = self.lock();
        let entry = pool.entry(key.clone()).or_default();
        entry.conns.retain(|c| !c.closed.load(Ordering::Acquire));
        let full = entry.conns.len() + entry.dialing >= self.max_per_key;
        let least = entry
            .conns
            .iter()
            .min_by_key(|c| c.active.load(Ordering::Relaxed));
        match least {
            Some(c) if full || c.active.load(Ordering::Relaxed) == 0 => {
                Choice::Use(c.sender.clone(), c.active.clone())
            }
            None if full && !waited => Choice::Wait,
            _ => {
                entry.dialing += 1;
                Choice::Dial
            }
        }
    }

    /// The least busy live connection, however busy.
    fn least_busy(&self, key: &PoolKey) -> Option<(Sender, Arc<AtomicUsize>)> {
        let mut pool = self.lock();
        let entry = pool.get_mut(key)?;
        entry.conns.retain(|c| !c.closed.load(Ordering::Acquire));
        let least = entry
            .conns
            .iter()
            .min_by_key(|c| c.active.load(Ordering::Relaxed))?;
        Some((least.sender.clone(), least.active.clone()))
    }

    fn forget_closed(&self, key: &PoolKey) {
        let mut pool = self.lock();
        if let Some(entry) = pool.get_mut(key) {
            entry.conns.retain(|c| !c.closed.load(Ordering::Acquire));
            if entry.conns.is_empty() && entry.dialing == 0 {
                pool.remove(key);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PoolKey, Entry>> {
        self.connections.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A dial under way for a key, counted until it ends (however it ends:
/// the caller's timeout drops it mid-dial), when waiting streams look again.
struct DialSlot<'a> {
    pool: &'a Pool,
    key: &'a PoolKey,
}

impl<'a> DialSlot<'a> {
    fn take(pool: &'a Pool, key: &'a PoolKey) -> Self {
        pool.lock().entry(key.clone()).or_default().dialing += 1;
        Self { pool, key }
    }
}

impl Drop for DialSlot<'_> {
    fn drop(&mut self) {
        let mut pool = self.pool.lock();
        if let Some(entry) = pool.get_mut(self.key) {
            entry.dialing = entry.dialing.saturating_sub(1);
            if entry.conns.is_empty() && entry.dialing == 0 {
                pool.remove(self.key);
            }
        }
        drop(pool);
        self.pool.dialed.notify_waiters();
    }
}

/// Opens a tunnel over `io` (itself a tunnel through an east-west
/// gateway): a TLS session and HTTP/2 connection of its own, used for this
/// one CONNECT and closed with it. `addr` names the far end in errors;
/// `claims` tell the destination where the client is. Returns
/// the tunnel and the identity the far end proved.
pub async fn connect_over<T>(
    io: T,
    addr: SocketAddr,
    authority: &Authority,
    claims: Claims<'_>,
    tls: Arc<ClientConfig>,
) -> Result<(Tunnel, Identity), Error>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, _closed, peer) = handshake(addr, tls, io, false).await?;
    let tunnel = open_stream(
        sender,
        addr,
        authority,
        claims,
        Arc::new(AtomicUsize::new(0)),
    )
    .await?;
    Ok((tunnel, peer))
}

/// Sends a CONNECT for `authority` and returns the tunnel without waiting
/// for the answer.
async fn open_stream(
    sender: Sender,
    addr: SocketAddr,
    authority: &Authority,
    claims: Claims<'_>,
    active: Arc<AtomicUsize>,
) -> Result<Tunnel, Error> {
    // Counted from the start, so concurrent opens spread over connections.
    let active = Active::count(active);
    let h2_err = |source| Error::H2 { addr, source };
    let mut sender = sender.ready().await.map_err(h2_err)?;
    let mut request = Request::builder()
        .method(Method::CONNECT)
        .uri(authority.to_string());
    for (name, value) in claims.to_headers() {
        request = request.header(name, value);
    }
    let (response, send) = sender
        .send_request(request.body(())?, false)
        .map_err(h2_err)?;
    Ok(Tunnel::opened(
        send,
        response,
        authority.to_string(),
        active,
    ))
}

async fn handshake<T>(
    addr: SocketAddr,
    tls: Arc<ClientConfig>,
    io: T,
    coalesce: bool,
) -> Result<(Sender, Arc<AtomicBool>, Identity), Error>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // The verifier checks the SPIFFE identity, not this name.
    let name = ServerName::IpAddress(addr.ip().into());
    let stream = TlsConnector::from(tls)
        .connect(name, io)
        .await
        .map_err(|source| Error::Tls { addr, source })?;
    // The verifier accepted it, so it is there.
    let peer = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .map(strait_identity::tls::identity_of)
        .transpose()?
        .ok_or_else(|| Error::Tls {
            addr,
            source: io::Error::other("the peer presented no certificate"),
        })?;
    let (sender, connection) = h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .initial_max_send_streams(STREAMS_PER_CONNECTION as usize)
        .handshake::<_, Bytes>(crate::coalesce::Coalesce::new(stream, coalesce))
        .await
        .map_err(|source| Error::H2 { addr, source })?;
    let closed = Arc::new(AtomicBool::new(false));
    let ended = closed.clone();
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            debug!(%addr, %err, "HBONE connection ended");
        }
        ended.store(true, Ordering::Release);
    });
    Ok((sender, closed, peer))
}
