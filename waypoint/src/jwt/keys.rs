//! The keys a RequestAuthentication's rule verifies tokens with: its inline
//! `jwks`, or what its `jwksUri` serves, fetched on first use, kept, and
//! fetched again in the background once older than the refresh interval
//! (so a rotated key is picked up without a restart, and a request never
//! waits on a refresh). Keys only for signatures, and never HMAC secrets:
//! a key set holding one cannot make a token with `alg: HS256` pass.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant},
};

use jsonwebtoken::{
    Algorithm, DecodingKey,
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse},
};
use tracing::{info, warn};

use super::fetch;

/// One verification key.
pub struct Key {
    pub kid: Option<String>,
    /// What the key says it is for (`alg`), if it says.
    alg: Option<KeyAlgorithm>,
    family: Family,
    pub key: DecodingKey,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Family {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl Key {
    /// Whether a token signed with `alg` may be checked with this key.
    pub fn fits(&self, alg: Algorithm) -> bool {
        let family = match alg {
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => Family::Rsa,
            Algorithm::ES256 => Family::P256,
            Algorithm::ES384 => Family::P384,
            Algorithm::EdDSA => Family::Ed25519,
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => return false,
        };
        family == self.family && self.alg.is_none_or(|a| names(a, alg))
    }
}

/// Whether a key's `alg` is `alg`.
fn names(key: KeyAlgorithm, alg: Algorithm) -> bool {
    use Algorithm as A;
    use KeyAlgorithm as K;
    matches!(
        (key, alg),
        (K::RS256, A::RS256)
            | (K::RS384, A::RS384)
            | (K::RS512, A::RS512)
            | (K::PS256, A::PS256)
            | (K::PS384, A::PS384)
            | (K::PS512, A::PS512)
            | (K::ES256, A::ES256)
            | (K::ES384, A::ES384)
            | (K::EdDSA, A::EdDSA)
    )
}

/// The signature keys of a JWKS document; keys it cannot use (HMAC,
/// encryption, unknown types or curves) are left out.
pub fn parse(document: &[u8]) -> Result<Vec<Key>, String> {
    let set: serde_json::Value =
        serde_json::from_slice(document).map_err(|e| format!("not a JSON Web Key Set: {e}"))?;
    let listed = set
        .get("keys")
        .and_then(serde_json::Value::as_array)
        .ok_or("not a JSON Web Key Set: no `keys` list")?;
    let mut keys = Vec::new();
    for value in listed.iter().cloned() {
        let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
            continue;
        };
        if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
            continue;
        }
        let family = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Family::Rsa,
            AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
                EllipticCurve::P256 => Family::P256,
                EllipticCurve::P384 => Family::P384,
                _ => continue,
            },
            AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
                Family::Ed25519
            }
            _ => continue,
        };
        let Ok(key) = DecodingKey::from_jwk(&jwk) else {
            continue;
        };
        keys.push(Key {
            kid: jwk.common.key_id.clone(),
            alg: jwk.common.key_algorithm,
            family,
            key,
        });
    }
    Ok(keys)
}

/// Where a rule's keys come from.
#[derive(Clone, Copy)]
pub enum Source<'a> {
    Inline(&'a str),
    Uri(&'a str),
    /// OpenID discovery: the `jwks_uri` of the issuer's
    /// `/.well-known/openid-configuration`.
    Discovery(&'a str),
}

struct Entry {
    keys: RwLock<Option<(Arc<Vec<Key>>, Instant)>>,
    /// Held while fetching: one fetch per key set at a time.
    fetching: Arc<tokio::sync::Mutex<()>>,
}

/// Key sets by source, shared by the waypoint's requests.
pub struct Keys {
    sets: Mutex<HashMap<String, Arc<Entry>>>,
    refresh: Duration,
}

impl Keys {
    pub fn new(refresh: Duration) -> Self {
        Self {
            sets: Mutex::new(HashMap::new()),
            refresh,
        }
    }

    /// The keys of `source`: fetched now if never fetched (within
    /// `timeout`), else as kept (a refresh starts in the background when
    /// they are old).
    pub async fn get(
        &self,
        source: Source<'_>,
        timeout: Duration,
    ) -> Result<Arc<Vec<Key>>, String> {
        let id = match source {
            Source::Inline(jwks) => format!("inline:{jwks}"),
            Source::Uri(uri) => format!("uri:{uri}"),
            Source::Discovery(issuer) => format!("issuer:{issuer}"),
        };
        let entry = self
            .lock()
            .entry(id)
            .or_insert_with(|| {
                Arc::new(Entry {
                    keys: RwLock::new(None),
                    fetching: Arc::new(tokio::sync::Mutex::new(())),
                })
            })
            .clone();
        let kept = entry.keys.read().unwrap_or_else(|p| p.into_inner()).clone();
        if let Source::Inline(jwks) = source {
            if let Some((keys, _)) = kept {
                return Ok(keys);
            }
            let keys = Arc::new(parse(jwks.as_bytes())?);
            *entry.keys.write().unwrap_or_else(|p| p.into_inner()) =
                Some((keys.clone(), Instant::now()));
            return Ok(keys);
        }
        if let Some((keys, fetched)) = kept {
            if fetched.elapsed() >= self.refresh
                && let Ok(guard) = entry.fetching.clone().try_lock_owned()
            {
                let (entry, remote) = (entry.clone(), Remote::of(source));
                tokio::spawn(async move {
                    refresh(&entry, &remote, timeout).await;
                    drop(guard);
                });
            }
            return Ok(keys);
        }
        let _fetching = entry.fetching.lock().await;
        if let Some((keys, _)) = entry.keys.read().unwrap_or_else(|p| p.into_inner()).clone() {
            return Ok(keys);
        }
        let remote = Remote::of(source);
        let keys = Arc::new(remote.load(timeout).await?);
        info!(source = %remote, keys = keys.len(), "JWKS fetched");
        *entry.keys.write().unwrap_or_else(|p| p.into_inner()) =
            Some((keys.clone(), Instant::now()));
        Ok(keys)
    }

    /// Forgets key sets no rule names any more.
    pub fn retain(&self, wanted: impl Fn(Source<'_>) -> bool) {
        self.lock().retain(|id, _| {
            if let Some(jwks) = id.strip_prefix("inline:") {
                wanted(Source::Inline(jwks))
            } else if let Some(uri) = id.strip_prefix("uri:") {
                wanted(Source::Uri(uri))
            } else {
                id.strip_prefix("issuer:")
                    .is_some_and(|issuer| wanted(Source::Discovery(issuer)))
            }
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Entry>>> {
        self.sets.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A key set fetched from elsewhere.
enum Remote {
    Uri(String),
    Discovery(String),
}

impl std::fmt::Display for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Remote::Uri(uri) => f.write_str(uri),
            Remote::Discovery(issuer) => write!(f, "{issuer} (OpenID discovery)"),
        }
    }
}

impl Remote {
    fn of(source: Source<'_>) -> Self {
        match source {
            Source::Uri(uri) | Source::Inline(uri) => Remote::Uri(uri.to_string()),
            Source::Discovery(issuer) => Remote::Discovery(issuer.to_string()),
        }
    }

    async fn load(&self, timeout: Duration) -> Result<Vec<Key>, String> {
        let uri = match self {
            Remote::Uri(uri) => uri.clone(),
            Remote::Discovery(issuer) => {
                let at = format!(
                    "{}/.well-known/openid-configuration",
                    issuer.trim_end_matches('/')
                );
                let document: serde_json::Value =
                    serde_json::from_slice(&fetch::get(&at, timeout).await?)
                        .map_err(|e| format!("{at}: not JSON: {e}"))?;
                document
                    .get("jwks_uri")
                    .and_then(serde_json::Value::as_str)
                    .ok_or_else(|| format!("{at}: no jwks_uri"))?
                    .to_string()
            }
        };
        parse(&fetch::get(&uri, timeout).await?)
    }
}

/// Fetches the key set again; on failure the kept keys stay, and are tried
/// again after the next interval.
async fn refresh(entry: &Entry, remote: &Remote, timeout: Duration) {
    let fetched = remote.load(timeout).await;
    let mut keys = entry.keys.write().unwrap_or_else(|p| p.into_inner());
    match fetched {
        Ok(fresh) => {
            info!(source = %remote, keys = fresh.len(), "JWKS refreshed");
            *keys = Some((Arc::new(fresh), Instant::now()));
        }
        Err(err) => {
            warn!(source = %remote, %err, "JWKS refresh failed: keeping the keys fetched before");
            if let Some((_, fetched)) = keys.as_mut() {
                *fetched = Instant::now();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_signature_keys_are_kept() {
        let set = br#"{"keys": [
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            {"kty": "EC", "crv": "P-256", "kid": "ec", "use": "sig",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "EC", "crv": "P-256", "kid": "enc", "use": "enc",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "XYZ", "kid": "unknown"}
        ]}"#;
        let keys = parse(set).unwrap();
        let kids: Vec<_> = keys.iter().map(|k| k.kid.as_deref()).collect();
        assert_eq!(kids, vec![Some("ec")]);
        assert!(keys[0].fits(Algorithm::ES256));
        assert!(!keys[0].fits(Algorithm::ES384));
        assert!(!keys[0].fits(Algorithm::HS256));
        assert!(!keys[0].fits(Algorithm::RS256));
        assert!(parse(b"[1, 2]").is_err());
    }
}
