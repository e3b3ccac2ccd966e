//! A real Prometheus (Debian's, 2.42) scraping the mesh, as users run one:
//! started in a place of the topology with static targets, asked by PromQL
//! over its HTTP API, stopped with the test.
use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::Path,
    time::Duration,
};

use serde_json::Value as Json;
use strait_topology::{Place, Process};

use crate::Result;

pub const PORT: u16 = 9090;

/// One series of a query's answer: its labels and value.
#[derive(Clone, Debug)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

pub struct Prometheus {
    place: Place,
    addr: SocketAddr,
    _process: Process,
}

impl Prometheus {
    /// Starts Prometheus in `place`, listening on `ip`, scraping every
    /// second each job's targets (`job`, `host:port` list), its data in
    /// `dir`; waits until it answers.
    pub fn start(
        place: &Place,
        ip: IpAddr,
        dir: &Path,
        jobs: &[(&str, Vec<String>)],
    ) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut config = String::from(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nscrape_configs:\n",
        );
        for (job, targets) in jobs {
            let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
            config.push_str(&format!(
                "- job_name: {job}\n  static_configs:\n  - targets: [{}]\n",
                targets.join(", ")
            ));
        }
        let file = dir.join("prometheus.yml");
        std::fs::write(&file, config)?;
        let addr = SocketAddr::new(ip, PORT);
        let argv = [
            "prometheus".to_string(),
            format!("--config.file={}", file.display()),
            format!("--storage.tsdb.path={}", dir.join("data").display()),
            format!("--web.listen-address={addr}"),
            "--storage.tsdb.retention.time=1h".into(),
            "--log.level=warn".into(),
        ];
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let mut process = place.spawn(&argv)?;
        process.wait_listening(PORT, Duration::from_secs(60))?;
        Ok(Self {
            place: place.clone(),
            addr,
            _process: process,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// An instant query's answer: one sample per series.
    pub fn query(&self, promql: &str) -> Result<Vec<Sample>> {
        let url = format!("http://{}/api/v1/query", self.addr);
        let out = self.place.run_ok(
            &[
                "curl",
                "-sS",
                "--max-time",
                "10",
                "--data-urlencode",
                &format!("query={promql}"),
                &url,
            ],
            Duration::from_secs(15),
        )?;
        let answer: Json = serde_json::from_slice(&out.stdout)?;
        if answer["status"] != "success" {
            return Err(format!("{promql}: {answer}").into());
        }
        let mut samples = Vec::new();
        for series in answer["data"]["result"].as_array().into_iter().flatten() {
            let labels = series["metric"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect();
            let value = series["value"][1]
                .as_str()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("{promql}: no value in {series}"))?;
            samples.push(Sample { labels, value });
        }
        Ok(samples)
    }

    /// The single value `promql` answers (0 when it answers nothing).
    pub fn value(&self, promql: &str) -> Result<f64> {
        let samples = self.query(promql)?;
        match samples.as_slice() {
            [] => Ok(0.0),
            [one] => Ok(one.value),
            more => Err(format!("{promql}: {} series, wanted one: {more:?}", more.len()).into()),
        }
    }

    /// Waits until every target of every job is up.
    pub fn wait_up(&self, targets: usize, timeout: Duration) -> Result<()> {
        crate::wait_for("Prometheus scraping every target", timeout, || {
            let up = self.value("sum(up)").ok()?;
            (up as usize == targets).then_some(())
        })
    }
}
