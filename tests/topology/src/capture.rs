//! Packet captures on a topology's links, for claims like "these bytes were
//! encrypted on the wire".
use std::{
    fs,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
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
        let dir = place.scratch_dir()?;
        let (file, log) = (0..)
            .map(|i| {
                (
                    dir.join(format!("{iface}.{i}.pcap")),
                    dir.join(format!("{iface}.{i}.tcpdump.log")),
                )
            })
            .find(|(p, _)| !p.exists())
            .unwrap_or_else(|| (dir.join("capture.pcap"), dir.join("capture.tcpdump.log")));
        let log_file = fs::File::create(&log)
            .map_err(|e| Error::io(format!("creating {}", log.display()), e))?;
        let mut cmd = place.command("tcpdump")?;
        // Packets go to the file as they come: --immediate-mode hands each one
        // to tcpdump at once (libpcap otherwise holds them in its ring until a
        // block fills or a timeout, and a stop discards them), -U writes it.
        cmd.args(["-n", "--immediate-mode", "-U", "-s", "0", "-i", iface, "-w"])
            .arg(&file)
            .args(filter)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        let child = cmd
            .spawn()
            .map_err(|e| Error::io("starting tcpdump (is it installed?)", e))?;
        let label = format!("tcpdump on {}:{iface}", place.label);
        let mut process = Process::from_child(child, &label);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let said = fs::read_to_string(&log).unwrap_or_default();
            if said.contains("listening on") {
                return Ok(Self { process, file });
            }
            if let Some(status) = process.wait_timeout(Duration::ZERO)? {
                return Err(Error::Command {
                    command: label,
                    status: status.to_string(),
                    stderr: said,
                });
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: label,
                    after: START_TIMEOUT,
                });
            }
            std::thread::sleep(Duration::from_millis(10));
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

    /// The TCP segments (of Ethernet frames carrying IPv4 or IPv6).
    pub fn tcp_segments(&self) -> impl Iterator<Item = TcpSegment<'_>> {
        self.packets.iter().filter_map(|p| tcp_segment(p))
    }

    /// Source and destination ports seen in TCP segments.
    pub fn tcp_ports(&self) -> std::collections::BTreeSet<u16> {
        self.tcp_segments()
            .flat_map(|s| [s.src_port, s.dst_port])
            .collect()
    }

    /// TLS ClientHello messages: segments whose payload starts a TLS
    /// handshake record holding a ClientHello.
    pub fn tls_handshakes(&self) -> usize {
        self.tcp_segments()
            .filter(|s| matches!(s.payload, [0x16, 0x03, _, _, _, 0x01, ..]))
            .count()
    }
}

/// The parts of a TCP segment tests look at.
#[derive(Debug)]
pub struct TcpSegment<'a> {
    pub src_port: u16,
    pub dst_port: u16,
    pub payload: &'a [u8],
}

fn tcp_segment(frame: &[u8]) -> Option<TcpSegment<'_>> {
    const IPPROTO_TCP: u8 = 6;
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    let ip = frame.get(14..)?;
    let (protocol, tcp) = match ethertype {
        0x0800 => {
            let header_len = usize::from(ip.first()? & 0x0f) * 4;
            (*ip.get(9)?, ip.get(header_len..)?)
        }
        // IPv6 without extension headers, which is all the kernel sends here.
        0x86dd => (*ip.get(6)?, ip.get(40..)?),
        _ => return None,
    };
    if protocol != IPPROTO_TCP {
        return None;
    }
    let data_offset = usize::from(tcp.get(12)? >> 4) * 4;
    Some(TcpSegment {
        src_port: u16::from_be_bytes([*tcp.first()?, *tcp.get(1)?]),
        dst_port: u16::from_be_bytes([*tcp.get(2)?, *tcp.get(3)?]),
        payload: tcp.get(data_offset..)?,
    })
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

    /// An Ethernet + IPv4 + TCP frame with `payload`.
    fn frame(src_port: u16, dst_port: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x08, 0x00]);
        let mut ip = vec![
            0x45, 0, 0, 0, 0, 0, 0, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        let mut tcp = vec![0u8; 20];
        tcp[..2].copy_from_slice(&src_port.to_be_bytes());
        tcp[2..4].copy_from_slice(&dst_port.to_be_bytes());
        tcp[12] = 5 << 4;
        tcp.extend_from_slice(payload);
        ip.extend_from_slice(&tcp);
        f.extend_from_slice(&ip);
        f
    }

    #[test]
    fn finds_ports_and_client_hellos() {
        let hello = [0x16, 0x03, 0x01, 0x00, 0x40, 0x01, 0x00];
        let pcap = Pcap {
            file: PathBuf::new(),
            packets: vec![
                frame(40000, 15008, &hello),
                frame(15008, 40000, b"\x17\x03\x03"),
                vec![1, 2, 3],
            ],
        };
        assert_eq!(pcap.tls_handshakes(), 1);
        assert_eq!(
            pcap.tcp_ports().into_iter().collect::<Vec<_>>(),
            [15008, 40000]
        );
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
