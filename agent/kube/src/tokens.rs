//! Who is asking, from a ServiceAccount token: the API server's
//! TokenReview says whether the token is valid, for which audience, and
//! which pod it is bound to; that pod's node is the asker's node. A token
//! of the agents' own ServiceAccount makes the asker that node's agent;
//! any other is only the pod it is bound to (any pod may request a token
//! for any audience), and the CA decides what such a pod may hold.
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

#[derive(Debug, thiserror::Error)]
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
        })
    }

    /// The agent, or the pod, `token` belongs to.
    pub async fn asker(&self, token: &str) -> Result<Asker, TokenError> {
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
