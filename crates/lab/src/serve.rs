//! The internet's web servers: TCP listeners that answer an HTTP request with a short page
//! naming the address reached, and echo anything else back (what the datapath tests use).
//! Run by `dnsfence lab serve-http ADDR...` inside the internet namespace.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    thread,
};

use anyhow::Context;

/// Binds every address (IPv6 ones v6-only, so `[::]` and `0.0.0.0` can share a port).
pub fn bind(addrs: &[SocketAddr]) -> anyhow::Result<Vec<TcpListener>> {
    addrs
        .iter()
        .map(|a| {
            let s = socket2::Socket::new(
                socket2::Domain::for_address(*a),
                socket2::Type::STREAM,
                None,
            )?;
            if a.is_ipv6() {
                s.set_only_v6(true)?;
            }
            s.set_reuse_address(true)?;
            s.bind(&(*a).into()).with_context(|| format!("bind {a}"))?;
            s.listen(1024)?;
            Ok(TcpListener::from(s))
        })
        .collect()
}

/// Serves the listeners on background threads (they live as long as the process).
pub fn spawn(listeners: Vec<TcpListener>) {
    for l in listeners {
        thread::spawn(move || {
            for conn in l.incoming().flatten() {
                thread::spawn(move || handle(conn));
            }
        });
    }
}

/// Serves until the process is killed.
pub fn serve_forever(addrs: &[SocketAddr]) -> anyhow::Result<()> {
    spawn(bind(addrs)?);
    loop {
        thread::park();
    }
}

fn looks_like_http(data: &[u8]) -> bool {
    let methods: [&[u8]; 5] = [b"GET ", b"HEAD ", b"POST ", b"PUT ", b"OPTIONS "];
    methods.iter().any(|m| data.starts_with(m))
}

fn handle(mut conn: TcpStream) {
    let mut buf = [0u8; 4096];
    let Ok(n) = conn.read(&mut buf) else { return };
    if n == 0 {
        return;
    }
    if looks_like_http(&buf[..n]) {
        let local = conn.local_addr().map(|a| a.to_string()).unwrap_or_default();
        let body = format!("hello from the dnsfence lab internet ({local})\n");
        let _ = write!(
            conn,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        return;
    }
    if conn.write_all(&buf[..n]).is_err() {
        return;
    }
    while let Ok(n) = conn.read(&mut buf) {
        if n == 0 || conn.write_all(&buf[..n]).is_err() {
            break;
        }
    }
}
