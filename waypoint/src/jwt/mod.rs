//! RequestAuthentication at the waypoint, as Istio has Envoy's `jwt_authn`
//! do it: each attached rule (an issuer, its keys, where its tokens are)
//! looks for a token where it was told to (by default `Authorization:
//! Bearer` and the `access_token` parameter); a request with no token at
//! all passes without a request principal (a policy may then require one);
//! a request whose tokens no rule verifies is refused, 401. A verified
//! token's claims are what policies see as `request.auth.*`; the token
//! leaves the request unless `forwardOriginalToken`, and the rule's
//! payload and claim headers are set (any the client sent are removed
//! first, so they cannot be forged).
mod fetch;
mod keys;

use std::time::Duration;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use hyper::{
    HeaderMap,
    header::{self, HeaderName, HeaderValue},
    http::request::Parts,
};
use jsonwebtoken::{Algorithm, Validation, errors::ErrorKind};
pub use keys::{Keys, Source};
use serde_json::Value;
use strait_config::{
    Config,
    authz::{RequestAuth, WaypointScope},
    manifest::security::JwtRule,
};

/// Envoy's allowance for clocks apart (`clock_skew_seconds`).
const CLOCK_SKEW: u64 = 60;
/// How long a key set's fetch may take, unless the rule says.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Claims read as lists of words, besides the rule's
/// `spaceDelimitedClaims` (as Istio reads them).
const SPACE_DELIMITED: [&str; 2] = ["scope", "permission"];

/// Where a token was found.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Location {
    Header(String),
    Param(String),
    Cookie(String),
}

/// Why a request's token was refused, in Envoy's words.
#[derive(Debug)]
pub struct Refused {
    pub why: String,
    /// 403 rather than 401: the token is good but not for this audience
    /// (as Envoy answers).
    pub forbidden: bool,
}

impl From<String> for Refused {
    fn from(why: String) -> Self {
        Self {
            why,
            forbidden: false,
        }
    }
}

impl From<&str> for Refused {
    fn from(why: &str) -> Self {
        why.to_string().into()
    }
}

/// The outcome for a request: the verified token's claims, or none.
pub type Verdict = Result<Option<RequestAuth>, Refused>;

/// Verifies `parts`'s tokens against the rules attached for `scope`, and
/// edits the request as the verifying rule says.
pub async fn authenticate(
    keys: &Keys,
    config: &Config,
    scope: WaypointScope<'_>,
    parts: &mut Parts,
) -> Verdict {
    let rules: Vec<&JwtRule> = config
        .waypoint_request_authentications(scope)
        .flat_map(|r| &r.spec.jwt_rules)
        .collect();
    if rules.is_empty() {
        return Ok(None);
    }
    for rule in &rules {
        for name in output_headers(rule) {
            parts.headers.remove(name.as_str());
        }
    }
    let mut failure = None;
    for rule in &rules {
        for (location, token) in tokens(rule, parts) {
            match verify(keys, rule, &token).await {
                Ok((payload, claims)) => {
                    edit(rule, parts, &location, payload, &claims);
                    return Ok(Some(request_auth(rule, claims)));
                }
                Err(why) => {
                    failure.get_or_insert(why);
                }
            }
        }
    }
    match failure {
        // Some token was there, and no rule verified it.
        Some(why) => Err(why),
        None => Ok(None),
    }
}

/// The tokens `rule` looks for, where it finds them.
fn tokens(rule: &JwtRule, parts: &Parts) -> Vec<(Location, String)> {
    let mut found = Vec::new();
    let defaults =
        rule.from_headers.is_empty() && rule.from_params.is_empty() && rule.from_cookies.is_empty();
    let headers: Vec<(String, String)> = if defaults {
        vec![("authorization".into(), "Bearer ".into())]
    } else {
        rule.from_headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    h.prefix.clone().unwrap_or_default(),
                )
            })
            .collect()
    };
    for (name, prefix) in headers {
        for value in parts.headers.get_all(name.as_str()) {
            let Ok(value) = value.to_str() else { continue };
            let token = if defaults {
                // `Bearer` in any case, as Envoy's default reads it.
                value
                    .get(..prefix.len())
                    .filter(|p| p.eq_ignore_ascii_case(&prefix))
                    .map(|_| &value[prefix.len()..])
            } else {
                value.strip_prefix(prefix.as_str())
            };
            if let Some(token) = token.map(str::trim).filter(|t| !t.is_empty()) {
                found.push((Location::Header(name.clone()), token.to_string()));
            }
        }
    }
    let params: Vec<String> = if defaults {
        vec!["access_token".into()]
    } else {
        rule.from_params.clone()
    };
    for (key, value) in query_pairs(parts.uri.query().unwrap_or("")) {
        if params.contains(&key) && !value.is_empty() {
            found.push((Location::Param(key), value));
        }
    }
    for (name, value) in cookies(&parts.headers) {
        if rule.from_cookies.contains(&name) && !value.is_empty() {
            found.push((Location::Cookie(name), value));
        }
    }
    found
}

fn query_pairs(query: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn cookies(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| {
            let (k, v) = c.trim().split_once('=')?;
            Some((k.to_string(), v.trim_matches('"').to_string()))
        })
        .collect()
}

/// The token's payload (as sent, base64url) and claims, if `rule` verifies
/// it; else why not, in Envoy's words.
async fn verify(keys: &Keys, rule: &JwtRule, token: &str) -> Result<(String, Value), Refused> {
    let sections: Vec<&str> = token.split('.').collect();
    let [_, payload, _] = sections[..] else {
        return Err(
            "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
                .into(),
        );
    };
    // `alg: none` and unknown algorithms fail here.
    let header = jsonwebtoken::decode_header(token).map_err(|_| {
        "Jwt header is an invalid JSON or names an unsupported algorithm".to_string()
    })?;
    if matches!(
        header.alg,
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
    ) {
        return Err("Jwt verification fails: HMAC (a shared secret) is not accepted".into());
    }
    let claims: Value = URL_SAFE_NO_PAD
        .decode(payload)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .filter(Value::is_object)
        .ok_or("Jwt payload is an invalid JSON")?;
    let issuer = claims.get("iss").and_then(Value::as_str).unwrap_or("");
    if !rule.issuer.is_empty() && rule.issuer != issuer {
        return Err("Jwt issuer is not configured".into());
    }
    if !rule.audiences.is_empty() {
        let audiences = strings(claims.get("aud"));
        if !audiences.iter().any(|a| rule.audiences.contains(a)) {
            return Err(Refused {
                why: "Audiences in Jwt are not allowed".into(),
                forbidden: true,
            });
        }
    }
    let timeout = rule
        .timeout
        .as_deref()
        .and_then(|t| strait_config::duration::parse(t).ok())
        .unwrap_or(FETCH_TIMEOUT);
    let source = match (&rule.jwks, &rule.jwks_uri) {
        (Some(jwks), _) => Source::Inline(jwks),
        (None, Some(uri)) => Source::Uri(uri),
        (None, None) => Source::Discovery(&rule.issuer),
    };
    let set = keys
        .get(source, timeout)
        .await
        .map_err(|err| format!("Jwks remote fetch is failed: {err}"))?;
    let mut validation = Validation::new(header.alg);
    validation.leeway = CLOCK_SKEW;
    validation.validate_nbf = true;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let mut last = "Jwks doesn't have key to match kid or alg from Jwt";
    let fitting = set
        .iter()
        .filter(|k| header.kid.is_none() || k.kid == header.kid)
        .filter(|k| k.fits(header.alg));
    for key in fitting {
        match jsonwebtoken::decode::<Value>(token, &key.key, &validation) {
            Ok(_) => return Ok((payload.to_string(), claims)),
            Err(err) => {
                last = match err.kind() {
                    ErrorKind::ExpiredSignature => "Jwt is expired",
                    ErrorKind::ImmatureSignature => "Jwt not yet valid",
                    _ => "Jwt verification fails",
                };
                // The signature held: the times are what failed.
                if matches!(
                    err.kind(),
                    ErrorKind::ExpiredSignature | ErrorKind::ImmatureSignature
                ) {
                    break;
                }
            }
        }
    }
    Err(last.into())
}

/// A claim as strings: a string, or the strings of a list.
fn strings(claim: Option<&Value>) -> Vec<String> {
    match claim {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    }
}

/// The headers `rule` writes: set from the token, never from the client.
fn output_headers(rule: &JwtRule) -> Vec<String> {
    rule.output_payload_to_header
        .iter()
        .cloned()
        .chain(
            rule.output_claim_to_headers
                .iter()
                .map(|c| c.header.clone()),
        )
        .map(|h| h.to_ascii_lowercase())
        .collect()
}

/// The token out unless kept; the payload and claim headers in.
fn edit(rule: &JwtRule, parts: &mut Parts, location: &Location, payload: String, claims: &Value) {
    if rule.forward_original_token != Some(true)
        && let Location::Header(name) = location
    {
        parts.headers.remove(name.as_str());
    }
    let mut set = |name: &str, value: String| {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            parts.headers.insert(name, value);
        }
    };
    if let Some(header) = &rule.output_payload_to_header {
        set(header, payload);
    }
    for c in &rule.output_claim_to_headers {
        let value = claims
            .get(&c.claim)
            .or_else(|| c.claim.split('.').try_fold(claims, |v, part| v.get(part)));
        let text = match value {
            Some(Value::String(s)) => Some(s.clone()),
            Some(v @ (Value::Bool(_) | Value::Number(_))) => Some(v.to_string()),
            _ => None,
        };
        if let Some(text) = text {
            set(&c.header, text);
        }
    }
}

/// What policies see of a verified token.
fn request_auth(rule: &JwtRule, mut claims: Value) -> RequestAuth {
    let text = |key: &str| {
        claims
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let principal = format!("{}/{}", text("iss"), text("sub"));
    let presenter = claims
        .get("azp")
        .and_then(Value::as_str)
        .map(str::to_string);
    let audiences = strings(claims.get("aud"));
    if let Value::Object(map) = &mut claims {
        let spaced = SPACE_DELIMITED
            .iter()
            .copied()
            .chain(rule.space_delimited_claims.iter().map(String::as_str));
        for key in spaced {
            if let Some(Value::String(words)) = map.get(key)
                && words.contains(' ')
            {
                let list = words
                    .split(' ')
                    .filter(|w| !w.is_empty())
                    .map(|w| Value::String(w.to_string()))
                    .collect();
                map.insert(key.to_string(), Value::Array(list));
            }
        }
    }
    RequestAuth {
        principal,
        audiences,
        presenter,
        claims,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut request = hyper::Request::builder().uri(uri);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.body(()).unwrap().into_parts().0
    }

    #[test]
    fn tokens_are_found_where_the_rule_says() {
        let rule = |yaml: &str| -> JwtRule { serde_json::from_str(yaml).unwrap() };
        // Defaults: `Authorization: Bearer` (any case) and `access_token`.
        let default = rule(r#"{"issuer": "i"}"#);
        let found = tokens(
            &default,
            &parts("/x?access_token=q1&b=2", &[("authorization", "bearer h1")]),
        );
        assert_eq!(
            found,
            vec![
                (Location::Header("authorization".into()), "h1".into()),
                (Location::Param("access_token".into()), "q1".into())
            ]
        );
        assert!(tokens(&default, &parts("/x", &[("authorization", "Basic abc")])).is_empty());
        // Configured: a header with its prefix, a parameter, a cookie; the
        // defaults no longer apply.
        let own = rule(
            r#"{"issuer": "i", "fromHeaders": [{"name": "x-jwt", "prefix": "Token "}],
                "fromParams": ["t"], "fromCookies": ["session"]}"#,
        );
        let found = tokens(
            &own,
            &parts(
                "/x?t=p1&access_token=ignored",
                &[
                    ("x-jwt", "Token h2"),
                    ("authorization", "Bearer ignored"),
                    ("cookie", "a=1; session=c1"),
                ],
            ),
        );
        assert_eq!(
            found,
            vec![
                (Location::Header("x-jwt".into()), "h2".into()),
                (Location::Param("t".into()), "p1".into()),
                (Location::Cookie("session".into()), "c1".into())
            ]
        );
        assert!(
            tokens(&own, &parts("/x", &[("x-jwt", "h3")])).is_empty(),
            "no prefix"
        );
    }

    #[test]
    fn query_values_are_decoded() {
        assert_eq!(
            query_pairs("a=1&access_token=x%2Ey+z&b&c=100%"),
            vec![
                ("a".to_string(), "1".to_string()),
                ("access_token".to_string(), "x.y z".to_string()),
                ("b".to_string(), String::new()),
                ("c".to_string(), "100%".to_string()),
            ]
        );
    }
}
