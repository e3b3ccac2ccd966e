//! The checks users meet through `straitctl validate` and the agent's
//! loader: Istio's own examples pass, each common mistake is caught at its
//! file, line, object and field, and no input makes the parser panic.
use std::path::{Path, PathBuf};

use strait_config::{Verdict, check_path, check_text};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

#[test]
fn istio_examples_are_all_accepted() {
    let (report, config) = check_path(&repo("tests/examples/istio"));
    assert_eq!(report.rejected(), 0, "{report}");
    assert_eq!(report.objects.len(), 6, "{report}");
    let config = config.expect("a config without rejections is usable");
    assert_eq!(config.destination_rules.len(), 2);
    assert_eq!(config.services.len(), 2, "the Service and the ServiceEntry");
    assert_eq!(config.gateways.len(), 1);
    assert_eq!(config.virtual_services.len(), 1);
    // `reviews` is not defined in the examples: a warning, not an error.
    assert!(report.warnings() > 0, "{report}");
    let shown = report.to_string();
    assert!(
        shown.contains("warning  ")
            && shown.contains("reviews.default.svc.cluster.local matches no Service"),
        "{shown}"
    );
}

/// (file, line, object, field, part of the reason), for each mistake in
/// `tests/broken`.
const EXPECTED: [(&str, u64, &str, &str, &str); 7] = [
    (
        "authz-key.yaml",
        10,
        "AuthorizationPolicy shop/only-web",
        "spec.rules[0].when[0].key",
        "did you mean source.principal?",
    ),
    (
        "distribute.yaml",
        13,
        "DestinationRule shop/checkout",
        "spec.trafficPolicy.loadBalancer.localityLbSetting.distribute[0].to",
        "weights sum to 110, not 100",
    ),
    (
        "duration.yaml",
        11,
        "DestinationRule shop/payments",
        "spec.trafficPolicy.outlierDetection.interval",
        "is not a duration",
    ),
    (
        "port-name.yaml",
        20,
        "ServiceEntry shop/legacy",
        "spec.endpoints[0].ports.htp",
        "unknown port name \"htp\"",
    ),
    (
        "unknown-field.yaml",
        9,
        "DestinationRule shop/reviews",
        "spec.trafficPolicy.loadBalancr",
        "did you mean `loadBalancer`?",
    ),
    (
        "weights.yaml",
        10,
        "VirtualService shop/reviews-split",
        "spec.http[0].route",
        "the weights sum to 0",
    ),
    (
        "wrong-group.yaml",
        1,
        "PeerAuthentication shop/strict",
        "apiVersion",
        "belongs to security.istio.io",
    ),
];

#[test]
fn each_mistake_is_caught_where_it_is() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/broken");
    let (report, config) = check_path(&dir);
    assert!(config.is_none(), "a config with rejections is refused");
    let shown = report.to_string();
    for (file, line, object, field, reason) in EXPECTED {
        let path = dir.join(file);
        let want = format!(
            "rejected {}:{line} {object}: field {field}: ",
            path.display()
        );
        let found = shown
            .lines()
            .find(|l| l.starts_with(&want))
            .unwrap_or_else(|| panic!("no line starting {want:?} in:\n{shown}"));
        assert!(found.contains(reason), "{found:?} lacks {reason:?}");
    }
    let bad_yaml = report
        .files
        .iter()
        .find(|p| p.file.ends_with("not-yaml.yaml"))
        .unwrap_or_else(|| panic!("the broken YAML file is not reported:\n{shown}"));
    assert_eq!(bad_yaml.line, Some(4), "{shown}");
    assert_eq!(report.rejected(), EXPECTED.len() + 1, "{shown}");
    // A subset no DestinationRule defines is a warning, as in Istio: the
    // route finds no endpoints, the rest of the config applies.
    let subset = dir.join("subset.yaml");
    let want = format!(
        "warning  {}:41 VirtualService shop/ratings: field spec.http[0].route[0].destination.subset: subset \"v3\" is not defined by any DestinationRule for ratings.shop.svc.cluster.local",
        subset.display()
    );
    assert!(shown.contains(&want), "no {want:?} in:\n{shown}");
    // Objects without mistakes are still accepted and listed.
    assert!(
        report
            .objects
            .iter()
            .any(|o| o.kind == "Service" && o.verdict == Verdict::Accepted),
        "{shown}"
    );
}

/// Deterministic random bytes and mutations of real manifests: every input
/// gets a report, none a panic.
#[test]
fn no_input_makes_the_checker_panic() {
    let mut seeds: Vec<String> = std::fs::read_dir(repo("tests/examples/istio"))
        .unwrap()
        .chain(
            std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/broken")).unwrap(),
        )
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    seeds.push(String::new());
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let alphabet = b"ab: -[]{}\n#&*!|>'\"0123456789.,%@`\t\\:?";
    for round in 0..4000 {
        let seed = &seeds[(next() as usize) % seeds.len()];
        let mut bytes = seed.as_bytes().to_vec();
        for _ in 0..(1 + next() % 8) {
            let at = if bytes.is_empty() {
                0
            } else {
                (next() as usize) % bytes.len()
            };
            match next() % 3 {
                0 if !bytes.is_empty() => {
                    bytes.remove(at);
                }
                1 => bytes.insert(at, alphabet[(next() as usize) % alphabet.len()]),
                _ if !bytes.is_empty() => {
                    bytes[at] = alphabet[(next() as usize) % alphabet.len()];
                }
                _ => {}
            }
        }
        let text = String::from_utf8_lossy(&bytes);
        let (report, _) = check_text(Path::new("fuzz.yaml"), &text);
        let _ = format!("{round}: {report}");
    }
}

/// Every field strait reads but does not act on is named in a warning, so
/// a user knows what does not take effect; the L4 ones it acts on are not.
#[test]
fn fields_without_effect_are_named() {
    let text = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: shop}
spec:
  host: web.shop.svc.cluster.local
  exportTo: [.]
  subsets: [{name: v1, labels: {version: v1}}]
  trafficPolicy:
    tls: {mode: SIMPLE, credentialName: web-tls}
    loadBalancer:
      consistentHash: {httpCookie: {name: user, ttl: 1h, attributes: [{name: SameSite, value: Strict}]}}
    connectionPool:
      tcp: {maxConnections: 10, connectTimeout: 2s, idleTimeout: 1h}
      http: {http2MaxRequests: 100}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: sticky, namespace: shop}
spec:
  host: sticky.shop.svc.cluster.local
  trafficPolicy:
    loadBalancer:
      consistentHash: {useSourceIp: true}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: shop}
spec:
  hosts: [ext.example.com]
  exportTo: ['*']
  subjectAltNames: [spiffe://other/ns/x/sa/y]
  ports: [{number: 443, name: tls}]
  resolution: DNS
";
    let (report, config) = check_text(Path::new("dr.yaml"), text);
    assert!(config.is_some(), "{report}");
    let warned: Vec<String> = report
        .objects
        .iter()
        .flat_map(|o| o.warnings.iter().map(|w| w.field.clone()))
        .collect();
    for field in [
        "spec.trafficPolicy.tls.credentialName",
        "spec.trafficPolicy.loadBalancer.consistentHash.httpCookie.attributes",
        "spec.trafficPolicy.connectionPool.tcp.idleTimeout",
        "spec.subjectAltNames",
    ] {
        assert!(
            warned.iter().any(|w| w == field),
            "no warning for {field}: {report}"
        );
    }
    // What acts at L4, or at a waypoint, is not warned about.
    for field in [
        "spec.exportTo",
        "spec.subsets",
        "spec.trafficPolicy.tls.mode",
        "spec.trafficPolicy.connectionPool.http.http2MaxRequests",
        "spec.trafficPolicy.loadBalancer.consistentHash.httpCookie.name",
        "spec.trafficPolicy.connectionPool.tcp.maxConnections",
        "spec.trafficPolicy.connectionPool.tcp.connectTimeout",
    ] {
        assert!(
            !warned.iter().any(|w| w == field),
            "{field} was warned about: {report}"
        );
    }
    let sticky = report.objects.iter().find(|o| o.name == "sticky").unwrap();
    assert!(
        sticky
            .warnings
            .iter()
            .all(|w| !w.reason.contains("no effect")),
        "useSourceIp acts at L4: {report}"
    );

    let (report, _) = check_text(
        Path::new("bad.yaml"),
        &text.replace("exportTo: [.]", "exportTo: [../x]"),
    );
    assert_eq!(report.rejected(), 1, "{report}");
    assert!(report.to_string().contains("spec.exportTo[0]"), "{report}");
}
