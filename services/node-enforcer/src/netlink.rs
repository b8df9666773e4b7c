//! Route and link look-ups over rtnetlink, in the caller's network namespace.
//!
//! The enforcer finds a pod's host-side interface the way the CNI wired it: by the host
//! route to the pod's address (a /32 or /128 whose output interface is the pod's veth,
//! as Calico-style routed setups have). No `ip` subprocesses: one blocking netlink
//! socket per request, so the thread's network namespace is the one consulted.

use std::net::IpAddr;

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    link::{LinkAttribute, LinkMessage},
    route::{RouteAddress, RouteAttribute, RouteMessage, RouteType},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use crate::{Error, Result};

fn nl_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Netlink(format!("{what}: {e}"))
}

/// Sends one request and collects every message of the reply until DONE (for a dump)
/// or the first non-multipart message. An error reply with `ENODEV` yields no messages.
fn request(msg: RouteNetlinkMessage, flags: u16) -> Result<Vec<RouteNetlinkMessage>> {
    let mut socket = Socket::new(NETLINK_ROUTE).map_err(|e| nl_err("socket", e))?;
    socket.bind_auto().map_err(|e| nl_err("bind", e))?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(|e| nl_err("connect", e))?;

    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = 1;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
    packet.finalize();
    let mut buf = vec![0u8; packet.buffer_len()];
    packet.serialize(&mut buf[..]);
    socket.send(&buf[..], 0).map_err(|e| nl_err("send", e))?;

    let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
    let mut out = Vec::new();
    loop {
        let (data, _) = socket.recv_from_full().map_err(|e| nl_err("recv", e))?;
        if data.is_empty() {
            return Ok(out);
        }
        let mut offset = 0;
        while offset < data.len() {
            let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[offset..])
                .map_err(|e| nl_err("decode", e))?;
            let len = msg.header.length as usize;
            match msg.payload {
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::Error(err) => {
                    return match err.code {
                        None => Ok(out),
                        Some(code) if code.get() == -nix::libc::ENODEV => Ok(out),
                        Some(code) => Err(nl_err(
                            "request",
                            std::io::Error::from_raw_os_error(-code.get()),
                        )),
                    };
                }
                NetlinkPayload::InnerMessage(inner) => {
                    out.push(inner);
                    if !dump {
                        return Ok(out);
                    }
                }
                _ => {}
            }
            if len == 0 {
                break;
            }
            offset += len;
        }
    }
}

/// The output interface of the host route (/32 or /128, main table, unicast) to `ip`,
/// or `None` when there is no such route (the pod is not on this node, or not wired yet).
pub fn pod_interface(ip: IpAddr) -> Result<Option<u32>> {
    let mut query = RouteMessage::default();
    let (family, host_len) = match ip {
        IpAddr::V4(_) => (AddressFamily::Inet, 32),
        IpAddr::V6(_) => (AddressFamily::Inet6, 128),
    };
    query.header.address_family = family;
    let routes = request(
        RouteNetlinkMessage::GetRoute(query),
        NLM_F_REQUEST | NLM_F_DUMP,
    )?;
    for msg in routes {
        let RouteNetlinkMessage::NewRoute(route) = msg else {
            continue;
        };
        if route.header.destination_prefix_length != host_len
            || route.header.kind != RouteType::Unicast
        {
            continue;
        }
        let mut dst = None;
        let mut oif = None;
        let mut table = u32::from(route.header.table);
        for attr in &route.attributes {
            match attr {
                RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = Some(IpAddr::V4(*a)),
                RouteAttribute::Destination(RouteAddress::Inet6(a)) => dst = Some(IpAddr::V6(*a)),
                RouteAttribute::Oif(i) => oif = Some(*i),
                RouteAttribute::Table(t) => table = *t,
                _ => {}
            }
        }
        // RT_TABLE_MAIN
        if dst == Some(ip)
            && table == 254
            && let Some(oif) = oif
        {
            return Ok(Some(oif));
        }
    }
    Ok(None)
}

/// The name of interface `ifindex`, or `None` when there is none.
pub fn interface_name(ifindex: u32) -> Result<Option<String>> {
    let mut query = LinkMessage::default();
    query.header.index = ifindex;
    let links = request(RouteNetlinkMessage::GetLink(query), NLM_F_REQUEST)?;
    for msg in links {
        if let RouteNetlinkMessage::NewLink(link) = msg {
            for attr in link.attributes {
                if let LinkAttribute::IfName(name) = attr {
                    return Ok(Some(name));
                }
            }
        }
    }
    Ok(None)
}
