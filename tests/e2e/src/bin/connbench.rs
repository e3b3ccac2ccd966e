//! New-connection benchmark, for `cargo xtask bench`.
//!
//! `connbench server PORT`: accepts, answers each connection's first byte
//! with one byte, closes.
//! `connbench client ADDR SECONDS MAX`: one connection after another for at
//! most SECONDS or MAX connections: connect, send a byte, wait for the
//! answer, close. Prints `count seconds p50_us p99_us` on one line.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    process::ExitCode,
    time::{Duration, Instant},
};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["server", port] => server(port),
        ["client", addr, seconds, max] => client(addr, seconds, max),
        _ => Err("usage: connbench server PORT | connbench client ADDR SECONDS MAX".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("connbench: {err}");
            ExitCode::FAILURE
        }
    }
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn server(port: &str) -> Result<()> {
    let listener = TcpListener::bind(format!("[::]:{port}"))?;
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        std::thread::spawn(move || {
            let mut byte = [0u8; 1];
            if stream.read_exact(&mut byte).is_ok() {
                let _ = stream.write_all(&byte);
            }
        });
    }
    Ok(())
}

fn client(addr: &str, seconds: &str, max: &str) -> Result<()> {
    let addr: SocketAddr = addr.parse()?;
    let budget = Duration::from_secs_f64(seconds.parse()?);
    let max: usize = max.parse()?;
    let mut samples = Vec::with_capacity(max.min(1 << 20));
    let started = Instant::now();
    while samples.len() < max && started.elapsed() < budget {
        let t = Instant::now();
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        stream.write_all(b"x")?;
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte)?;
        samples.push(t.elapsed());
    }
    let elapsed = started.elapsed().as_secs_f64();
    samples.sort();
    let pct = |p: f64| -> f64 {
        samples
            .get(((samples.len() as f64 - 1.0) * p).round() as usize)
            .map_or(0.0, |d| d.as_secs_f64() * 1e6)
    };
    println!(
        "{} {elapsed:.3} {:.1} {:.1}",
        samples.len(),
        pct(0.50),
        pct(0.99)
    );
    Ok(())
}
