//! DestinationRule: load balancing, connection pools and outlier
//! detection, with every range Istio documents.
use std::collections::BTreeSet;

use super::{Findings, export_to, host};
use crate::{manifest::networking as net, names};

pub(super) fn destination_rule(f: &mut Findings, namespace: &str, spec: &net::DestinationRuleSpec) {
    if spec.host.is_empty() {
        f.reject("spec.host", "is required");
    } else {
        host(f, "spec.host", &spec.host);
    }
    export_to(f, "spec.exportTo", namespace, &spec.export_to);
    if let Some(selector) = &spec.workload_selector {
        f.selector("spec.workloadSelector.matchLabels", &selector.match_labels);
        // A rule for some workloads' outbound traffic stays in their
        // namespace.
        if spec
            .export_to
            .iter()
            .any(|t| t != "." && t.as_str() != namespace)
        {
            f.reject(
                "spec.exportTo",
                "a DestinationRule with a workloadSelector can only be exported to its own namespace",
            );
        }
    }
    if let Some(tp) = &spec.traffic_policy {
        traffic_policy(f, "spec.trafficPolicy", tp);
    }
    let mut names = BTreeSet::new();
    for (i, subset) in spec.subsets.iter().enumerate() {
        let path = format!("spec.subsets[{i}]");
        match crate::names::check_istio_label(&subset.name) {
            Err(why) => f.reject(&format!("{path}.name"), &why),
            Ok(()) if !names.insert(subset.name.as_str()) => f.reject(
                &format!("{path}.name"),
                &format!("{:?} is defined twice", subset.name),
            ),
            Ok(()) => {}
        }
        f.labels(&format!("{path}.labels"), &subset.labels);
        if let Some(tp) = &subset.traffic_policy {
            traffic_policy(f, &format!("{path}.trafficPolicy"), tp);
        }
    }
}

const SIMPLE_LB: [&str; 6] = [
    "UNSPECIFIED",
    "LEAST_CONN",
    "RANDOM",
    "PASSTHROUGH",
    "ROUND_ROBIN",
    "LEAST_REQUEST",
];

fn traffic_policy(f: &mut Findings, path: &str, tp: &net::TrafficPolicy) {
    let empty = tp.load_balancer.is_none()
        && tp.connection_pool.is_none()
        && tp.outlier_detection.is_none()
        && tp.tls.is_none()
        && tp.port_level_settings.is_empty()
        && tp.tunnel.is_none()
        && tp.proxy_protocol.is_none()
        && tp.retry_budget.is_none();
    if empty {
        f.reject(path, "needs at least one setting");
    }
    if tp.tunnel.is_some() && tp.proxy_protocol.is_some() {
        f.reject(path, "tunnel and proxyProtocol cannot both be set");
    }
    if let Some(lb) = &tp.load_balancer {
        load_balancer(f, &format!("{path}.loadBalancer"), lb);
    }
    if let Some(od) = &tp.outlier_detection {
        outlier_detection(f, &format!("{path}.outlierDetection"), od);
    }
    if let Some(pool) = &tp.connection_pool {
        connection_pool(f, &format!("{path}.connectionPool"), pool);
    }
    if let Some(tls) = &tp.tls {
        client_tls(f, &format!("{path}.tls"), tls);
    }
    if let Some(t) = &tp.tunnel {
        let p = format!("{path}.tunnel");
        f.one_of(
            &format!("{p}.protocol"),
            t.protocol.as_deref(),
            &["CONNECT", "POST"],
        );
        let target = &t.target_host;
        if target.parse::<std::net::IpAddr>().is_err() && names::check_fqdn(target).is_err() {
            f.reject(
                &format!("{p}.targetHost"),
                &format!("{target:?} is neither a host name nor an IP address"),
            );
        }
        f.port(&format!("{p}.targetPort"), t.target_port);
    }
    if let Some(pp) = &tp.proxy_protocol {
        f.one_of(
            &format!("{path}.proxyProtocol.version"),
            pp.version.as_deref(),
            &["V1", "V2"],
        );
    }
    if let Some(budget) = &tp.retry_budget {
        f.percent(
            &format!("{path}.retryBudget.percent.value"),
            budget.percent.as_ref().map(|p| p.value),
        );
    }
    let mut ports = BTreeSet::new();
    for (i, pl) in tp.port_level_settings.iter().enumerate() {
        let p = format!("{path}.portLevelSettings[{i}]");
        match &pl.port {
            Some(port) => {
                if f.port(&format!("{p}.port.number"), port.number).is_some()
                    && !ports.insert(port.number)
                {
                    f.reject(
                        &format!("{p}.port.number"),
                        &format!("port {} has settings twice", port.number),
                    );
                }
            }
            None => f.reject(&format!("{p}.port"), "is required"),
        }
        if pl.load_balancer.is_none()
            && pl.connection_pool.is_none()
            && pl.outlier_detection.is_none()
            && pl.tls.is_none()
        {
            f.reject(&p, "needs at least one setting besides the port");
        }
        if let Some(lb) = &pl.load_balancer {
            load_balancer(f, &format!("{p}.loadBalancer"), lb);
        }
        if let Some(od) = &pl.outlier_detection {
            outlier_detection(f, &format!("{p}.outlierDetection"), od);
        }
        if let Some(pool) = &pl.connection_pool {
            connection_pool(f, &format!("{p}.connectionPool"), pool);
        }
        if let Some(tls) = &pl.tls {
            client_tls(f, &format!("{p}.tls"), tls);
        }
    }
}

fn client_tls(f: &mut Findings, path: &str, tls: &net::ClientTls) {
    let mode = tls.mode.as_deref();
    f.one_of(
        &format!("{path}.mode"),
        mode,
        &["DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL"],
    );
    let set = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.is_empty());
    if tls.insecure_skip_verify == Some(true) {
        let verifying = match mode {
            Some("SIMPLE") => {
                set(&tls.ca_certificates)
                    || set(&tls.credential_name)
                    || !tls.subject_alt_names.is_empty()
            }
            Some("MUTUAL") => set(&tls.ca_certificates) || !tls.subject_alt_names.is_empty(),
            _ => false,
        };
        if verifying {
            f.reject(
                &format!("{path}.insecureSkipVerify"),
                "cannot be true with CA certificates, a credentialName or subjectAltNames to verify by",
            );
        }
    }
    let files = [
        ("clientCertificate", &tls.client_certificate),
        ("privateKey", &tls.private_key),
        ("caCertificates", &tls.ca_certificates),
        ("caCrl", &tls.ca_crl),
    ];
    match mode {
        // The credential holds the certificates; files beside it conflict.
        Some("SIMPLE" | "MUTUAL") if set(&tls.credential_name) => {
            for (field, value) in files {
                if set(value) {
                    f.reject(
                        &format!("{path}.{field}"),
                        "cannot be set with credentialName",
                    );
                }
            }
        }
        Some("MUTUAL") => {
            for (field, value) in &files[..2] {
                if !set(value) {
                    f.reject(
                        &format!("{path}.{field}"),
                        "is required with mode MUTUAL unless credentialName is set",
                    );
                }
            }
        }
        _ => {}
    }
}

fn load_balancer(f: &mut Findings, path: &str, lb: &net::LoadBalancer) {
    f.one_of(&format!("{path}.simple"), lb.simple.as_deref(), &SIMPLE_LB);
    if lb.simple.is_some() && lb.consistent_hash.is_some() {
        f.reject(path, "simple and consistentHash cannot both be set");
    }
    f.duration(
        &format!("{path}.warmupDurationSecs"),
        lb.warmup_duration_secs.as_ref(),
    );
    if let Some(w) = &lb.warmup {
        let p = format!("{path}.warmup");
        match &w.duration {
            None => f.reject(&format!("{p}.duration"), "is required"),
            Some(d) => f.duration(&format!("{p}.duration"), Some(d)),
        }
        f.percent(&format!("{p}.minimumPercent"), w.minimum_percent);
        if let Some(a) = w.aggression
            && a < 1.0
        {
            f.reject(&format!("{p}.aggression"), &format!("{a} is less than 1"));
        }
    }
    if let Some(hash) = &lb.consistent_hash {
        consistent_hash(f, &format!("{path}.consistentHash"), hash);
    }
    let Some(loc) = &lb.locality_lb_setting else {
        return;
    };
    let path = format!("{path}.localityLbSetting");
    if !loc.distribute.is_empty() && !loc.failover.is_empty() {
        f.reject(&path, "distribute and failover cannot both be set");
    }
    if !loc.failover.is_empty() {
        const TOPOLOGY: [&str; 3] = [
            "topology.kubernetes.io/region",
            "topology.kubernetes.io/zone",
            "topology.istio.io/subzone",
        ];
        if let Some(i) = loc
            .failover_priority
            .iter()
            .position(|l| TOPOLOGY.contains(&l.as_str()))
        {
            f.reject(
                &format!("{path}.failoverPriority[{i}]"),
                "a region, zone or subzone label cannot be used together with failover",
            );
        }
    }
    for (i, d) in loc.distribute.iter().enumerate() {
        let p = format!("{path}.distribute[{i}]");
        locality(f, &format!("{p}.from"), &d.from);
        if d.to.is_empty() {
            f.reject(&format!("{p}.to"), "needs at least one locality");
        }
        for (to, weight) in &d.to {
            locality(f, &format!("{p}.to.{to}"), to);
            if !(1..=100).contains(weight) {
                f.reject(
                    &format!("{p}.to.{to}"),
                    &format!("weight {weight} is not 1-100"),
                );
            }
        }
        let sum: u64 = d.to.values().map(|w| u64::from(*w)).sum();
        if !d.to.is_empty() && sum != 100 {
            f.reject(
                &format!("{p}.to"),
                &format!("weights sum to {sum}, not 100"),
            );
        }
    }
    for (i, fo) in loc.failover.iter().enumerate() {
        let p = format!("{path}.failover[{i}]");
        if fo.from.is_empty() || fo.to.is_empty() {
            f.reject(&p, "needs both from and to (regions)");
        } else if fo.from == fo.to {
            f.reject(&format!("{p}.to"), "must be another region than from");
        } else if fo.from.contains('/') || fo.to.contains('/') {
            f.reject(&p, "failover is between regions: no zone or subzone");
        } else if fo.from.contains('*') || fo.to.contains('*') {
            f.reject(&p, "failover regions are named, without a wildcard `*`");
        }
    }
    for (i, label) in loc.failover_priority.iter().enumerate() {
        if label.is_empty() || label.starts_with('=') {
            f.reject(
                &format!("{path}.failoverPriority[{i}]"),
                "needs a label (or label=value)",
            );
        }
    }
}

/// A locality pattern: `region[/zone[/subzone]]`, no part empty, at most one
/// `*`, and only at the end.
fn locality(f: &mut Findings, path: &str, text: &str) {
    let stars = text.matches('*').count();
    if stars > 1 || (stars == 1 && !text.ends_with('*')) {
        f.reject(
            path,
            &format!("{text:?}: a wildcard `*` may only end the locality"),
        );
    } else if text.is_empty() || text.splitn(3, '/').any(str::is_empty) {
        f.reject(
            path,
            &format!("{text:?}: region, zone and subzone must not be empty"),
        );
    }
}

/// Envoy's largest Maglev table.
const MAGLEV_MAX: u64 = 5_000_011;

fn consistent_hash(f: &mut Findings, path: &str, hash: &net::ConsistentHash) {
    let keys = [
        hash.http_header_name.is_some(),
        hash.http_cookie.is_some(),
        hash.use_source_ip.is_some(),
        hash.http_query_parameter_name.is_some(),
    ];
    if keys.iter().filter(|k| **k).count() > 1 {
        f.reject(
            path,
            "takes only one of httpHeaderName, httpCookie, useSourceIp, httpQueryParameterName",
        );
    }
    if hash.ring_hash.is_some() && hash.maglev.is_some() {
        f.reject(path, "ringHash and maglev cannot both be set");
    }
    if let Some(cookie) = &hash.http_cookie {
        if cookie.name.is_empty() {
            f.reject(&format!("{path}.httpCookie.name"), "is required");
        }
        f.duration(&format!("{path}.httpCookie.ttl"), cookie.ttl.as_ref());
    }
    if hash.minimum_ring_size.is_some_and(|n| n > 0) {
        if hash.ring_hash.is_some() || hash.maglev.is_some() {
            f.reject(
                &format!("{path}.minimumRingSize"),
                "cannot be set with ringHash or maglev",
            );
        } else {
            f.warn(
                &format!("{path}.minimumRingSize"),
                "is deprecated: use ringHash.minimumRingSize",
            );
        }
    }
    if let Some(maglev) = &hash.maglev {
        let p = format!("{path}.maglev.tableSize");
        match maglev.table_size {
            None | Some(0) => f.reject(&p, "is required for maglev"),
            Some(n) if n >= MAGLEV_MAX => {
                f.reject(&p, &format!("{n} is not less than {MAGLEV_MAX}"))
            }
            Some(n) if !prime(n) => f.reject(&p, &format!("{n} is not a prime number")),
            Some(_) => {}
        }
    }
}

fn prime(n: u64) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

fn outlier_detection(f: &mut Findings, path: &str, od: &net::OutlierDetection) {
    f.duration(&format!("{path}.interval"), od.interval.as_ref());
    f.duration(
        &format!("{path}.baseEjectionTime"),
        od.base_ejection_time.as_ref(),
    );
    for (field, v) in [
        ("maxEjectionPercent", od.max_ejection_percent),
        ("minHealthPercent", od.min_health_percent),
    ] {
        f.percent(&format!("{path}.{field}"), v.map(f64::from));
    }
    if od.consecutive_errors.is_some_and(|n| n > 0) {
        f.warn(
            &format!("{path}.consecutiveErrors"),
            "is deprecated: use consecutiveGatewayErrors or consecutive5xxErrors",
        );
    }
    if od.consecutive_local_origin_failures.is_some_and(|n| n > 0)
        && od.split_external_local_origin_errors != Some(true)
    {
        f.reject(
            &format!("{path}.consecutiveLocalOriginFailures"),
            "needs splitExternalLocalOriginErrors: true",
        );
    }
}

fn connection_pool(f: &mut Findings, path: &str, pool: &net::ConnectionPool) {
    if pool.tcp.is_none() && pool.http.is_none() {
        f.reject(path, "needs tcp or http settings");
    }
    if let Some(tcp) = &pool.tcp {
        let p = format!("{path}.tcp");
        f.duration(&format!("{p}.connectTimeout"), tcp.connect_timeout.as_ref());
        f.duration(
            &format!("{p}.maxConnectionDuration"),
            tcp.max_connection_duration.as_ref(),
        );
        // 0s turns the idle timeout off.
        let idle = tcp
            .idle_timeout
            .as_ref()
            .filter(|t| crate::duration::parse(t).map_or(true, |d| !d.is_zero()));
        f.duration(&format!("{p}.idleTimeout"), idle);
        if let Some(k) = &tcp.tcp_keepalive {
            f.duration(&format!("{p}.tcpKeepalive.time"), k.time.as_ref());
            f.duration(&format!("{p}.tcpKeepalive.interval"), k.interval.as_ref());
        }
    }
    if let Some(http) = &pool.http {
        let p = format!("{path}.http");
        f.duration(&format!("{p}.idleTimeout"), http.idle_timeout.as_ref());
        f.one_of(
            &format!("{p}.h2UpgradePolicy"),
            http.h2_upgrade_policy.as_deref(),
            &["DEFAULT", "DO_NOT_UPGRADE", "UPGRADE"],
        );
        if let Some(k) = &http.http2_keep_alive {
            f.duration(&format!("{p}.http2KeepAlive.interval"), k.interval.as_ref());
            f.duration(&format!("{p}.http2KeepAlive.timeout"), k.timeout.as_ref());
        }
        if http.h2_upgrade_policy.as_deref() == Some("UPGRADE")
            && http.use_client_protocol == Some(true)
        {
            f.reject(
                &format!("{p}.useClientProtocol"),
                "cannot be true when h2UpgradePolicy is UPGRADE",
            );
        }
    }
}
