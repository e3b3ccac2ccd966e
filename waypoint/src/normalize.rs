//! A request's path as Istio has Envoy normalize it before anything
//! matches on it (routes, authorization) and before it is sent on: meshConfig
//! `pathNormalization.normalization`. `BASE` (Istio's default) is Envoy's
//! `normalize_path` (Chromium's URL canonicalization): dot segments
//! removed (a segment is a dot segment by what precedes its first `;`, so
//! `/x/..;y/admin` is `/admin`), `\` read as `/`, escaped unreserved
//! characters decoded and other escapes kept as written, characters a path
//! may not hold escaped, an escaped NUL refused. `MERGE_SLASHES` also
//! merges `//`; `DECODE_AND_MERGE_SLASHES` first decodes `%2F` and `%5C`
//! (so `/admin%2Fx` is `/admin/x`). The waypoint's suite compares each
//! with Envoy on the same paths.
use std::fmt::Write;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Normalization {
    None,
    #[default]
    Base,
    MergeSlashes,
    DecodeAndMergeSlashes,
}

impl std::str::FromStr for Normalization {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "NONE" => Self::None,
            "BASE" | "DEFAULT" => Self::Base,
            "MERGE_SLASHES" => Self::MergeSlashes,
            "DECODE_AND_MERGE_SLASHES" => Self::DecodeAndMergeSlashes,
            other => {
                return Err(format!(
                    "{other:?} is not NONE, BASE, MERGE_SLASHES or DECODE_AND_MERGE_SLASHES"
                ));
            }
        })
    }
}

/// A path no normalization makes acceptable (an escaped NUL).
#[derive(Debug, PartialEq, Eq)]
pub struct Invalid;

impl Normalization {
    /// `path` (without its query) normalized; `None` when it is not an
    /// origin-form path (`*`, say), which is left as it is.
    pub fn apply(self, path: &str) -> Result<Option<String>, Invalid> {
        if self == Self::None || !path.starts_with('/') {
            return Ok(None);
        }
        let decoded;
        let path = if self == Self::DecodeAndMergeSlashes {
            decoded = decode_slashes(path);
            decoded.as_str()
        } else {
            path
        };
        let mut out = canonical(path)?;
        if matches!(self, Self::MergeSlashes | Self::DecodeAndMergeSlashes) {
            out = merge_slashes(&out);
        }
        Ok(Some(out))
    }
}

/// `%2F` → `/`, `%5C` → `\` (either case).
fn decode_slashes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut rest = path;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let escape = rest.get(i..i + 3).unwrap_or("");
        match escape.to_ascii_uppercase().as_str() {
            "%2F" => out.push('/'),
            "%5C" => out.push('\\'),
            _ => {
                out.push('%');
                rest = &rest[i + 1..];
                continue;
            }
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    out
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// What a path may hold as it is: unreserved, sub-delims, `:`, `@`, `/`,
/// and `[`, `]` (which Chromium leaves).
fn plain(b: u8) -> bool {
    unreserved(b)
        || matches!(
            b,
            b'!' | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
                | b'/'
                | b'['
                | b']'
        )
}

/// Escapes of unreserved characters decoded and others kept
/// as written, anything else a path may not hold escaped (ASCII in upper
/// case, other bytes in lower, as Envoy writes them).
fn canonical_chars(path: &str) -> Result<String, Invalid> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => match bytes.get(i + 1..i + 3).and_then(hex_pair) {
                Some(0) => return Err(Invalid),
                Some(v) if unreserved(v) => {
                    out.push(v as char);
                    i += 3;
                    continue;
                }
                Some(_) => {
                    out.push_str(&path[i..i + 3]);
                    i += 3;
                    continue;
                }
                // A lone `%` stays.
                None => out.push('%'),
            },
            b if plain(b) => out.push(b as char),
            b if b.is_ascii() => {
                let _ = write!(out, "%{b:02X}");
            }
            b => {
                let _ = write!(out, "%{b:02x}");
            }
        }
        i += 1;
    }
    Ok(out)
}

fn hex_pair(pair: &[u8]) -> Option<u8> {
    let digit = |c: u8| (c as char).to_digit(16);
    Some((digit(pair[0])? * 16 + digit(pair[1])?) as u8)
}

/// Each segment's characters made canonical, and RFC 3986 5.2.4's dot
/// segments removed: `.` dropped, `..` takes the segment before it (never
/// above the root). A segment is a dot segment when it is one once decoded
/// (`%2e%2e`), or when its literal dots are followed by `;` (`..;x`), as
/// Chromium classifies them (`%2e%2e;` is not one).
fn canonical(path: &str) -> Result<String, Invalid> {
    let path = path.replace('\\', "/");
    let parts: Vec<&str> = path[1..].split('/').collect();
    let last = parts.len() - 1;
    let mut segments: Vec<String> = Vec::new();
    for (i, raw) in parts.iter().enumerate() {
        let literal = raw.split(';').next().unwrap_or("");
        let segment = canonical_chars(raw)?;
        let dots = if matches!(literal, "." | "..") {
            literal
        } else {
            segment.as_str()
        };
        match dots {
            "." | ".." => {
                if dots == ".." {
                    segments.pop();
                }
                // A trailing dot segment leaves the path ending in `/`.
                if i == last {
                    segments.push(String::new());
                }
            }
            _ => segments.push(segment),
        }
    }
    Ok(format!("/{}", segments.join("/")))
}

fn merge_slashes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if !(c == '/' && out.ends_with('/')) {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::Normalization::{self, *};

    fn n(mode: Normalization, path: &str) -> String {
        mode.apply(path)
            .expect("valid")
            .unwrap_or_else(|| path.to_string())
    }

    #[test]
    fn base_normalizes_as_rfc_3986() {
        for (path, want) in [
            ("/admin/../admin", "/admin"),
            ("/./admin", "/admin"),
            ("/a/b/../../admin", "/admin"),
            ("/../../admin", "/admin"),
            ("/%2e%2e/admin", "/admin"),
            ("/%2E/admin", "/admin"),
            ("/adm%69n", "/admin"),
            ("/admin%2fx", "/admin%2fx"),
            ("/public/..;x/admin", "/admin"),
            ("/public/.;/admin", "/public/admin"),
            ("/public/%2e%2e;/admin", "/public/..;/admin"),
            ("/a;b/c", "/a;b/c"),
            ("/a%7e%41", "/a~A"),
            ("/a%e9\u{e9}", "/a%e9%c3%a9"),
            ("/a{b}|", "/a%7Bb%7D%7C"),
            ("/a\\..\\admin", "/admin"),
            ("//admin", "//admin"),
            ("/admin/", "/admin/"),
            ("/admin/.", "/admin/"),
            ("/admin/..", "/"),
            ("/a b", "/a%20b"),
            ("/Admin", "/Admin"),
            ("/100%", "/100%"),
        ] {
            assert_eq!(n(Base, path), want, "{path}");
        }
        assert_eq!(n(None, "/a/../b"), "/a/../b");
        assert_eq!(Base.apply("*"), Ok(Option::None));
        assert_eq!(Base.apply("/a%00b"), Err(super::Invalid));
    }

    #[test]
    fn slashes_merge_and_decode_when_asked() {
        assert_eq!(n(MergeSlashes, "//admin//x"), "/admin/x");
        assert_eq!(n(MergeSlashes, "/admin%2Fx"), "/admin%2Fx");
        assert_eq!(n(DecodeAndMergeSlashes, "/admin%2fx"), "/admin/x");
        assert_eq!(n(DecodeAndMergeSlashes, "/x%5C..%5Cadmin"), "/admin");
        assert!("BASE".parse::<Normalization>().is_ok());
        let err = "base".parse::<Normalization>().unwrap_err();
        assert!(err.contains("\"base\""), "{err}");
    }
}
