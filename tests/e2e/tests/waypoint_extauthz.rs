//! CUSTOM AuthorizationPolicy at the waypoint: requests its rules match
//! are put to a real external authorizer in the mesh, over HTTP and over
//! gRPC (Envoy's `Authorization/Check`, served by a grpcio server built on
//! Envoy's own protos), named in a meshConfig's `extensionProviders` as
//! Istio names them. The authorizer's verdict is followed (its added
//! headers reach the app; its refusal reaches the client), and when it
//! cannot be reached the provider's failure mode decides.
use std::time::Duration;

use serde_json::Value as Json;
use strait_e2e::{
    Mesh, Result, http_app, install, namespace_yaml, require_root, waypoint_yaml, workload_yaml,
};
use strait_topology::{Locality, Place, Process, Spec, Topology};

const API: &str = "10.96.0.150";
const AUTHZ: &str = "10.96.0.151";
const GONE: &str = "10.96.0.152";

fn spec() -> Spec {
    Spec::new()
        .node("n1", "c1", "net1", Locality::new("r1", "z1", ""))
        .node("n2", "c1", "net1", Locality::new("r1", "z1", ""))
        .pod("client", "n1")
        .pod("wp", "n1")
        .pod("api", "n2")
        .pod("authz", "n2")
}

const MESH_CONFIG: &str = "extensionProviders:
- name: http-authz
  envoyExtAuthzHttp:
    service: ext-authz.shop.svc.cluster.local
    port: 8000
    includeRequestHeadersInCheck: [x-ext-authz, x-ext-authz-user]
    headersToUpstreamOnAllow: [x-user]
    headersToDownstreamOnDeny: [x-ext-authz-check-result]
- name: grpc-authz
  envoyExtAuthzGrpc:
    service: ext-authz.shop.svc.cluster.local
    port: 9000
- name: gone-closed
  envoyExtAuthzHttp:
    service: gone.shop.svc.cluster.local
    port: 8000
    timeout: 2s
    statusOnError: \"503\"
- name: gone-open
  envoyExtAuthzGrpc:
    service: gone.shop.svc.cluster.local
    port: 9000
    timeout: 2s
    failOpen: true
";

fn config(topo: &Topology) -> Result<String> {
    let custom = |name: &str, provider: &str, path: &str| {
        format!(
            "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: {name}, namespace: shop}}
spec:
  targetRefs:
  - {{kind: Service, group: \"\", name: api}}
  action: CUSTOM
  provider: {{name: {provider}}}
  rules:
  - to:
    - operation:
        paths: [\"{path}*\"]
---
"
        )
    };
    Ok([
        namespace_yaml("shop", true),
        workload_yaml(topo.pod("client")?, "shop", "client", &[]),
        workload_yaml(topo.pod("api")?, "shop", "api", &[]),
        workload_yaml(topo.pod("authz")?, "shop", "authz", &[]),
        waypoint_yaml("waypoint", "shop", topo.pod("wp")?, &[]),
        format!(
            "apiVersion: v1
kind: Service
metadata:
  name: api
  namespace: shop
  labels: {{istio.io/use-waypoint: waypoint}}
spec:
  clusterIP: {API}
  selector: {{app: api}}
  ports:
  - {{name: http, port: 9080, targetPort: 8080}}
---
apiVersion: v1
kind: Service
metadata: {{name: ext-authz, namespace: shop}}
spec:
  clusterIP: {AUTHZ}
  selector: {{app: authz}}
  ports:
  - {{name: http, port: 8000, targetPort: 8000}}
  - {{name: grpc, port: 9000, targetPort: 9000}}
---
apiVersion: v1
kind: Service
metadata: {{name: gone, namespace: shop}}
spec:
  clusterIP: {GONE}
  selector: {{app: nobody}}
  ports:
  - {{name: http, port: 8000}}
  - {{name: grpc, port: 9000}}
---
"
        ),
        custom("via-http", "http-authz", "/http"),
        custom("via-grpc", "grpc-authz", "/grpc"),
        custom("closed", "gone-closed", "/closed"),
        custom("open", "gone-open", "/open"),
    ]
    .concat())
}

fn authorizer(place: &Place, kind: &str, port: &str) -> Result<Process> {
    let python = install::l7_python().display().to_string();
    let script = install::l7_script("ext_authz.py").display().to_string();
    let xds = install::xds_dir().display().to_string();
    let mut server = place.spawn(&[&python, "-u", &script, kind, port, &xds])?;
    strait_e2e::wait_for_line_prefix(&mut server, "listening", Duration::from_secs(30))?;
    Ok(server)
}

/// Status, body and the headers of the answer, for a GET of `path`.
fn get(place: &Place, path: &str, args: &[&str]) -> Result<(String, String, String)> {
    let url = format!("http://{API}:9080{path}");
    let mut argv = vec!["curl", "-s", "-D", "-", "-w", "\n%{http_code}"];
    argv.extend_from_slice(args);
    argv.push(&url);
    let out = place.run_ok(&argv, Duration::from_secs(30))?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (rest, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    let (head, body) = rest.split_once("\r\n\r\n").unwrap_or((rest, ""));
    Ok((
        code.to_string(),
        body.to_string(),
        head.to_ascii_lowercase(),
    ))
}

#[test]
fn custom_policies_follow_the_external_authorizer() -> Result<()> {
    require_root();
    let topo = Topology::create(spec())?;
    let mesh = Mesh::new(&topo)?;
    mesh.write("mesh.yaml", &config(&topo)?)?;
    let mesh_config = topo.scratch_dir().join("meshconfig.yaml");
    std::fs::write(&mesh_config, MESH_CONFIG)?;
    let _agents = [mesh.start_agent("n1", &[])?, mesh.start_agent("n2", &[])?];
    let _waypoint = mesh.start_waypoint_with(
        "wp",
        "shop/waypoint",
        &["--mesh-config", &mesh_config.display().to_string()],
    )?;
    let _app = http_app(topo.pod("api")?, 8080, "headers", "api")?;
    let authz = &topo.pod("authz")?.place;
    let mut http_authz = authorizer(authz, "http", "8000")?;
    let grpc_authz = authorizer(authz, "grpc", "9000")?;
    let client = &topo.pod("client")?.place;
    let allow = ["-H", "x-ext-authz: allow", "-H", "x-ext-authz-user: alice"];

    for kind in ["http", "grpc"] {
        let path = format!("/{kind}/orders");
        let (code, body, _) = get(client, &path, &allow)?;
        println!("{kind} authorizer, allowed: {code} {body}");
        assert_eq!(code, "200", "{body}");
        let seen: Json = serde_json::from_str(&body)?;
        assert_eq!(
            seen["x-user"], "alice",
            "the authorizer's header reached the app"
        );
        let (code, body, head) = get(client, &path, &["-H", "x-ext-authz: deny"])?;
        println!("{kind} authorizer, denied: {code} {body:?}");
        assert_eq!(
            (code.as_str(), body.as_str()),
            ("403", "denied by ext_authz")
        );
        assert!(head.contains("x-ext-authz-check-result: denied"), "{head}");
    }
    // Not matched by a CUSTOM rule: no authorizer is asked.
    let (code, _, _) = get(client, "/other", &[])?;
    assert_eq!(code, "200");
    let asked = http_authz
        .log()
        .lines()
        .filter(|l| l.starts_with("http check"))
        .count()
        + grpc_authz
            .log()
            .lines()
            .filter(|l| l.starts_with("grpc check"))
            .count();
    println!("checks the authorizers answered: {asked}");
    assert_eq!(asked, 4);
    assert!(
        grpc_authz
            .log()
            .contains("source spiffe://cluster.local/ns/shop/sa/client"),
        "the gRPC check names the client: {}",
        grpc_authz.log()
    );

    // An authorizer that cannot be reached: each provider's failure mode.
    let (code, _, _) = get(client, "/closed", &allow)?;
    println!("unreachable, failOpen false, statusOnError 503: {code}");
    assert_eq!(code, "503");
    let (code, _, _) = get(client, "/open", &allow)?;
    println!("unreachable, failOpen true: {code}");
    assert_eq!(code, "200");
    // The HTTP authorizer goes down: its requests are refused (403, the
    // default statusOnError), never let through.
    http_authz.stop(Duration::from_secs(5))?;
    let (code, _, _) = get(client, "/http/orders", &allow)?;
    println!("HTTP authorizer stopped: {code}");
    assert_eq!(code, "403");
    Ok(())
}
