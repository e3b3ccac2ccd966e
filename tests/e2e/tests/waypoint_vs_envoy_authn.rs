//! The waypoint beside Envoy 1.40 (what Istio's waypoints run), each
//! configured as Istio configures Envoy from the same two objects: a
//! RequestAuthentication (Envoy's `jwt_authn`, one provider, `requires_any`
//! with `allow_missing`, `forward: false`) and a DENY AuthorizationPolicy
//! on `/admin*` (Envoy's RBAC, `url_path` prefix), with Istio's default
//! path normalization (BASE: `normalize_path`, no slash merging, escaped
//! slashes kept). Tokens and paths that probe the edges go to both; each
//! case prints both verdicts, and any disagreement fails the test.
use std::time::Duration;

use strait_e2e::{
    Mesh, Result, http_app, install, l7::JwtTool, namespace_yaml, require_root, waypoint_yaml,
    workload_yaml,
};
use strait_topology::{Locality, Place, Spec, Topology};

const API: &str = "10.96.0.140";
const ISSUER: &str = "https://issuer.test";
const ENVOY_PORT: u16 = 10000;
const ENVOY_APP_PORT: u16 = 8081;

fn spec() -> Spec {
    Spec::new()
        .node("n1", "c1", "net1", Locality::new("r1", "z1", ""))
        .node("n2", "c1", "net1", Locality::new("r1", "z1", ""))
        .pod("client", "n1")
        .pod("wp", "n1")
        .pod("api", "n2")
        // Envoy and its own app; not in the mesh.
        .pod("envoy", "n2")
}

fn config(topo: &Topology, jwks: &str) -> Result<String> {
    let jwks = jwks.trim();
    Ok([
        namespace_yaml("shop", true),
        workload_yaml(topo.pod("client")?, "shop", "client", &[]),
        workload_yaml(topo.pod("api")?, "shop", "api", &[]),
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
  - port: 9080
    targetPort: 8080
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: shop}}
spec:
  targetRefs:
  - {{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}}
  jwtRules:
  - issuer: {ISSUER}
    audiences: [shop]
    jwks: '{jwks}'
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: admin, namespace: shop}}
spec:
  targetRefs:
  - {{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}}
  action: DENY
  rules:
  - to:
    - operation:
        paths: [/admin*]
---
"
        ),
    ]
    .concat())
}

/// Envoy's config as Istio generates it for the same objects.
fn envoy_config(jwks_file: &str) -> String {
    format!(
        r#"admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: 9901}}}}
static_resources:
  listeners:
  - name: http
    address: {{socket_address: {{address: 0.0.0.0, port_value: {ENVOY_PORT}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: authn
          normalize_path: true
          merge_slashes: false
          path_with_escaped_slashes_action: KEEP_UNCHANGED
          route_config:
            virtual_hosts:
            - name: app
              domains: ["*"]
              routes:
              - match: {{prefix: /}}
                route: {{cluster: app}}
          http_filters:
          - name: envoy.filters.http.jwt_authn
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
              providers:
                origins-0:
                  issuer: {ISSUER}
                  audiences: [shop]
                  local_jwks: {{filename: {jwks_file}}}
                  payload_in_metadata: {ISSUER}
              rules:
              - match: {{prefix: /}}
                requires:
                  requires_any:
                    requirements:
                    - provider_name: origins-0
                    - allow_missing: {{}}
          - name: envoy.filters.http.rbac
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules:
                action: DENY
                policies:
                  ns[shop]-policy[admin]-rule[0]:
                    permissions:
                    - and_rules:
                        rules:
                        - or_rules:
                            rules:
                            - url_path: {{path: {{prefix: /admin}}}}
                    principals:
                    - and_ids: {{ids: [{{any: true}}]}}
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:
  - name: app
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: app
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {ENVOY_APP_PORT}}}}}}}
"#
    )
}

/// The status a GET of `base` + `path` gets, with curl's `args`.
fn status(place: &Place, base: &str, path: &str, args: &[String]) -> Result<String> {
    let url = format!("{base}{path}");
    let mut argv = vec![
        "curl",
        "-s",
        "--path-as-is",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
    ];
    argv.extend(args.iter().map(String::as_str));
    argv.push(&url);
    let out = place.run(&argv, Duration::from_secs(30))?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// What a status means: the request went through, or was refused for want
/// of authentication, by policy, or as malformed.
fn verdict(code: &str) -> &'static str {
    match code {
        "200" => "allowed",
        "401" => "unauthenticated",
        "403" => "denied",
        c if c.starts_with('4') => "rejected",
        _ => "other",
    }
}

#[test]
fn tokens_and_paths_get_the_verdicts_envoy_gives() -> Result<()> {
    require_root();
    let envoy_bin = install::envoy_bin();
    assert!(
        envoy_bin.exists(),
        "{} is missing: run `cargo xtask setup`",
        envoy_bin.display()
    );
    let topo = Topology::create(spec())?;
    let dir = topo.scratch_dir().join("jwks");
    std::fs::create_dir_all(&dir)?;
    let tool = JwtTool::new(&dir);
    for (kid, alg) in [
        ("rs256", "RS256"),
        ("rs384", "RS384"),
        ("rs512", "RS512"),
        ("ps256", "PS256"),
        ("ps384", "PS384"),
        ("ps512", "PS512"),
        ("es256", "ES256"),
        ("es384", "ES384"),
        ("eddsa", "EdDSA"),
        ("stray", "RS256"),
    ] {
        tool.run(&["key", kid, alg])?;
    }
    // `stray` signs, but its key is not in the set (rotated out).
    tool.run(&["drop", "stray"])?;
    let jwks_file = dir.join("jwks.json");
    let jwks = std::fs::read_to_string(&jwks_file)?;

    let mesh = Mesh::new(&topo)?;
    mesh.write("mesh.yaml", &config(&topo, &jwks)?)?;
    let _agents = [mesh.start_agent("n1", &[])?, mesh.start_agent("n2", &[])?];
    let _waypoint = mesh.start_waypoint("wp", "shop/waypoint")?;
    let _app = http_app(topo.pod("api")?, 8080, "ok", "api")?;
    let envoy_pod = topo.pod("envoy")?;
    let _envoy_app = http_app(envoy_pod, ENVOY_APP_PORT, "ok", "envoy-app")?;
    let envoy_yaml = topo.scratch_dir().join("envoy-authn.yaml");
    std::fs::write(&envoy_yaml, envoy_config(&jwks_file.display().to_string()))?;
    let mut envoy = envoy_pod.place.spawn(&[
        &envoy_bin.display().to_string(),
        "-c",
        &envoy_yaml.display().to_string(),
        "--concurrency",
        "1",
        "--log-level",
        "warn",
        "--base-id",
        &std::process::id().to_string(),
    ])?;
    envoy.wait_listening(ENVOY_PORT, Duration::from_secs(30))?;
    let client = &topo.pod("client")?.place;
    let via_waypoint = format!("http://{API}:9080");
    let via_envoy = format!("http://{}:{ENVOY_PORT}", envoy_pod.ipv4);

    // Tokens: (case, curl arguments), all to /public.
    let sign = |kid: &str, alg: &str, claims: &str| tool.run(&["sign", kid, alg, claims]);
    let with =
        |extra: &str| format!(r#"{{"iss": "{ISSUER}", "sub": "alice", "aud": "shop"{extra}}}"#);
    let valid = with(r#", "exp": "+600""#);
    let header = |token: &str| vec!["-H".to_string(), format!("Authorization: Bearer {token}")];
    let mut tokens: Vec<(String, Vec<String>)> = Vec::new();
    for (kid, alg) in [
        ("rs256", "RS256"),
        ("rs384", "RS384"),
        ("rs512", "RS512"),
        ("ps256", "PS256"),
        ("ps384", "PS384"),
        ("ps512", "PS512"),
        ("es256", "ES256"),
        ("es384", "ES384"),
        ("eddsa", "EdDSA"),
    ] {
        tokens.push((format!("{alg}, valid"), header(&sign(kid, alg, &valid)?)));
    }
    let rs = |claims: &str| sign("rs256", "RS256", claims);
    let good = rs(&valid)?;
    let forge = |kind: &str| tool.run(&["forge", "rs256", kind, &valid]);
    let more: Vec<(&str, Vec<String>)> = vec![
        ("expired", header(&rs(&with(r#", "exp": "-600""#))?)),
        (
            "expired 30 s ago (within the clock skew)",
            header(&rs(&with(r#", "exp": "-30""#))?),
        ),
        (
            "not yet valid",
            header(&rs(&with(r#", "exp": "+600", "nbf": "+600""#))?),
        ),
        (
            "valid in 30 s (within the clock skew)",
            header(&rs(&with(r#", "exp": "+600", "nbf": "+30""#))?),
        ),
        ("no exp", header(&rs(&with(""))?)),
        (
            "wrong issuer",
            header(&rs(
                r#"{"iss": "https://other.test", "sub": "a", "aud": "shop"}"#,
            )?),
        ),
        ("no issuer", header(&rs(r#"{"sub": "a", "aud": "shop"}"#)?)),
        (
            "wrong audience",
            header(&rs(&format!(
                r#"{{"iss": "{ISSUER}", "sub": "a", "aud": "bank"}}"#
            ))?),
        ),
        (
            "audience in a list",
            header(&rs(&format!(
                r#"{{"iss": "{ISSUER}", "sub": "a", "aud": ["bank", "shop"]}}"#
            ))?),
        ),
        (
            "no audience",
            header(&rs(&format!(r#"{{"iss": "{ISSUER}", "sub": "a"}}"#))?),
        ),
        (
            "bad signature (claims changed)",
            header(&forge("tampered")?),
        ),
        ("alg none", header(&forge("none")?)),
        ("HMAC keyed with the public key", header(&forge("hmac")?)),
        (
            "unknown kid (a key rotated out)",
            header(&sign("stray", "RS256", &valid)?),
        ),
        (
            "no kid",
            header(&tool.run(&["sign", "rs256", "RS256", &valid, r#"{"kid": null}"#])?),
        ),
        (
            "alg other than the key's",
            header(&sign("rs256", "RS384", &valid)?),
        ),
        (
            "header claims ES384, signed ES256",
            header(&tool.run(&["forge", "es256", "as:ES384:ES256", &valid])?),
        ),
        ("not a JWT", header("abc")),
        ("four sections", header(&format!("{good}.x"))),
        (
            "lowercase bearer",
            vec!["-H".into(), format!("Authorization: bearer {good}")],
        ),
        (
            "Basic credentials, no token",
            vec!["-H".into(), "Authorization: Basic YWxpY2U6cHc=".into()],
        ),
        ("token in access_token", vec![]),
        ("token in another parameter", vec![]),
        (
            "token in a cookie (not a configured location)",
            vec!["-H".into(), format!("Cookie: token={good}")],
        ),
        ("no token", vec![]),
    ];
    tokens.extend(more.into_iter().map(|(w, a)| (w.to_string(), a)));
    let query_of = |what: &str| match what {
        "token in access_token" => format!("/public?access_token={good}"),
        "token in another parameter" => format!("/public?token={good}"),
        _ => "/public".to_string(),
    };

    let paths = [
        "/admin",
        "/admin/",
        "/admin/x",
        "/adminx",
        "/Admin",
        "/ADMIN",
        "/admin/../admin",
        "/public/../admin",
        "/./admin",
        "//admin",
        "/%61dmin",
        "/%2561dmin",
        "/admin%2f",
        "/public%2f..%2fadmin",
        "/public%2F..%2Fadmin",
        "/public/%2e%2e/admin",
        "/public/%2E%2E/admin",
        "/public/.%2e/admin",
        "/public/..%5cadmin",
        "/admin?x=1",
        "/public?/admin",
        "/%2fadmin",
        "/public/./../admin",
        "/public/..;/admin",
        "/admin;x",
        "/a/b/c/../../../admin",
        "/../admin",
        "/public/%2e/../admin",
        "/%41dmin",
        "/adm%69n",
        "/public/%252e%252e/admin",
        "/admin%20",
        "/public/...../admin",
        "/public",
        "/public/",
        "/admin/./",
        "/public\\..\\admin",
        "/public/..;x/admin",
        "/public;x/../admin",
        "/public/.;/admin",
        "/public/%2e%2e;/admin",
        "/a%00b",
        "/%e9/../admin",
        "/admin/\u{e9}",
        "/public/%2e%2e%2fadmin",
    ];

    let mut disagreements = Vec::new();
    let mut compare = |what: String, path: &str, args: &[String]| -> Result<()> {
        let strait = status(client, &via_waypoint, path, args)?;
        let envoy = status(client, &via_envoy, path, args)?;
        let same = verdict(&strait) == verdict(&envoy);
        println!(
            "{:<48} strait {strait} {:<16} envoy {envoy} {:<16}{}",
            what,
            verdict(&strait),
            verdict(&envoy),
            if same { "" } else { "  DISAGREE" }
        );
        if !same {
            disagreements.push(what);
        }
        Ok(())
    };
    println!("{} token cases:", tokens.len());
    for (what, args) in &tokens {
        compare(what.clone(), &query_of(what), args)?;
    }
    println!("{} path cases (DENY /admin*):", paths.len());
    for path in paths {
        compare(path.to_string(), path, &[])?;
    }
    assert!(tokens.len() >= 30 && paths.len() >= 30);
    assert!(
        disagreements.is_empty(),
        "strait and Envoy disagree on: {disagreements:?}\nEnvoy's log:\n{}",
        envoy.log()
    );
    Ok(())
}
