//! The kinds the model reads, with the versions the directory source
//! accepts, newest first: the first one the cluster serves is watched.
use kube::{
    Client,
    api::{ApiResource, GroupVersionKind},
    discovery,
};

pub struct Kind {
    pub group: &'static str,
    pub versions: &'static [&'static str],
    pub kind: &'static str,
    pub plural: &'static str,
}

const NETWORKING: &[&str] = &["v1", "v1beta1", "v1alpha3"];
const SECURITY: &[&str] = &["v1", "v1beta1"];

/// The first kinds: what a remote cluster gives (its workloads, services
/// and east-west gateways; its Istio config is its own control plane's).
pub const DISCOVERY: usize = 5;

/// The first kinds: what an east-west gateway reads (where endpoints are,
/// what is exported, localities and DestinationRules), and so all its
/// ServiceAccount may read. The routes and policies after them are for the
/// node agents.
pub const GATEWAY_READS: usize = 9;

pub const KINDS: [Kind; 17] = [
    Kind::core("Namespace", "namespaces"),
    Kind::core("Node", "nodes"),
    Kind::core("Pod", "pods"),
    Kind::core("Service", "services"),
    Kind::istio(
        "gateway.networking.k8s.io",
        &["v1", "v1beta1"],
        "Gateway",
        "gateways",
    ),
    Kind::istio(
        "networking.istio.io",
        NETWORKING,
        "ServiceEntry",
        "serviceentries",
    ),
    Kind::istio(
        "networking.istio.io",
        NETWORKING,
        "WorkloadEntry",
        "workloadentries",
    ),
    Kind::istio(
        "networking.istio.io",
        NETWORKING,
        "WorkloadGroup",
        "workloadgroups",
    ),
    Kind::istio(
        "networking.istio.io",
        NETWORKING,
        "DestinationRule",
        "destinationrules",
    ),
    Kind::istio(
        "networking.istio.io",
        NETWORKING,
        "VirtualService",
        "virtualservices",
    ),
    Kind::istio("networking.istio.io", NETWORKING, "Gateway", "gateways"),
    Kind::istio(
        "security.istio.io",
        SECURITY,
        "PeerAuthentication",
        "peerauthentications",
    ),
    Kind::istio(
        "security.istio.io",
        SECURITY,
        "AuthorizationPolicy",
        "authorizationpolicies",
    ),
    Kind::istio(
        "security.istio.io",
        SECURITY,
        "RequestAuthentication",
        "requestauthentications",
    ),
    // Their rate-limit patches, for waypoints.
    Kind::istio(
        "networking.istio.io",
        &["v1alpha3"],
        "EnvoyFilter",
        "envoyfilters",
    ),
    // Watched where the Gateway API's CRDs are installed; waypoints apply
    // them.
    Kind::istio(
        "gateway.networking.k8s.io",
        &["v1", "v1beta1"],
        "HTTPRoute",
        "httproutes",
    ),
    Kind::istio(
        "gateway.networking.k8s.io",
        &["v1", "v1alpha2"],
        "GRPCRoute",
        "grpcroutes",
    ),
];

impl Kind {
    const fn core(kind: &'static str, plural: &'static str) -> Self {
        Self {
            group: "",
            versions: &["v1"],
            kind,
            plural,
        }
    }

    const fn istio(
        group: &'static str,
        versions: &'static [&'static str],
        kind: &'static str,
        plural: &'static str,
    ) -> Self {
        Self {
            group,
            versions,
            kind,
            plural,
        }
    }

    /// The resource to watch: the newest version the cluster serves, or
    /// `None` when it serves none (the CRD is not installed).
    pub async fn resource(&self, client: &Client) -> Option<ApiResource> {
        let served: Vec<String> = if self.group.is_empty() {
            vec!["v1".into()]
        } else {
            let group = discovery::group(client, self.group).await.ok()?;
            group
                .versions()
                .filter(|v| {
                    group
                        .versioned_resources(v)
                        .iter()
                        .any(|(resource, _)| resource.kind == self.kind)
                })
                .map(str::to_string)
                .collect()
        };
        let version = self
            .versions
            .iter()
            .find(|v| served.iter().any(|s| s == *v))?;
        let gvk = GroupVersionKind::gvk(self.group, version, self.kind);
        Some(ApiResource::from_gvk_with_plural(&gvk, self.plural))
    }
}
