//! Kubernetes' name rules, for names that end up in file paths, URIs and
//! certificates (node names above all).

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
}
