//! Instant queries to Prometheus's HTTP API (`/api/v1/query`), plain HTTP:
//! the dashboard runs beside a Prometheus (or a port-forward to one).
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::{Request, Uri, body::Bytes};
use hyper_util::rt::TokioIo;
use serde_json::Value as Json;
use tokio::net::TcpStream;

use super::graph::Sample;

const TIMEOUT: Duration = Duration::from_secs(10);
/// Larger answers are refused rather than buffered: the queries group by
/// workload pairs, so an answer this size means a mesh past what one page
/// can draw.
const MAX_ANSWER: usize = 32 << 20;

#[derive(Clone, Debug)]
pub struct Prometheus {
    /// `host:port`.
    authority: String,
    /// The path prefix it is served under (`""`, or `/prometheus`).
    prefix: String,
    url: String,
}

impl Prometheus {
    /// `http://host:port[/prefix]`.
    pub fn parse(url: &str) -> Result<Self> {
        let uri: Uri = url
            .parse()
            .with_context(|| format!("--prometheus {url:?}: not a URL"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(other) => bail!(
                "--prometheus {url:?}: scheme {other:?} is not supported; give an http:// address (a port-forward to it, if it is served over TLS)"
            ),
            None => bail!("--prometheus {url:?}: no scheme; give http://host:port"),
        }
        let authority = uri
            .authority()
            .ok_or_else(|| anyhow!("--prometheus {url:?}: no host"))?;
        let authority = if authority.port().is_some() {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        if uri.query().is_some() {
            bail!("--prometheus {url:?}: a query string is not expected");
        }
        Ok(Self {
            authority,
            prefix: uri.path().trim_end_matches('/').to_string(),
            url: url.to_string(),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// An instant query's vector answer.
    pub async fn query(&self, promql: &str) -> Result<Vec<Sample>> {
        tokio::time::timeout(TIMEOUT, self.fetch(promql))
            .await
            .map_err(|_| anyhow!("{}: no answer within {TIMEOUT:?}", self.url))?
    }

    async fn fetch(&self, promql: &str) -> Result<Vec<Sample>> {
        let query: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("query", promql)
            .finish();
        let path = format!("{}/api/v1/query?{query}", self.prefix);
        let stream = TcpStream::connect(&self.authority)
            .await
            .with_context(|| format!("connecting to Prometheus at {}", self.url))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .with_context(|| format!("HTTP handshake with {}", self.url))?;
        let conn = tokio::spawn(conn);
        let req = Request::get(path)
            .header(hyper::header::HOST, &self.authority)
            .body(Empty::<Bytes>::new())
            .context("building the query")?;
        let resp = sender
            .send_request(req)
            .await
            .with_context(|| format!("querying {}", self.url))?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|err| anyhow!("reading {}'s answer: {err}", self.url))?
            .to_bytes();
        conn.abort();
        let answer: Json = serde_json::from_slice(&body)
            .with_context(|| format!("{} answered {status} with no JSON", self.url))?;
        if answer["status"] != "success" {
            bail!(
                "{}: {promql}: {}",
                self.url,
                answer["error"].as_str().unwrap_or("an error")
            );
        }
        samples(&answer["data"])
    }
}

fn samples(data: &Json) -> Result<Vec<Sample>> {
    if data["resultType"] != "vector" {
        bail!("a {} answer, wanted a vector", data["resultType"]);
    }
    let mut out = Vec::new();
    for series in data["result"].as_array().into_iter().flatten() {
        let labels = series["metric"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
            .collect();
        let value = series["value"][1]
            .as_str()
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|v| v.is_finite())
            .unwrap_or(0.0);
        out.push(Sample { labels, value });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_plain_http_with_an_optional_prefix() {
        let p = Prometheus::parse("http://10.0.0.1:9090/prometheus/").expect("parses");
        assert_eq!(p.authority, "10.0.0.1:9090");
        assert_eq!(p.prefix, "/prometheus");
        let p = Prometheus::parse("http://prom").expect("parses");
        assert_eq!(p.authority, "prom:80");
        for bad in [
            "https://prom:9090",
            "prom:9090",
            "http://prom:9090/?x=1",
            "::",
        ] {
            let err = Prometheus::parse(bad).expect_err(bad).to_string();
            assert!(err.contains("--prometheus"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_vector_answer_becomes_samples_and_nan_counts_as_zero() {
        let data = serde_json::json!({"resultType": "vector", "result": [
            {"metric": {"a": "1"}, "value": [1.0, "2.5"]},
            {"metric": {}, "value": [1.0, "NaN"]},
        ]});
        let s = samples(&data).expect("vector");
        assert_eq!(s[0].value, 2.5);
        assert_eq!(s[0].labels["a"], "1");
        assert_eq!(s[1].value, 0.0);
        assert!(samples(&serde_json::json!({"resultType": "matrix"})).is_err());
    }
}
