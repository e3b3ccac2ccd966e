//! Talking to the CA service on the wire, as an agent would, with curl and
//! openssl: a CSR made outside strait, sent with a node certificate, a
//! ServiceAccount token, or nothing.
use std::{net::SocketAddr, path::Path, time::Duration};

use strait_topology::Place;

use crate::Result;

/// A CSR for `identity` made with openssl, as the JSON body of a signing
/// request asking for `lifetime_seconds`; the body's path.
pub fn sign_body(
    place: &Place,
    dir: &Path,
    name: &str,
    identity: &str,
    lifetime_seconds: u64,
) -> Result<String> {
    let (key, csr) = (
        dir.join(format!("{name}.key")),
        dir.join(format!("{name}.csr")),
    );
    let s = |p: &Path| p.display().to_string();
    place.run_ok(
        &[
            "openssl",
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &s(&key),
            "-out",
            &s(&csr),
            "-subj",
            "/CN=x",
            "-addext",
            &format!("subjectAltName=URI:{identity}"),
        ],
        Duration::from_secs(10),
    )?;
    let body = serde_json::json!({
        "csr": std::fs::read_to_string(&csr)?,
        "lifetime_seconds": lifetime_seconds,
    });
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, body.to_string())?;
    Ok(s(&path))
}

/// How a request to the CA authenticates.
pub enum Auth<'a> {
    /// The node certificate in the credential directory.
    Cert,
    /// A bearer token, no certificate.
    Token(&'a str),
    None,
}

/// POSTs a signing request to the CA from `place`, trusting the control
/// root in `credential`: curl's exit code, the HTTP status and the body.
pub fn ask_ca(
    place: &Place,
    ca: SocketAddr,
    credential: &Path,
    auth: Auth<'_>,
    body: &str,
) -> Result<(i32, String, String)> {
    let c = |f: &str| credential.join(f).display().to_string();
    let resolve = format!("strait-ca:{}:{}", ca.port(), ca.ip());
    let url = format!("https://strait-ca:{}/v1/sign", ca.port());
    let (cacert, cert, key) = (c("control-root.pem"), c("node-cert.pem"), c("node-key.pem"));
    let body = format!("@{body}");
    let mut argv = vec![
        "curl",
        "-s",
        "--max-time",
        "5",
        "--cacert",
        &cacert,
        "--resolve",
        &resolve,
        "-H",
        "content-type: application/json",
        "--data-binary",
        &body,
        "-w",
        "\n%{http_code}",
    ];
    let header;
    match auth {
        Auth::Cert => argv.extend_from_slice(&["--cert", &cert, "--key", &key]),
        Auth::Token(token) => {
            header = format!("Authorization: Bearer {token}");
            argv.extend_from_slice(&["-H", &header]);
        }
        Auth::None => {}
    }
    argv.push(&url);
    let out = place.run(&argv, Duration::from_secs(10))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (answer, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    Ok((
        out.status.code().unwrap_or(-1),
        status.to_owned(),
        answer.to_owned(),
    ))
}
