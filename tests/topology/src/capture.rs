//! Packet captures on a topology's links, for claims like "these bytes were
//! encrypted on the wire".
use std::{
    fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::Stdio,
    sync::mpsc,
    time::Duration,
};

use crate::{
    Error,
    process::{Place, Process},
};

const START_TIMEOUT: Duration = Duration::from_secs(5);
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// A running `tcpdump` on one interface.
pub struct PacketCapture {
    process: Process,
    file: PathBuf,
}

impl PacketCapture {
    /// Starts `tcpdump -i <iface> [filter]` in `place` and returns once it is
    /// capturing.
    pub(crate) fn start(place: &Place, iface: &str, filter: &[&str]) -> Result<Self, Error> {
        fs::create_dir_all(&place.scratch)
            .map_err(|e| Error::io(format!("creating {}", place.scratch.display()), e))?;
        let file = (0..)
            .map(|i| {
                place
                    .scratch
                    .join(format!("{}-{iface}.{i}.pcap", place.netns))
            })
            .find(|p| !p.exists())
            .unwrap_or_else(|| place.scratch.join("capture.pcap"));
        let mut cmd = place.command("tcpdump")?;
        // -U: write each packet as it comes, so nothing is lost on stop.
        cmd.args(["-n", "-U", "-s", "0", "-i", iface, "-w"])
            .arg(&file)
            .args(filter)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| Error::io("starting tcpdump (is it installed?)", e))?;
        let stderr = child.stderr.take();
        let label = format!("tcpdump on {}:{iface}", place.label);
        let mut process = Process::from_child(child, &label);

        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let Some(stderr) = stderr else { return };
            let mut said = Vec::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("listening on") {
                    let _ = tx.send(Ok(()));
                    return;
                }
                said.push(line);
            }
            let _ = tx.send(Err(said.join("\n")));
        });
        match rx.recv_timeout(START_TIMEOUT) {
            Ok(Ok(())) => Ok(Self { process, file }),
            Ok(Err(stderr)) => {
                let status = process.kill()?;
                Err(Error::Command {
                    command: label,
                    status: status.to_string(),
                    stderr,
                })
            }
            Err(_) => Err(Error::Timeout {
                what: label,
                after: START_TIMEOUT,
            }),
        }
    }

    /// Stops the capture and reads what it saw.
    pub fn finish(mut self) -> Result<Pcap, Error> {
        self.process.signal(libc::SIGINT)?;
        if self.process.wait_timeout(STOP_TIMEOUT)?.is_none() {
            self.process.kill()?;
        }
        Pcap::read(&self.file)
    }
}

/// The packets of a finished capture.
#[derive(Debug)]
pub struct Pcap {
    pub file: PathBuf,
    pub packets: Vec<Vec<u8>>,
}

impl Pcap {
    /// Reads a classic libpcap file (what `tcpdump -w` writes).
    pub fn read(path: &Path) -> Result<Self, Error> {
        let bytes =
            fs::read(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        let packets = parse(&bytes)
            .ok_or_else(|| Error::Capture(format!("{} is not a pcap file", path.display())))?;
        Ok(Self {
            file: path.into(),
            packets,
        })
    }

    pub fn len(&self) -> usize {
        self.packets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.packets.is_empty()
    }

    /// Whether any packet contains `needle` (payload search).
    pub fn contains(&self, needle: &[u8]) -> bool {
        !needle.is_empty()
            && self
                .packets
                .iter()
                .any(|p| p.windows(needle.len()).any(|w| w == needle))
    }
}

fn parse(bytes: &[u8]) -> Option<Vec<Vec<u8>>> {
    let magic = bytes.get(..4)?;
    let read_u32: fn([u8; 4]) -> u32 = match magic {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => u32::from_le_bytes,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => u32::from_be_bytes,
        _ => return None,
    };
    let mut packets = Vec::new();
    let mut at = 24;
    while at < bytes.len() {
        let header = bytes.get(at..at + 16)?;
        let caplen = read_u32(header[8..12].try_into().ok()?) as usize;
        let data = bytes.get(at + 16..at + 16 + caplen)?;
        packets.push(data.to_vec());
        at += 16 + caplen;
    }
    Some(packets)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pcap_le(packets: &[&[u8]]) -> Vec<u8> {
        let mut out = vec![0xd4, 0xc3, 0xb2, 0xa1];
        out.extend_from_slice(&[0; 20]);
        for p in packets {
            out.extend_from_slice(&[0; 8]);
            out.extend_from_slice(&(p.len() as u32).to_le_bytes());
            out.extend_from_slice(&(p.len() as u32).to_le_bytes());
            out.extend_from_slice(p);
        }
        out
    }

    #[test]
    fn parses_packets() {
        let packets = parse(&pcap_le(&[b"hello", b"GET / HTTP/1.1"])).unwrap();
        assert_eq!(packets.len(), 2);
        let pcap = Pcap {
            file: PathBuf::new(),
            packets,
        };
        assert!(pcap.contains(b"GET /"));
        assert!(!pcap.contains(b"POST"));
        assert!(!pcap.contains(b""));
    }

    #[test]
    fn rejects_garbage_and_truncation() {
        assert!(parse(b"nope").is_none());
        let mut truncated = pcap_le(&[b"hello"]);
        truncated.pop();
        assert!(parse(&truncated).is_none());
        assert_eq!(parse(&pcap_le(&[])).unwrap().len(), 0);
    }
}
