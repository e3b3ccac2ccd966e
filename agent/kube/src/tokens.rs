//! Who is asking, from a ServiceAccount token: the API server's
//! TokenReview says whether the token is valid, for which audience, and
//! which pod it is bound to; that pod's node is the asker's node. A token
//! of the agents' own ServiceAccount makes the asker that node's agent;
//! any other is only the pod it is bound to (any pod may request a token
//! for any audience), and the CA decides what such a pod may hold.
use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant, SystemTime},
};

use base64::Engine;
use k8s_openapi::api::{
    authentication::v1::{TokenReview, TokenReviewSpec},
    core::v1::Pod,
};
use kube::{
    Client,
    api::{Api, PostParams},
};

const POD_NAME: &str = "authentication.kubernetes.io/pod-name";
const POD_UID: &str = "authentication.kubernetes.io/pod-uid";

#[derive(Clone, Debug, thiserror::Error)]
pub enum TokenError {
    /// The token does not make the asker an agent of a node.
    #[error("{0}")]
    Refused(String),
    /// The API server could not be asked.
    #[error("the API server: {0}")]
    Unavailable(String),
}

/// Who a valid token belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Asker {
    /// The agent of `node`.
    Agent { node: String },
    /// Another pod, on `node`, running as `service_account`.
    Pod {
        node: String,
        namespace: String,
        name: String,
        service_account: String,
    },
}

impl Asker {
    pub fn node(&self) -> &str {
        match self {
            Asker::Agent { node } | Asker::Pod { node, .. } => node,
        }
    }
}

pub struct TokenReviewer {
    client: Client,
    audience: String,
    /// `system:serviceaccount:<namespace>:<name>` of the agents.
    agent: String,
    /// Recent answers by the token's SHA-256: a client that sends the
    /// same token again (or a flood of one bad token) costs no API call.
    recent: Mutex<Recent>,
}

/// Answers by token hash, with when they were given.
type Recent = HashMap<[u8; 32], (Instant, Result<Asker, TokenError>)>;

/// How long an answer about a token is reused. Short: a pod deleted since
/// keeps its token's answer this long at most (what it may hold is
/// decided again for every request, from the CA's view of the cluster).
const REUSE: Duration = Duration::from_secs(10);
/// Answers kept at most.
const RECENT: usize = 4096;

/// How a token was checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Checked {
    /// By a TokenReview (and, for a valid one, a read of its pod).
    Reviewed,
    /// By the answer to the same token moments ago.
    Cached,
    /// Refused without asking: not a JSON Web Token, not for this
    /// audience, or expired.
    Early,
}

impl Checked {
    pub fn as_str(self) -> &'static str {
        match self {
            Checked::Reviewed => "reviewed",
            Checked::Cached => "cached",
            Checked::Early => "refused_early",
        }
    }
}

impl TokenReviewer {
    /// `agent` is the agents' ServiceAccount as `namespace/name`.
    pub fn new(client: Client, audience: &str, agent: &str) -> Result<Self, String> {
        let (namespace, name) = agent
            .split_once('/')
            .filter(|(ns, n)| !ns.is_empty() && !n.is_empty() && !n.contains('/'))
            .ok_or_else(|| format!("{agent:?} is not namespace/name"))?;
        Ok(Self {
            client,
            audience: audience.to_string(),
            agent: format!("system:serviceaccount:{namespace}:{name}"),
            recent: Mutex::default(),
        })
    }

    /// The agent, or the pod, `token` belongs to, and how that was found.
    pub async fn asker(&self, token: &str) -> (Result<Asker, TokenError>, Checked) {
        if let Err(why) = plausible(token, &self.audience, SystemTime::now()) {
            return (Err(TokenError::Refused(why)), Checked::Early);
        }
        let key: [u8; 32] = {
            let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
            let mut key = [0u8; 32];
            key.copy_from_slice(digest.as_ref());
            key
        };
        let now = Instant::now();
        if let Some((at, answer)) = self.recent().get(&key)
            && now.duration_since(*at) < REUSE
        {
            return (answer.clone(), Checked::Cached);
        }
        let answer = self.review(token).await;
        // An API server that could not be asked says nothing of the token.
        if !matches!(answer, Err(TokenError::Unavailable(_))) {
            let mut recent = self.recent();
            if recent.len() >= RECENT {
                recent.retain(|_, (at, _)| now.duration_since(*at) < REUSE);
            }
            if recent.len() >= RECENT
                && let Some(oldest) = recent
                    .iter()
                    .min_by_key(|(_, (at, _))| *at)
                    .map(|(k, _)| *k)
            {
                recent.remove(&oldest);
            }
            recent.insert(key, (now, answer.clone()));
        }
        (answer, Checked::Reviewed)
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, Recent> {
        self.recent.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The TokenReview, then the pod the token is bound to.
    async fn review(&self, token: &str) -> Result<Asker, TokenError> {
        let refused = |why: &str| Err(TokenError::Refused(why.to_string()));
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_string(),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..Default::default()
        };
        let reviews: Api<TokenReview> = Api::all(self.client.clone());
        let answer = reviews
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| TokenError::Unavailable(e.to_string()))?;
        let status = answer.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            let why = status.error.unwrap_or_else(|| "not authenticated".into());
            return Err(TokenError::Refused(format!("the token: {why}")));
        }
        if !status
            .audiences
            .unwrap_or_default()
            .contains(&self.audience)
        {
            return refused(&format!("the token is not for audience {}", self.audience));
        }
        let user = status.user.unwrap_or_default();
        let username = user.username.unwrap_or_default();
        let Some((namespace, service_account)) = username
            .strip_prefix("system:serviceaccount:")
            .and_then(|rest| rest.split_once(':'))
            .map(|(ns, sa)| (ns.to_string(), sa.to_string()))
        else {
            return refused(&format!("{username} is not a ServiceAccount"));
        };
        let extra = user.extra.unwrap_or_default();
        let first = |key: &str| extra.get(key).and_then(|v| v.first()).cloned();
        let (Some(pod_name), Some(pod_uid)) = (first(POD_NAME), first(POD_UID)) else {
            return refused("the token is not bound to a pod");
        };
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        let pod = match pods.get_opt(&pod_name).await {
            Ok(Some(pod)) => pod,
            Ok(None) => return refused(&format!("pod {namespace}/{pod_name} does not exist")),
            Err(e) => return Err(TokenError::Unavailable(e.to_string())),
        };
        if pod.metadata.uid.as_deref() != Some(pod_uid.as_str()) {
            return refused(&format!(
                "pod {namespace}/{pod_name} is not the one the token is bound to"
            ));
        }
        let phase = pod.status.and_then(|s| s.phase).unwrap_or_default();
        if phase == "Succeeded" || phase == "Failed" {
            return refused(&format!("pod {namespace}/{pod_name} has finished"));
        }
        let node = match pod.spec.and_then(|s| s.node_name) {
            Some(node) if !node.is_empty() => node,
            _ => {
                return refused(&format!(
                    "pod {namespace}/{pod_name} is not scheduled on a node"
                ));
            }
        };
        Ok(if username == self.agent {
            Asker::Agent { node }
        } else {
            Asker::Pod {
                node,
                namespace,
                name: pod_name,
                service_account,
            }
        })
    }
}

/// Whether `token` can be a ServiceAccount token for `audience` at `now`,
/// read without checking its signature (the TokenReview does that): a
/// JSON Web Token whose audience includes `audience` and which has not
/// expired. What fails this is refused without asking the API server.
fn plausible(token: &str, audience: &str, now: SystemTime) -> Result<(), String> {
    let not_jwt = || "the token is not a JSON Web Token".to_string();
    let mut parts = token.split('.');
    let (Some(_header), Some(payload), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(not_jwt());
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| not_jwt())?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).map_err(|_| not_jwt())?;
    let audiences: Vec<&str> = match &claims["aud"] {
        serde_json::Value::String(one) => vec![one.as_str()],
        serde_json::Value::Array(all) => all.iter().filter_map(serde_json::Value::as_str).collect(),
        _ => Vec::new(),
    };
    if !audiences.contains(&audience) {
        return Err(format!("the token is not for audience {audience}"));
    }
    if let Some(exp) = claims["exp"].as_u64() {
        let expired = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|since| since.as_secs() >= exp)
            .unwrap_or(false);
        if expired {
            return Err("the token has expired".into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: &str) -> String {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.c2ln", b64(r#"{"alg":"RS256"}"#), b64(claims))
    }

    #[test]
    fn only_plausible_tokens_are_reviewed() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        assert_eq!(
            plausible(
                &jwt(r#"{"aud":["strait-ca"],"exp":2000000600}"#),
                "strait-ca",
                now
            ),
            Ok(())
        );
        assert_eq!(
            plausible(&jwt(r#"{"aud":"strait-ca"}"#), "strait-ca", now),
            Ok(())
        );
        for (token, why) in [
            ("not-a-token".to_string(), "not a JSON Web Token"),
            ("a.b.c.d".to_string(), "not a JSON Web Token"),
            ("a.!!.c".to_string(), "not a JSON Web Token"),
            (
                jwt(r#"{"aud":["elsewhere"]}"#),
                "not for audience strait-ca",
            ),
            (jwt(r#"{"exp":2000000600}"#), "not for audience strait-ca"),
            (
                jwt(r#"{"aud":["strait-ca"],"exp":1999999999}"#),
                "has expired",
            ),
        ] {
            let err = plausible(&token, "strait-ca", now).unwrap_err();
            assert!(err.contains(why), "{token}: {err}");
        }
    }
}
