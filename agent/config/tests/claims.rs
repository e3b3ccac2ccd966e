//! One workload per address in a network: a second claim to an address is
//! left out of the model (first come keeps it), named in the warnings, and
//! listed for its node's agent to show.
use std::path::Path;

use strait_config::check_text;

const MESH: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Namespace
metadata: {name: tenant, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: shop, creationTimestamp: '2026-12-05T10:00:00Z'}
spec: {nodeName: n1, serviceAccountName: a}
status: {phase: Running, podIP: 10.1.0.10}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: squat
  namespace: tenant
  annotations: {strait.dev/node: n1}
  creationTimestamp: '2026-12-01T00:00:00Z'
spec: {address: 10.1.0.10, serviceAccount: squat}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: late
  namespace: tenant
  annotations: {strait.dev/node: n1}
  creationTimestamp: '2026-12-05T12:00:00Z'
spec: {address: 10.1.0.20, serviceAccount: late}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: early
  namespace: shop
  annotations: {strait.dev/node: n1}
  creationTimestamp: '2026-12-05T11:00:00Z'
spec: {address: 10.1.0.20, serviceAccount: early}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: elsewhere, namespace: tenant}
spec: {address: 10.1.0.10, network: net9, serviceAccount: elsewhere}
";

#[test]
fn a_second_claim_to_an_address_is_left_out() {
    let (report, config) = check_text(Path::new("mesh.yaml"), MESH);
    let config = config.unwrap_or_else(|| panic!("{report}"));
    let kept: Vec<&str> = config.workloads.iter().map(|w| w.name.as_str()).collect();
    // A Pod's address is its own, even against an older WorkloadEntry;
    // between entries the older keeps it; another network's 10.1.0.10 is
    // another address.
    assert_eq!(kept, ["a", "early", "elsewhere"]);
    let refused: Vec<(&str, &str)> = config
        .refused_workloads
        .iter()
        .map(|r| (r.object.as_str(), r.reason.as_str()))
        .collect();
    assert_eq!(
        refused,
        [
            (
                "WorkloadEntry tenant/squat",
                "10.1.0.10 is already the address of Pod shop/a (first come keeps it): left out"
            ),
            (
                "WorkloadEntry tenant/late",
                "10.1.0.20 is already the address of WorkloadEntry shop/early (first come keeps it): left out"
            ),
        ]
    );
    assert!(
        config.warnings.iter().any(|w| w.starts_with("mesh.yaml:")
            && w.contains("WorkloadEntry tenant/squat: field spec.address: 10.1.0.10")),
        "{:#?}",
        config.warnings
    );
    // The address leads to the one that kept it.
    let at = |ip: &str| {
        config
            .workload_by_address(ip.parse().unwrap())
            .map(|w| w.name.as_str())
    };
    assert_eq!(at("10.1.0.10"), Some("a"));
    assert_eq!(at("10.1.0.20"), Some("early"));
}

#[test]
fn a_workload_address_must_reach_it_from_other_hosts() {
    for (address, why) in [
        ("127.0.0.1", "a loopback address"),
        ("::1", "a loopback address"),
        ("0.0.0.0", "the unspecified address"),
        ("224.0.0.1", "a multicast address"),
    ] {
        let yaml = format!(
            "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: w, namespace: shop}}\nspec: {{address: '{address}'}}\n"
        );
        let (report, config) = check_text(Path::new("bad.yaml"), &yaml);
        assert!(config.is_none(), "{address} accepted");
        let text = report.to_string();
        assert!(
            text.contains("spec.address") && text.contains(why),
            "{address}: {text}"
        );
    }
}
