//! Attempts from inside a pod: a DNS query to the pod's resolver (the gateway), then a TCP
//! connection to the first address of the answer (or to a literal IP), and the verdict table.

use std::{
    io::{IsTerminal, Read, Write},
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    sync::atomic::{AtomicU16, Ordering},
    time::Duration,
};

use hickory_proto::{
    op::{Edns, Message, Query, ResponseCode},
    rr::{Name, RData, RecordType, rdata::opt::EdnsOption},
};

use crate::topology::in_ns;

/// How long a connect may take before it counts as dropped.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(1500);
const DNS_TIMEOUT: Duration = Duration::from_secs(3);

/// One attempt: from a pod to a name (resolved through `resolver`) or a literal IP.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// The pod's workload name (`namespace/name`), for the table.
    pub pod: String,
    pub netns: String,
    pub target: String,
    pub port: u16,
    /// A or AAAA for names.
    pub qtype: RecordType,
}

/// What came of an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// `None` for a literal IP; else whether the name resolved to addresses.
    pub resolved: Option<bool>,
    /// The address tried, if any.
    pub address: Option<IpAddr>,
    pub connected: bool,
    pub why: String,
}

/// A query with EDNS (so the gateway can add an Extended DNS Error).
pub fn dns_query(name: &str, qtype: RecordType) -> Option<Vec<u8>> {
    static ID: AtomicU16 = AtomicU16::new(4242);
    let mut m = Message::query();
    m.metadata.recursion_desired = true;
    m.metadata.id = ID.fetch_add(7919, Ordering::Relaxed);
    m.add_query(Query::query(Name::from_ascii(name).ok()?, qtype));
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    m.edns = Some(edns);
    m.to_vec().ok()
}

/// Sends a query over UDP from the calling thread's namespace.
pub fn query_here(server: SocketAddr, name: &str, qtype: RecordType) -> Option<Message> {
    query_within(server, name, qtype, DNS_TIMEOUT)
}

/// [`query_here`], waiting at most `wait` for the answer (`None` without one).
pub fn query_within(
    server: SocketAddr,
    name: &str,
    qtype: RecordType,
    wait: Duration,
) -> Option<Message> {
    let bind: SocketAddr = if server.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let s = UdpSocket::bind(bind).ok()?;
    s.set_read_timeout(Some(wait)).ok()?;
    s.send_to(&dns_query(name, qtype)?, server).ok()?;
    let mut buf = vec![0u8; 65535];
    let (n, _) = s.recv_from(&mut buf).ok()?;
    Message::from_vec(&buf[..n]).ok()
}

/// The addresses in an answer (following a CNAME chain is the server's job).
pub fn addresses(m: &Message) -> Vec<IpAddr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect()
}

/// The Extended DNS Error's text (RFC 8914, option 15), if any.
pub fn ede_text(m: &Message) -> Option<String> {
    let edns = m.edns.as_ref()?;
    edns.options().as_ref().iter().find_map(|(_, o)| match o {
        EdnsOption::Unknown(15, data) if data.len() >= 2 => {
            let text = String::from_utf8_lossy(&data[2..]).to_string();
            let code = u16::from_be_bytes([data[0], data[1]]);
            Some(match (code, text.is_empty()) {
                (15, true) => "blocked".into(),
                (18, true) => "prohibited".into(),
                (_, true) => format!("EDE {code}"),
                _ => text,
            })
        }
        _ => None,
    })
}

/// Connects and, for ports 80/443, sends a request line: the path works both ways if the
/// server answers.
fn connect_here(to: SocketAddr) -> Result<String, String> {
    match TcpStream::connect_timeout(&to, CONNECT_TIMEOUT) {
        Ok(mut c) => {
            let _ = c.set_read_timeout(Some(CONNECT_TIMEOUT));
            if c.write_all(b"GET / HTTP/1.0\r\n\r\n").is_err() {
                return Err("connection broken after the handshake".into());
            }
            let mut buf = [0u8; 64];
            match c.read(&mut buf) {
                Ok(n) if n > 0 => {
                    let line = String::from_utf8_lossy(&buf[..n]);
                    let status = line.lines().next().unwrap_or_default().to_string();
                    Ok(status)
                }
                _ => Err("connected, but no reply (dropped by the datapath?)".into()),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Err("dropped by the datapath".into()),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            Err("connection refused (no server)".into())
        }
        Err(e) => Err(format!("connect failed: {e}")),
    }
}

/// `REFUSED`, `NXDOMAIN`, ... as dig prints them.
fn rcode_name(rc: ResponseCode) -> String {
    match rc {
        ResponseCode::NXDomain => "NXDOMAIN".into(),
        ResponseCode::ServFail => "SERVFAIL".into(),
        other => format!("{other:?}").to_uppercase(),
    }
}

/// Runs the attempt inside its pod, resolving through `resolver`.
pub fn attempt(a: &Attempt, resolver: SocketAddr) -> anyhow::Result<Outcome> {
    let a = a.clone();
    in_ns(&a.netns.clone(), move || {
        let (resolved, addr) = match a.target.parse::<IpAddr>() {
            Ok(ip) => (None, ip),
            Err(_) => {
                let Some(m) = query_here(resolver, &a.target, a.qtype) else {
                    return Outcome {
                        resolved: Some(false),
                        address: None,
                        connected: false,
                        why: "no DNS answer (timeout)".into(),
                    };
                };
                let rcode = m.metadata.response_code;
                let ips = addresses(&m);
                let Some(ip) = ips.first().copied() else {
                    let why = match (rcode, ede_text(&m)) {
                        (ResponseCode::NoError, _) => format!("DNS: no {} records", a.qtype),
                        (rc, Some(t)) => format!("DNS {}: {t}", rcode_name(rc)),
                        (rc, None) => format!("DNS {}", rcode_name(rc)),
                    };
                    return Outcome {
                        resolved: Some(false),
                        address: None,
                        connected: false,
                        why,
                    };
                };
                (Some(true), ip)
            }
        };
        match connect_here(SocketAddr::new(addr, a.port)) {
            Ok(status) => Outcome {
                resolved,
                address: Some(addr),
                connected: true,
                why: if status.is_empty() {
                    "allowed".into()
                } else {
                    format!("allowed ({status})")
                },
            },
            Err(why) => Outcome {
                resolved,
                address: Some(addr),
                connected: false,
                why,
            },
        }
    })
}

/// The verdict table; colour only when `colour`.
pub fn table(rows: &[(Attempt, Outcome)], colour: bool) -> String {
    let paint = |s: &str, code: &str| {
        if colour {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    };
    let head = [
        "POD",
        "DESTINATION",
        "PORT",
        "ADDRESS",
        "RESOLVED",
        "CONNECTED",
    ];
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|(a, o)| {
            [
                a.pod.clone(),
                if a.qtype == RecordType::AAAA {
                    format!("{} (AAAA)", a.target)
                } else {
                    a.target.clone()
                },
                a.port.to_string(),
                o.address.map(|ip| ip.to_string()).unwrap_or("-".into()),
                match o.resolved {
                    None => "n/a".into(),
                    Some(true) => "yes".into(),
                    Some(false) => "no".into(),
                },
                if o.connected { "yes" } else { "no" }.into(),
            ]
        })
        .collect();
    let mut width = head.map(str::len);
    for c in &cells {
        for (w, s) in width.iter_mut().zip(c.iter()) {
            *w = (*w).max(s.len());
        }
    }
    let mut out = String::new();
    for (h, w) in head.iter().zip(width) {
        out.push_str(&format!("{h:<w$}  "));
    }
    out.push_str("WHY\n");
    for (c, (_, o)) in cells.iter().zip(rows) {
        for (i, (s, w)) in c.iter().zip(width).enumerate() {
            let padded = format!("{s:<w$}");
            let painted = match (i, s.as_str()) {
                (4 | 5, "yes") => paint(&padded, "32"),
                (4 | 5, "no") => paint(&padded, "31"),
                _ => padded,
            };
            out.push_str(&painted);
            out.push_str("  ");
        }
        let why = if o.connected {
            paint(&o.why, "32")
        } else {
            paint(&o.why, "31")
        };
        out.push_str(&why);
        out.push('\n');
    }
    out
}

/// True when stdout is a terminal (for colour).
pub fn stdout_is_terminal() -> bool {
    std::io::stdout().is_terminal()
}
