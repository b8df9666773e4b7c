//! Traffic for the benchmark.
//!
//! - servers in the internet namespace: a byte sink and an echo
//! - traffic from a pod

use super::*;

pub(crate) fn ip(s: &str) -> anyhow::Result<IpAddr> {
    s.parse().with_context(|| format!("address {s}"))
}

pub(crate) fn start_servers(inet: &str) -> anyhow::Result<mpsc::Receiver<(u64, Duration)>> {
    let (tx, rx) = mpsc::channel();
    let web = ip(WEB_V4)?;
    in_ns(inet, move || {
        let sink = TcpListener::bind(SocketAddr::new(web, BULK_PORT))?;
        let echo = TcpListener::bind(SocketAddr::new(web, ECHO_PORT))?;
        thread::spawn(move || {
            for conn in sink.incoming().flatten() {
                let tx = tx.clone();
                thread::spawn(move || {
                    let (bytes, elapsed) = drain(conn);
                    let _ = tx.send((bytes, elapsed));
                });
            }
        });
        thread::spawn(move || {
            for conn in echo.incoming().flatten() {
                thread::spawn(move || echo_tcp(conn));
            }
        });
        Ok(())
    })?;
    Ok(rx)
}

/// Reads to EOF; returns the bytes and the time from the first byte to EOF.
pub(crate) fn drain(mut conn: TcpStream) -> (u64, Duration) {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    let mut first = None;
    while let Ok(n) = conn.read(&mut buf) {
        if n == 0 {
            break;
        }
        first.get_or_insert_with(Instant::now);
        total += n as u64;
    }
    (total, first.map(|t| t.elapsed()).unwrap_or_default())
}

pub(crate) fn echo_tcp(mut conn: TcpStream) {
    let _ = conn.set_nodelay(true);
    let mut buf = [0u8; 4096];
    while let Ok(n) = conn.read(&mut buf) {
        if n == 0 || conn.write_all(&buf[..n]).is_err() {
            break;
        }
    }
}

// traffic from a pod

pub(crate) struct Traffic {
    pub(crate) gbps: f64,
    pub(crate) rtt: Vec<Duration>,
    pub(crate) rtt_wall: Duration,
    pub(crate) connect: Vec<Duration>,
}

pub(crate) fn bulk(
    pod: &str,
    seconds: f64,
    results: &mpsc::Receiver<(u64, Duration)>,
) -> anyhow::Result<f64> {
    let to = SocketAddr::new(ip(WEB_V4)?, BULK_PORT);
    in_ns(pod, move || {
        let mut c = TcpStream::connect_timeout(&to, Duration::from_secs(2))
            .with_context(|| format!("connect {to}"))?;
        let buf = vec![0x5au8; 128 * 1024];
        let end = Instant::now() + Duration::from_secs_f64(seconds);
        while Instant::now() < end {
            c.write_all(&buf)?;
        }
        c.shutdown(Shutdown::Write)?;
        let mut rest = [0u8; 16];
        let _ = c.read(&mut rest);
        Ok(())
    })?;
    let (bytes, elapsed) = results
        .recv_timeout(Duration::from_secs(10))
        .context("bulk receiver result")?;
    Ok(bytes as f64 * 8.0 / elapsed.as_secs_f64().max(1e-9) / 1e9)
}

/// A connection to the echo server (call inside the pod's namespace), warmed up with 100
/// 64-byte round trips.
pub(crate) fn warm_echo_connection() -> anyhow::Result<TcpStream> {
    let to = SocketAddr::new(ip(WEB_V4)?, ECHO_PORT);
    let mut c = TcpStream::connect_timeout(&to, Duration::from_secs(2))
        .with_context(|| format!("connect {to}"))?;
    c.set_nodelay(true)?;
    c.set_read_timeout(Some(Duration::from_secs(2)))?;
    let msg = [0x42u8; 64];
    let mut back = [0u8; 64];
    for _ in 0..100 {
        c.write_all(&msg)?;
        c.read_exact(&mut back)?;
    }
    Ok(c)
}

pub(crate) fn ping_pong(pod: &str, n: usize) -> anyhow::Result<(Vec<Duration>, Duration)> {
    in_ns(pod, move || {
        let mut c = warm_echo_connection()?;
        let msg = [0x42u8; 64];
        let mut back = [0u8; 64];
        let mut v = Vec::with_capacity(n);
        let start = Instant::now();
        for _ in 0..n {
            let t = Instant::now();
            c.write_all(&msg)?;
            c.read_exact(&mut back)?;
            v.push(t.elapsed());
        }
        Ok((v, start.elapsed()))
    })
}

/// New connections: connect (SYN, SYN-ACK, ACK) plus one 64-byte exchange, then close
/// (with a RST, untimed).
pub(crate) fn connects(pod: &str, n: usize) -> anyhow::Result<Vec<Duration>> {
    let to = SocketAddr::new(ip(WEB_V4)?, ECHO_PORT);
    in_ns(pod, move || {
        let mut v = Vec::with_capacity(n);
        let msg = [0x42u8; 64];
        let mut back = [0u8; 64];
        for _ in 0..n {
            let t = Instant::now();
            let mut c = TcpStream::connect_timeout(&to, Duration::from_secs(2))
                .with_context(|| format!("connect {to}"))?;
            c.set_nodelay(true)?;
            c.write_all(&msg)?;
            c.read_exact(&mut back)?;
            v.push(t.elapsed());
            // close with a RST: thousands of client TIME_WAIT sockets to one address and
            // port make the kernel's ephemeral port search slow (then EADDRNOTAVAIL), which
            // would be measured as connection time
            socket2::SockRef::from(&c).set_linger(Some(Duration::ZERO))?;
            drop(c);
        }
        Ok(v)
    })
}

pub(crate) fn traffic(
    pod: &str,
    args: &Args,
    results: &mpsc::Receiver<(u64, Duration)>,
) -> anyhow::Result<Traffic> {
    let gbps = bulk(pod, args.seconds as f64, results)?;
    let (rtt, rtt_wall) = ping_pong(pod, args.round_trips)?;
    let connect = connects(pod, args.connections)?;
    Ok(Traffic {
        gbps,
        rtt,
        rtt_wall,
        connect,
    })
}

pub(crate) fn pct(v: &mut [Duration], p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

pub(crate) fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
