//! `consistentHash` at L7 (session affinity): the key of one request, from
//! the header, cookie or query parameter the DestinationRule names, or the
//! client's address. A cookie with a `ttl` that the request lacks is made
//! up and set on the answer, so the client's next requests carry it (as
//! Envoy does).
use std::net::IpAddr;

use hyper::{
    HeaderMap,
    header::{self, HeaderValue},
};
use strait_config::manifest::networking::ConsistentHash;

/// A request's hash key, and the cookie its answer sets, if any.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Key {
    pub key: Option<String>,
    pub set_cookie: Option<HeaderValue>,
}

pub fn key_of(
    hash: &ConsistentHash,
    headers: &HeaderMap,
    query: Option<&str>,
    client: IpAddr,
) -> Key {
    if let Some(name) = &hash.http_header_name {
        let key = headers
            .get(name.as_str())
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        return Key {
            key,
            set_cookie: None,
        };
    }
    if let Some(cookie) = &hash.http_cookie {
        if let Some(value) = cookie_value(headers, &cookie.name) {
            return Key {
                key: Some(value),
                set_cookie: None,
            };
        }
        let Some(ttl) = cookie
            .ttl
            .as_deref()
            .and_then(|t| strait_config::duration::parse(t).ok())
        else {
            return Key::default();
        };
        let value = format!("{:016x}", fastrand::u64(..));
        let mut set = format!("{}={value}", cookie.name);
        if let Some(path) = &cookie.path {
            set.push_str(&format!("; Path={path}"));
        }
        if !ttl.is_zero() {
            set.push_str(&format!("; Max-Age={}", ttl.as_secs()));
        }
        set.push_str("; HttpOnly");
        return Key {
            key: Some(value),
            set_cookie: HeaderValue::from_str(&set).ok(),
        };
    }
    if let Some(name) = &hash.http_query_parameter_name {
        let key = query.and_then(|q| {
            q.split('&').find_map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                (k == name).then(|| v.to_string())
            })
        });
        return Key {
            key,
            set_cookie: None,
        };
    }
    if hash.use_source_ip == Some(true) {
        return Key {
            key: Some(client.to_string()),
            set_cookie: None,
        };
    }
    Key::default()
}

fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then(|| v.to_string())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(json: &str) -> ConsistentHash {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn each_kind_of_key_is_read_from_its_place() {
        let ip: IpAddr = "10.0.0.7".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("x-user", HeaderValue::from_static("jason"));
        headers.insert(header::COOKIE, HeaderValue::from_static("a=1; session=abc"));
        let by_header = key_of(&hash(r#"{"httpHeaderName": "x-user"}"#), &headers, None, ip);
        assert_eq!(by_header.key.as_deref(), Some("jason"));
        let by_cookie = key_of(
            &hash(r#"{"httpCookie": {"name": "session", "ttl": "0s"}}"#),
            &headers,
            None,
            ip,
        );
        assert_eq!(
            by_cookie,
            Key {
                key: Some("abc".into()),
                set_cookie: None
            }
        );
        let by_query = key_of(
            &hash(r#"{"httpQueryParameterName": "user"}"#),
            &headers,
            Some("x=1&user=kim"),
            ip,
        );
        assert_eq!(by_query.key.as_deref(), Some("kim"));
        let by_ip = key_of(&hash(r#"{"useSourceIp": true}"#), &headers, None, ip);
        assert_eq!(by_ip.key.as_deref(), Some("10.0.0.7"));
        // No such header: no key (least request, as Envoy falls back).
        let none = key_of(
            &hash(r#"{"httpHeaderName": "x-other"}"#),
            &headers,
            None,
            ip,
        );
        assert_eq!(none.key, None);
        // A cookie with a ttl the request lacks is made up and set.
        let made = key_of(
            &hash(r#"{"httpCookie": {"name": "user", "path": "/", "ttl": "1h"}}"#),
            &HeaderMap::new(),
            None,
            ip,
        );
        let set = made.set_cookie.unwrap();
        let set = set.to_str().unwrap();
        assert!(
            set.starts_with(&format!("user={}", made.key.unwrap())),
            "{set}"
        );
        assert!(set.ends_with("; Path=/; Max-Age=3600; HttpOnly"), "{set}");
    }
}
