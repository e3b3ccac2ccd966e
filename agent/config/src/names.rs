//! Kubernetes' and Istio's name rules: object names, label keys and
//! values, DNS names and wildcard hosts, HTTP header names. Each check
//! says what is wrong in words a config author can act on.

/// A DNS-1123 subdomain, as Kubernetes requires of node names: at most 253
/// characters, lowercase alphanumerics, `-` and `.`, each dot-separated
/// label non-empty and starting and ending with an alphanumeric.
pub fn check_subdomain(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty".into());
    }
    if name.len() > 253 {
        return Err(format!("is {} characters long; at most 253", name.len()));
    }
    let label_ok = |label: &str| {
        let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
        label.starts_with(alnum)
            && label.ends_with(alnum)
            && label.chars().all(|c| alnum(c) || c == '-')
    };
    if !name.split('.').all(label_ok) {
        return Err(format!(
            "{name:?} is not a DNS-1123 subdomain (lowercase letters, digits, '-' and '.', starting and ending with a letter or digit)"
        ));
    }
    Ok(())
}

/// A DNS-1123 label (a namespace name, a port name, a subset name): at
/// most 63 lowercase alphanumerics or `-`, starting and ending with an
/// alphanumeric.
pub fn check_label(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty".into());
    }
    if name.len() > 63 || name.contains('.') || check_subdomain(name).is_err() {
        return Err(format!(
            "{name:?} is not a DNS-1123 label (at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit)"
        ));
    }
    Ok(())
}

/// A DNS-1123 label as Istio checks it (port, subset and gateway names):
/// like Kubernetes' but letters of either case.
pub fn check_istio_label(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty".into());
    }
    if host_label(name) {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a DNS-1123 label (at most 63 letters, digits and '-', starting and ending with a letter or digit)"
        ))
    }
}

/// One label of a host name as Istio reads it: letters of either case,
/// digits and `-`, not at either end, at most 63.
fn host_label(label: &str) -> bool {
    let alnum = |c: char| c.is_ascii_alphanumeric();
    !label.is_empty()
        && label.len() <= 63
        && label.starts_with(alnum)
        && label.ends_with(alnum)
        && label.chars().all(|c| alnum(c) || c == '-')
}

/// A fully qualified host name (no wildcard): dot-separated labels, at
/// most 255 characters, the last not all digits; a final dot is allowed
/// (`istio.io.`).
pub fn check_fqdn(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("is empty".into());
    }
    if host.len() > 255 {
        return Err(format!("{host:?} is longer than 255 characters"));
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    let top = name.rsplit('.').next().unwrap_or_default();
    if !top.is_empty() && top.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!(
            "{host:?} is not a host name (its top-level label {top:?} is all digits)"
        ));
    }
    match name.split('.').find(|l| !host_label(l)) {
        Some(label) => Err(format!(
            "{host:?} is not a host name (label {label:?}: letters, digits and '-', at most 63, not starting or ending with '-')"
        )),
        None => Ok(()),
    }
}

/// A host that may start with a wildcard, in the forms Istio allows: the
/// first label is `*`, or starts with `*` (`*foo`, `*-foo`, a partial
/// wildcard); the other labels are plain.
pub fn check_wildcard_host(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("is empty".into());
    }
    if host.len() > 255 {
        return Err(format!("{host:?} is longer than 255 characters"));
    }
    let (first, rest) = match host.split_once('.') {
        Some((first, rest)) => (first, Some(rest)),
        None => (host, None),
    };
    let first_ok = match first.strip_prefix('*') {
        Some("") => true,
        Some(tail) => {
            let tail = tail.strip_prefix('-').unwrap_or(tail);
            first.len() <= 63 && host_label(tail)
        }
        None => host_label(first),
    };
    if !first_ok {
        return Err(format!(
            "{host:?} is not a host name (label {first:?}; a wildcard `*` may only start the first label)"
        ));
    }
    match rest {
        Some(rest) => check_fqdn(rest).map_err(|_| {
            format!("{host:?} is not a host name (a wildcard `*` may only start the first label)")
        }),
        None => Ok(()),
    }
}

/// A label key (`app`, `topology.kubernetes.io/zone`): an optional DNS
/// subdomain prefix and `/`, then a name of at most 63 alphanumerics, `-`,
/// `_` or `.`, starting and ending with an alphanumeric.
pub fn check_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        check_subdomain(prefix).map_err(|why| format!("label key {key:?}: prefix {why}"))?;
    }
    if name.is_empty() || name.len() > 63 || !qualified_name(name) {
        return Err(format!(
            "label key {key:?} is not valid (at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit, after an optional DNS prefix and '/')"
        ));
    }
    Ok(())
}

/// A label value: empty, or at most 63 alphanumerics, `-`, `_` or `.`,
/// starting and ending with an alphanumeric.
pub fn check_label_value(value: &str) -> Result<(), String> {
    if value.is_empty() || (value.len() <= 63 && qualified_name(value)) {
        Ok(())
    } else {
        Err(format!(
            "label value {value:?} is not valid (at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit)"
        ))
    }
}

fn qualified_name(name: &str) -> bool {
    let alnum = |c: char| c.is_ascii_alphanumeric();
    name.starts_with(alnum)
        && name.ends_with(alnum)
        && name
            .chars()
            .all(|c| alnum(c) || matches!(c, '-' | '_' | '.'))
}

/// An HTTP header name: an RFC 7230 token, or (`pseudo`) one of HTTP/2's
/// pseudo-headers.
pub fn check_header_name(name: &str, pseudo: bool) -> Result<(), String> {
    const PSEUDO: [&str; 5] = [":method", ":scheme", ":authority", ":path", ":status"];
    if name.is_empty() {
        return Err("header name is empty".into());
    }
    if pseudo && PSEUDO.contains(&name) {
        return Ok(());
    }
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if name.chars().all(token) {
        Ok(())
    } else {
        Err(format!("{name:?} is not a valid HTTP header name"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names() {
        for good in ["n1", "node-1.zone-a", "ip-10-0-0-1.ec2.internal"] {
            assert!(check_subdomain(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "../etc",
            "n1/..",
            "N1",
            "-n1",
            "n1.",
            "a..b",
            "n 1",
            &"a".repeat(254),
        ] {
            assert!(check_subdomain(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn hosts_labels_and_headers() {
        for good in [
            "*",
            "*.example.com",
            "*foo.example.com",
            "*-foo.com",
            "Reviews.default",
            "a",
        ] {
            assert!(check_wildcard_host(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "foo.*.com",
            "**.com",
            "a..b",
            "-a.com",
            "a b.com",
            "*.",
            "foo*.com",
        ] {
            assert!(check_wildcard_host(bad).is_err(), "{bad:?}");
        }
        assert!(check_fqdn("*.example.com").is_err());
        assert!(check_fqdn("istio.io.").is_ok());
        assert!(check_fqdn("10.2.0.300").is_err());
        assert!(check_istio_label("HTTP1").is_ok());
        assert!(check_istio_label("http_1").is_err());
        for good in ["app", "topology.kubernetes.io/zone", "a_b.c-d"] {
            assert!(check_label_key(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "/app",
            "Bad_Prefix/app",
            "-app",
            "app-",
            &"a".repeat(64),
            "a/b/c",
        ] {
            assert!(check_label_key(bad).is_err(), "{bad:?}");
        }
        assert!(check_label_value("").is_ok());
        assert!(check_label_value("v1.2_b").is_ok());
        assert!(check_label_value("has space").is_err());
        assert!(check_label_value("*").is_err());
        assert!(check_label("http-web").is_ok());
        assert!(check_label("web.v1").is_err());
        assert!(check_header_name("x-user", false).is_ok());
        assert!(check_header_name(":authority", true).is_ok());
        assert!(check_header_name(":authority", false).is_err());
        assert!(check_header_name("bad header", true).is_err());
        assert!(check_header_name("", true).is_err());
    }
}
