//! Networks in the model: a workload's network (its own label, its
//! namespace's, its node's), which services other networks may reach
//! (`istio.io/global`), and east-west gateways (Gateway API Gateways of
//! class istio-east-west) with their addresses from the spec, the status
//! or the Service in front.
use std::{net::IpAddr, path::Path};

use strait_config::check_text;

const BASE: &str = "apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Namespace
metadata: {name: edge, labels: {istio.io/dataplane-mode: ambient, topology.istio.io/network: edge-net, istio.io/global: 'true'}}
---
apiVersion: v1
kind: Namespace
metadata: {name: istio-system}
---
apiVersion: v1
kind: Node
metadata: {name: n1, labels: {topology.istio.io/network: net1}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: on-node, namespace: shop, annotations: {strait.dev/node: n1}}
spec: {address: 10.1.0.5, labels: {app: web}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: own, namespace: shop, annotations: {strait.dev/node: n1}}
spec: {address: 10.1.0.6, network: net9, labels: {app: web}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: by-namespace, namespace: edge, annotations: {strait.dev/node: n1}}
spec: {address: 10.1.0.7}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop, labels: {istio.io/global: 'true'}}
spec:
  clusterIP: 10.96.0.10
  selector: {app: web}
  ports: [{port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: local, namespace: shop}
spec:
  clusterIP: 10.96.0.11
  selector: {app: web}
  ports: [{port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: edge}
spec:
  clusterIP: 10.96.0.12
  ports: [{port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: east, namespace: istio-system, labels: {topology.istio.io/network: net2}}
spec:
  gatewayClassName: istio-east-west
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
  addresses: [{type: IPAddress, value: 100.64.0.1}, {value: 'fd00:100:64::1'}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: west
  namespace: istio-system
  labels: {topology.istio.io/network: net3}
  annotations: {gateway.istio.io/service-account: gw}
spec:
  gatewayClassName: istio-east-west
  listeners: [{name: mesh, port: 15009, protocol: HBONE}]
status:
  addresses: [{type: IPAddress, value: 100.64.0.9}, {type: Hostname, value: gw.example.com}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: south, namespace: istio-system, labels: {topology.istio.io/network: net4}}
spec:
  gatewayClassName: istio-east-west
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Service
metadata: {name: south-istio-east-west, namespace: istio-system, labels: {gateway.networking.k8s.io/gateway-name: south}}
spec:
  type: LoadBalancer
  clusterIP: 10.96.9.9
  ports: [{name: mesh, port: 15008}]
status:
  loadBalancer: {ingress: [{ip: 203.0.113.7}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: squatter, namespace: shop, labels: {topology.istio.io/network: net2}}
spec:
  gatewayClassName: istio-east-west
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
  addresses: [{type: IPAddress, value: 10.9.9.9}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: shop}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
";

fn ips(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|a| a.parse().unwrap()).collect()
}

#[test]
fn networks_exports_and_gateways_come_from_the_manifests() {
    let (report, config) = check_text(Path::new("net.yaml"), BASE);
    let config = config.unwrap_or_else(|| panic!("{report}"));
    let network = |name: &str| {
        config
            .workloads
            .iter()
            .find(|w| w.name == name)
            .map(|w| w.network.clone())
            .unwrap()
    };
    assert_eq!(network("own"), "net9", "its own");
    assert_eq!(network("by-namespace"), "edge-net", "its namespace's");
    assert_eq!(network("on-node"), "net1", "its node's");

    let service = |name: &str| config.services.iter().find(|s| s.name == name).unwrap();
    assert!(config.global(service("web")), "its own label");
    assert!(!config.global(service("local")), "nothing says so");
    assert!(config.global(service("api")), "its namespace's label");

    let gateway = |name: &str| {
        config
            .east_west_gateways
            .iter()
            .find(|g| g.name == name)
            .unwrap_or_else(|| panic!("no gateway {name}: {:?}", config.east_west_gateways))
    };
    let east = gateway("east");
    assert_eq!(
        (
            east.network.as_str(),
            east.port,
            east.service_account.as_str()
        ),
        ("net2", 15008, "east-istio-east-west")
    );
    assert_eq!(east.addresses, ips(&["100.64.0.1", "fd00:100:64::1"]));
    let west = gateway("west");
    assert_eq!(west.addresses, ips(&["100.64.0.9"]), "from the status");
    assert_eq!((west.port, west.service_account.as_str()), (15009, "gw"));
    assert_eq!(
        gateway("south").addresses,
        ips(&["203.0.113.7"]),
        "from the Service in front"
    );
    // A tenant's namespace declares no gateway: it would receive a share
    // of every other network's traffic into net2.
    assert_eq!(config.gateways_into("net2").count(), 1, "only east");
    let squatter = report
        .objects
        .iter()
        .find(|o| o.name == "squatter")
        .unwrap();
    assert!(
        squatter.warnings[0].field == "metadata.namespace"
            && squatter.warnings[0]
                .reason
                .contains("only from the mesh's root namespace (istio-system)"),
        "{:?}",
        squatter.warnings
    );
    assert_eq!(
        config.east_west_gateways.len(),
        3,
        "the waypoint is not one"
    );
    // It is a waypoint, with no network of its own.
    assert!(config.waypoint("shop", "waypoint").is_some());
}

#[test]
fn bad_gateways_and_labels_are_refused_at_their_fields() {
    let cases = [
        (
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: g, namespace: istio-system}\nspec:\n  gatewayClassName: istio-east-west\n  listeners: [{name: mesh, port: 15008, protocol: HBONE}]\n",
            "metadata.labels.topology.istio.io/network",
            "is required",
        ),
        (
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: g, namespace: istio-system, labels: {topology.istio.io/network: n}}\nspec:\n  gatewayClassName: istio-east-west\n  listeners: [{name: tls, port: 15443, protocol: TLS}]\n",
            "spec.listeners",
            "HBONE",
        ),
        (
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: g, namespace: istio-system, labels: {topology.istio.io/network: n}}\nspec:\n  gatewayClassName: istio-east-west\n  listeners: [{name: mesh, port: 15008, protocol: HBONE}]\n  addresses: [{value: 100.64.0.300}]\n",
            "spec.addresses[0].value",
            "not an IP address",
        ),
        (
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: g, namespace: istio-system}\nspec:\n  gatewayClassName: istio-east-west\n  listners: []\n",
            "spec.listners",
            "did you mean `listeners`",
        ),
        (
            "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: shop, labels: {istio.io/global: 'yes'}}\nspec: {ports: [{port: 80}]}\n",
            "metadata.labels.istio.io/global",
            "\"true\" or \"false\"",
        ),
    ];
    for (yaml, field, reason) in cases {
        let (report, config) = check_text(Path::new("bad.yaml"), yaml);
        assert!(config.is_none(), "accepted:\n{yaml}");
        let text = report.to_string();
        assert!(
            text.contains(field) && text.contains(reason),
            "wanted {field}: {reason}, got:\n{text}"
        );
    }
}
