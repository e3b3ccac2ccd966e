//! The server name a TLS client asks for (SNI), read from its ClientHello
//! without terminating TLS (rustls parses it), for VirtualService `tls`
//! routes. The bytes read stay in front of the stream for the endpoint.
use std::time::Duration;

use rustls::server::Acceptor;
use tokio::io::AsyncRead;

use crate::detect::Prefixed;

/// A ClientHello fits in one record (16 KiB) and its header; a client may
/// not make the waypoint hold more before it is routed.
const MAX_HELLO: usize = 16 * 1024 + 5;
/// How long the whole ClientHello may take to arrive.
const HELLO_WAIT: Duration = Duration::from_secs(5);

/// Whether the stream starts as TLS does: a handshake record.
pub fn looks_like_tls(first: &[u8]) -> bool {
    matches!(first, [0x16, 0x03, ..])
}

/// The ClientHello's server name; `None` when the stream is not TLS, the
/// hello names no server, is malformed, too large or too slow.
pub async fn server_name<S: AsyncRead + Unpin>(stream: &mut Prefixed<S>) -> Option<String> {
    tokio::time::timeout(HELLO_WAIT, read_hello(stream))
        .await
        .ok()
        .flatten()
}

async fn read_hello<S: AsyncRead + Unpin>(stream: &mut Prefixed<S>) -> Option<String> {
    let mut acceptor = Acceptor::default();
    let mut fed = 0;
    loop {
        while fed < stream.ahead().len() {
            let mut rest = &stream.ahead()[fed..];
            match acceptor.read_tls(&mut rest) {
                Ok(0) | Err(_) => return None,
                Ok(n) => fed += n,
            }
            match acceptor.accept() {
                Ok(Some(accepted)) => {
                    return accepted.client_hello().server_name().map(str::to_owned);
                }
                Ok(None) => {}
                Err(_) => return None,
            }
        }
        if !looks_like_tls(stream.ahead()) {
            return None;
        }
        if stream.read_ahead(MAX_HELLO).await.ok()? == 0 {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A real ClientHello for `name`, as rustls' client writes it.
    fn hello(name: &str) -> Vec<u8> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = rustls::ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let mut client =
            rustls::ClientConnection::new(Arc::new(config), name.to_string().try_into().unwrap())
                .unwrap();
        let mut out = Vec::new();
        client.write_tls(&mut out).unwrap();
        out
    }

    #[tokio::test]
    async fn the_server_name_is_read_and_the_hello_replayed() {
        let bytes = hello("a.shop.example");
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        // In two pieces, as a slow network would bring it.
        let (first, second) = bytes.split_at(7);
        client.write_all(first).await.unwrap();
        let (_, mut stream) = crate::detect::sniff(server).await.unwrap();
        client.write_all(second).await.unwrap();
        assert_eq!(
            server_name(&mut stream).await.as_deref(),
            Some("a.shop.example")
        );
        drop(client);
        let mut all = Vec::new();
        stream.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, bytes);
    }

    #[tokio::test]
    async fn what_is_not_a_hello_names_nothing() {
        for junk in [
            b"GET / HTTP/1.1\r\n\r\n".to_vec(),
            // A handshake record header announcing 16 KiB, then garbage.
            [&[0x16u8, 0x03, 0x01, 0x40, 0x00][..], &[0xff; 64][..]].concat(),
        ] {
            let (mut client, server) = tokio::io::duplex(64 * 1024);
            client.write_all(&junk).await.unwrap();
            drop(client);
            let (_, mut stream) = crate::detect::sniff(server).await.unwrap();
            assert_eq!(server_name(&mut stream).await, None, "{junk:?}");
        }
    }

    #[tokio::test]
    async fn an_endless_hello_is_not_held_past_its_bound() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let header = [0x16u8, 0x03, 0x01, 0xff, 0xff];
        client.write_all(&header).await.unwrap();
        let writer = tokio::spawn(async move {
            let junk = [0x01u8; 1024];
            for _ in 0..64 {
                if client.write_all(&junk).await.is_err() {
                    break;
                }
            }
            client
        });
        let (_, mut stream) = crate::detect::sniff(server).await.unwrap();
        assert_eq!(server_name(&mut stream).await, None);
        assert!(
            stream.ahead().len() <= MAX_HELLO,
            "{}",
            stream.ahead().len()
        );
        drop(writer);
    }
}
