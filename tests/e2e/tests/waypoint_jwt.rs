//! RequestAuthentication at the waypoint: tokens of every accepted
//! algorithm verified against a JWKS served over HTTP from a pod; expired,
//! early, forged (`alg: none`, HMAC keyed with the public key, claims
//! changed after signing) and unknown-key tokens refused with 401 (a token
//! for another audience with 403, as Envoy); no token passes unless a policy requires a request principal;
//! claims reach policies (`request.auth.claims[groups]`) and the app
//! (outputClaimToHeaders), the token does not (forwardOriginalToken
//! false); a rotated key is picked up within the refresh interval.
use std::time::{Duration, Instant};

use serde_json::Value as Json;
use strait_e2e::{
    Mesh, Result, http_app, l7::JwtTool, namespace_yaml, require_root, waypoint_yaml, workload_yaml,
};
use strait_topology::{Locality, Place, Spec, Topology};

const API: &str = "10.96.0.130";
const ISSUER: &str = "https://issuer.test";

fn spec() -> Spec {
    Spec::new()
        .node("n1", "c1", "net1", Locality::new("r1", "z1", ""))
        .node("n2", "c1", "net1", Locality::new("r1", "z1", ""))
        .pod("client", "n1")
        .pod("wp", "n1")
        .pod("api", "n2")
        // Serves the key set; not in the mesh.
        .pod("issuer", "n2")
}

fn config(topo: &Topology, jwks_uri: &str) -> Result<String> {
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
    jwksUri: {jwks_uri}
    outputClaimToHeaders:
    - {{header: x-jwt-sub, claim: sub}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: private, namespace: shop}}
spec:
  targetRefs:
  - {{kind: Service, group: \"\", name: api}}
  action: DENY
  rules:
  - from:
    - source:
        notRequestPrincipals: [\"*\"]
    to:
    - operation:
        paths: [/private*]
  - to:
    - operation:
        paths: [/devs*]
    when:
    - key: request.auth.claims[groups]
      notValues: [dev]
---
"
        ),
    ]
    .concat())
}

/// Status and body of a GET of `path` with curl's `args`.
fn get(place: &Place, path: &str, args: &[&str]) -> Result<(String, String)> {
    let url = format!("http://{API}:9080{path}");
    let mut argv = vec!["curl", "-s", "-w", "\n%{http_code}"];
    argv.extend_from_slice(args);
    argv.push(&url);
    let out = place.run_ok(&argv, Duration::from_secs(30))?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    Ok((code.to_string(), body.to_string()))
}

fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}")
}

#[test]
fn tokens_are_verified_and_their_claims_decide() -> Result<()> {
    require_root();
    let topo = Topology::create(spec())?;
    let keys = topo.scratch_dir().join("jwks");
    std::fs::create_dir_all(&keys)?;
    let tool = JwtTool::new(&keys);
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
        tool.run(&["key", kid, alg])?;
    }
    // A key the set never holds.
    tool.run(&["key", "stray", "RS256"])?;
    tool.run(&["drop", "stray"])?;
    let issuer = topo.pod("issuer")?;
    let mut server = issuer.place.spawn(&[
        "python3",
        "-m",
        "http.server",
        "8000",
        "--bind",
        &issuer.ipv4.to_string(),
        "--directory",
        &keys.display().to_string(),
    ])?;
    server.wait_listening(8000, Duration::from_secs(10))?;
    let jwks_uri = format!("http://{}:8000/jwks.json", issuer.ipv4);
    let mesh = Mesh::new(&topo)?;
    mesh.write("mesh.yaml", &config(&topo, &jwks_uri)?)?;
    let _agents = [mesh.start_agent("n1", &[])?, mesh.start_agent("n2", &[])?];
    let _waypoint = mesh.start_waypoint_with("wp", "shop/waypoint", &["--jwks-refresh", "1s"])?;
    let _app = http_app(topo.pod("api")?, 8080, "headers", "api")?;
    let client = &topo.pod("client")?.place;

    let good = |sub: &str| {
        format!(
            r#"{{"iss": "{ISSUER}", "sub": "{sub}", "aud": "shop", "exp": "+600", "groups": ["dev", "ops"]}}"#
        )
    };
    let mut cases: Vec<(String, Vec<String>, String, &str)> = Vec::new();
    for kid in [
        "rs256", "rs384", "rs512", "ps256", "ps384", "ps512", "es256", "es384", "eddsa",
    ] {
        let alg = match kid {
            "eddsa" => "EdDSA".to_string(),
            other => other.to_ascii_uppercase(),
        };
        let token = tool.sign(kid, &alg, &good("alice"))?;
        cases.push((
            format!("{alg} valid"),
            vec!["-H".into(), bearer(&token)],
            "/private".into(),
            "200",
        ));
    }
    let rs = |claims: &str| tool.sign("rs256", "RS256", claims);
    let claims =
        |extra: &str| format!(r#"{{"iss": "{ISSUER}", "sub": "alice", "aud": "shop", {extra}}}"#);
    let refused = [
        ("expired", rs(&claims(r#""exp": "-600""#))?),
        ("not yet valid", rs(&claims(r#""nbf": "+600""#))?),
        (
            "wrong issuer",
            rs(r#"{"iss": "https://other.test", "sub": "a", "aud": "shop"}"#)?,
        ),
        (
            "wrong audience",
            rs(r#"{"iss": "https://issuer.test", "sub": "a", "aud": "bank"}"#)?,
        ),
        (
            "alg none",
            tool.run(&["forge", "rs256", "none", &claims(r#""exp": "+600""#)])?,
        ),
        (
            "HMAC keyed with the public key",
            tool.run(&["forge", "rs256", "hmac", &claims(r#""exp": "+600""#)])?,
        ),
        (
            "claims changed after signing",
            tool.run(&["forge", "rs256", "tampered", &claims(r#""exp": "+600""#)])?,
        ),
        (
            "unknown kid",
            tool.sign("stray", "RS256", &claims(r#""exp": "+600""#))?,
        ),
        ("not a JWT", "abc.def".to_string()),
    ];
    for (what, token) in refused {
        // A token for another audience is forbidden, as Envoy answers.
        let want = if what == "wrong audience" {
            "403"
        } else {
            "401"
        };
        cases.push((
            what.to_string(),
            vec!["-H".into(), bearer(&token)],
            "/public".into(),
            want,
        ));
    }
    let token = tool.sign("es256", "ES256", &good("alice"))?;
    let no_groups = rs(&claims(r#""exp": "+600", "groups": ["ops"]"#))?;
    cases.extend([
        (
            "no token, public path".into(),
            vec![],
            "/public".into(),
            "200",
        ),
        (
            "no token, private path".into(),
            vec![],
            "/private".into(),
            "403",
        ),
        (
            "token in the access_token parameter".into(),
            vec![],
            format!("/private?access_token={token}"),
            "200",
        ),
        (
            "groups claim has dev".into(),
            vec!["-H".into(), bearer(&token)],
            "/devs".into(),
            "200",
        ),
        (
            "groups claim lacks dev".into(),
            vec!["-H".into(), bearer(&no_groups)],
            "/devs".into(),
            "403",
        ),
    ]);
    for (what, args, path, want) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, body) = get(client, path, &args)?;
        println!(
            "{what}: {code} {}",
            body.chars().take(80).collect::<String>()
        );
        assert_eq!(&code, want, "{what}: {body}");
    }

    // What the app sees: the subject, not the token, and no forged claim.
    let (_, body) = get(
        client,
        "/public",
        &["-H", &bearer(&token), "-H", "x-jwt-sub: mallory"],
    )?;
    let headers: Json = serde_json::from_str(&body)?;
    println!(
        "the app saw: x-jwt-sub {}, authorization {}",
        headers["x-jwt-sub"], headers["authorization"]
    );
    assert_eq!(headers["x-jwt-sub"], "alice");
    assert!(headers.get("authorization").is_none());
    let (_, body) = get(client, "/public", &["-H", "x-jwt-sub: mallory"])?;
    let headers: Json = serde_json::from_str(&body)?;
    assert!(
        headers.get("x-jwt-sub").is_none(),
        "a forged claim header passed: {body}"
    );

    // Rotation: a new key replaces the old in the served set. Tokens of
    // the new key pass once the waypoint has fetched the set again (it
    // refreshes every second here); the old key's are refused.
    tool.run(&["key", "rotated", "ES384"])?;
    for kid in [
        "rs256", "rs384", "rs512", "ps256", "ps384", "ps512", "es256", "es384", "eddsa",
    ] {
        tool.run(&["drop", kid])?;
    }
    let fresh = tool.sign("rotated", "ES384", &good("bob"))?;
    let started = Instant::now();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let (code, _) = get(client, "/private", &["-H", &bearer(&fresh)])?;
        if code == "200" {
            break;
        }
        assert_eq!(code, "401");
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the rotated key was not picked up"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "rotated key accepted after {:.1} s ({attempts} attempts)",
        started.elapsed().as_secs_f64()
    );
    let (code, _) = get(client, "/private", &["-H", &bearer(&token)])?;
    assert_eq!(code, "401", "a token of a key rotated out still passed");
    Ok(())
}
