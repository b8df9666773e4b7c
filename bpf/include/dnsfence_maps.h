/* SPDX-License-Identifier: Apache-2.0 */
/*
 * dnsfence datapath: map key/value layouts, verdict reason codes and limits.
 *
 * This header is the single definition of every structure shared between the
 * kernel programs (bpf/dnsfence.c) and the node-enforcer
 * (services/node-enforcer/src/maps.rs). The Rust side mirrors each struct with
 * #[repr(C)] and asserts the same sizes and offsets, so a change here that is
 * not made there fails the build on one side or the other.
 *
 * Addresses are always 16 bytes in network byte order; IPv4 is mapped into
 * IPv6 as ::ffff:a.b.c.d so one map serves both families.
 */
#ifndef DNSFENCE_MAPS_H
#define DNSFENCE_MAPS_H

#include <linux/types.h>

/* ---- limits ------------------------------------------------------------ */

/* Port-range slots per grant / CIDR entry. Userspace merges into them. */
#define DF_PORT_SLOTS 8

/* Default map sizes (userspace may override max_entries at load time). */
#define DF_PODS_MAX 16384
#define DF_GRANTS_MAX 1048576
#define DF_CIDRS_MAX 65536
#define DF_GATEWAYS_MAX 256
#define DF_CONNTRACK_MAX 131072
#define DF_EVENT_LIMIT_MAX 16384
#define DF_EVENTS_BYTES (256 * 1024)

/* Conntrack idle timeouts: an entry older than this is treated as absent. */
#define DF_CT_TIMEOUT_TCP_NS (3600ULL * 1000000000ULL)
#define DF_CT_TIMEOUT_OTHER_NS (120ULL * 1000000000ULL)
/* last_seen is rewritten at most this often, to spare cache lines. */
#define DF_CT_REFRESH_NS (1000000000ULL)

/* Event rate limit per pod: a token bucket of DF_EVENT_BURST tokens refilled
 * at one token per DF_EVENT_INTERVAL_NS. */
#define DF_EVENT_BURST 20
#define DF_EVENT_INTERVAL_NS (10ULL * 1000000ULL)

/* The IPv4 bit of the cidrs key's id: IPv4 rules are stored under
 * (id | DF_CIDR_ID_V4) so that an IPv6 rule such as ::/0 never covers the
 * v4-mapped range ::ffff:0:0/96. Allowlist ids are therefore < 2^31. */
#define DF_CIDR_ID_V4 0x80000000u

/* ---- enums ------------------------------------------------------------- */

/* pods.mode */
#define DF_MODE_ENFORCE 1 /* default deny: drop what nothing allows */
#define DF_MODE_AUDIT 2   /* default deny is logged but the packet passes */
#define DF_MODE_ALLOW 3   /* unrestricted (anti-spoofing still applies) */

/* port_range.proto: IANA protocol numbers; 0 = any protocol. */
#define DF_PROTO_ANY 0

/* gateways value flags */
#define DF_GW_DNS 1 /* udp/tcp 53 to this address is always allowed */

/* conntrack value flags */
#define DF_CT_OUTBOUND 1 /* created by an allowed packet from the pod */
#define DF_CT_INBOUND 2  /* created by a connection to the pod */
#define DF_CT_FRAG 4     /* ports-0 entry that admits non-first fragments */
#define DF_CT_AUDIT 8    /* created by an audit-mode pass: ignored once enforced */

/* event.direction */
#define DF_DIR_EGRESS 0  /* from the pod */
#define DF_DIR_INGRESS 1 /* to the pod */

/* event.verdict */
#define DF_VERDICT_DROP 0
#define DF_VERDICT_PASS 1

/*
 * Reason codes: the index into the counters array and event.reason.
 * Keep in sync with `Reason` in services/node-enforcer/src/maps.rs.
 */
#define DF_R_NONE 0
#define DF_R_CT_ESTABLISHED 1 /* pass: tracked flow */
#define DF_R_CT_RELATED 2     /* pass: ICMP error about a tracked flow */
#define DF_R_DNS_GATEWAY 3    /* pass: DNS to a gateway */
#define DF_R_GRANT 4          /* pass: live grant */
#define DF_R_CIDR 5           /* pass: CIDR rule */
#define DF_R_UNENFORCED 6     /* pass: pod in allow mode */
#define DF_R_LINK_LOCAL 7     /* pass: ARP, IPv6 ND, link-local */
#define DF_R_FRAGMENT 8       /* pass: non-first fragment of a tracked flow */
#define DF_R_AUDIT 9          /* pass: would be dropped, pod in audit mode */
#define DF_R_INGRESS 10       /* pass: packet to the pod */
#define DF_R_DEFAULT_DENY 11  /* drop: nothing allows it */
#define DF_R_SPOOFED 12       /* drop: source is not a pod of this interface */
#define DF_R_FRAG_UNTRACKED 13 /* drop: non-first fragment, no tracked flow */
#define DF_R_MALFORMED 14     /* drop: truncated headers / too many ext headers */
#define DF_R_NON_IP 15        /* drop: neither IPv4, IPv6 nor ARP, or VLAN */
#define DF_R_EVENTS_SUPPRESSED 16 /* counter only: event rate-limited */
#define DF_R_EVENTS_LOST 17   /* counter only: ring buffer full */
#define DF_R_MAX 32           /* counters array size */

/* ---- map layouts ------------------------------------------------------- */

/* pods: key = 16-byte pod address */
struct df_pod_key {
	__u8 addr[16];
};

struct df_pod_value {
	__u32 ifindex;   /* host-side interface the pod sits behind */
	__u32 policy_id; /* allowlist id, the cidrs key's id (< 2^31) */
	__u8 mode;       /* DF_MODE_* */
	__u8 _pad[7];
};

/* One allowed (protocol, port range) with its CLOCK_BOOTTIME deadline.
 * expiry_ns == 0 marks an empty slot; CIDR rules use ~0 (never). */
struct df_port_range {
	__u64 expiry_ns;
	__u16 start; /* host byte order, inclusive */
	__u16 end;   /* host byte order, inclusive */
	__u8 proto;  /* DF_PROTO_ANY or IPPROTO_* */
	__u8 _pad[3];
};

struct df_ports {
	struct df_port_range r[DF_PORT_SLOTS];
};

/* grants: (pod, destination) -> df_ports */
struct df_grant_key {
	__u8 pod[16];
	__u8 dst[16];
};

/* cidrs: LPM trie. prefixlen counts bits of (id, addr): 32 + address bits. */
struct df_cidr_key {
	__u32 prefixlen;
	__u32 id; /* allowlist id (| DF_CIDR_ID_V4); native order: always fully matched */
	__u8 addr[16];
};

/* gateways: 16-byte address -> flags */
struct df_gateway_value {
	__u32 flags; /* DF_GW_* */
};

/* conntrack: one entry per flow, always in the pod's orientation:
 * pod = the pod's address, peer = the other end; so both directions of a
 * flow find the same entry. ICMP echo uses pod_port = identifier. */
struct df_ct_key {
	__u8 pod[16];
	__u8 peer[16];
	__u16 pod_port;  /* network byte order */
	__u16 peer_port; /* network byte order */
	__u8 proto;
	__u8 _pad[3];
};

struct df_ct_value {
	__u64 last_seen_ns; /* CLOCK_BOOTTIME */
	__u32 flags;        /* DF_CT_* */
	__u32 _pad;
};

/* counters: per-CPU array indexed by DF_R_* */
struct df_counter {
	__u64 packets;
	__u64 bytes;
};

/* event_limit: per-pod token bucket (LRU hash keyed by df_pod_key) */
struct df_event_limit {
	__u64 last_ns;
	__u64 tokens;
};

/* events: ring buffer record */
struct df_event {
	__u64 timestamp_ns; /* CLOCK_BOOTTIME */
	__u8 pod[16];       /* the pod's address (the claimed source if spoofed) */
	__u8 peer[16];      /* the other end */
	__u16 pod_port;     /* host byte order */
	__u16 peer_port;    /* host byte order */
	__u8 proto;
	__u8 verdict;   /* DF_VERDICT_* */
	__u8 reason;    /* DF_R_* */
	__u8 direction; /* DF_DIR_* */
	__u32 ifindex;
	__u32 policy_id;
};

/* clock_cache: per-CPU cache of CLOCK_BOOTTIME, re-read when jiffies moves on (conntrack
 * timestamps only; see now_coarse in dnsfence.c). Not read by userspace. */
struct df_clock {
	__u64 jiffies; /* bpf_jiffies64() when boot_ns was read */
	__u64 boot_ns; /* CLOCK_BOOTTIME; 0 = not read yet */
};

/* ---- layout assertions (mirrored in maps.rs) --------------------------- */

#define DF_ASSERT_SIZE(t, n) _Static_assert(sizeof(t) == (n), "size of " #t)
#define DF_ASSERT_OFF(t, f, n) \
	_Static_assert(__builtin_offsetof(t, f) == (n), "offset of " #t "." #f)

DF_ASSERT_SIZE(struct df_pod_key, 16);
DF_ASSERT_SIZE(struct df_pod_value, 16);
DF_ASSERT_OFF(struct df_pod_value, ifindex, 0);
DF_ASSERT_OFF(struct df_pod_value, policy_id, 4);
DF_ASSERT_OFF(struct df_pod_value, mode, 8);
DF_ASSERT_SIZE(struct df_port_range, 16);
DF_ASSERT_OFF(struct df_port_range, expiry_ns, 0);
DF_ASSERT_OFF(struct df_port_range, start, 8);
DF_ASSERT_OFF(struct df_port_range, end, 10);
DF_ASSERT_OFF(struct df_port_range, proto, 12);
DF_ASSERT_SIZE(struct df_ports, 16 * DF_PORT_SLOTS);
DF_ASSERT_SIZE(struct df_grant_key, 32);
DF_ASSERT_OFF(struct df_grant_key, dst, 16);
DF_ASSERT_SIZE(struct df_cidr_key, 24);
DF_ASSERT_OFF(struct df_cidr_key, id, 4);
DF_ASSERT_OFF(struct df_cidr_key, addr, 8);
DF_ASSERT_SIZE(struct df_gateway_value, 4);
DF_ASSERT_SIZE(struct df_ct_key, 40);
DF_ASSERT_OFF(struct df_ct_key, peer, 16);
DF_ASSERT_OFF(struct df_ct_key, pod_port, 32);
DF_ASSERT_OFF(struct df_ct_key, peer_port, 34);
DF_ASSERT_OFF(struct df_ct_key, proto, 36);
DF_ASSERT_SIZE(struct df_ct_value, 16);
DF_ASSERT_OFF(struct df_ct_value, flags, 8);
DF_ASSERT_SIZE(struct df_counter, 16);
DF_ASSERT_SIZE(struct df_event_limit, 16);
DF_ASSERT_SIZE(struct df_clock, 16);
DF_ASSERT_OFF(struct df_clock, boot_ns, 8);
DF_ASSERT_SIZE(struct df_event, 56);
DF_ASSERT_OFF(struct df_event, pod, 8);
DF_ASSERT_OFF(struct df_event, peer, 24);
DF_ASSERT_OFF(struct df_event, pod_port, 40);
DF_ASSERT_OFF(struct df_event, peer_port, 42);
DF_ASSERT_OFF(struct df_event, proto, 44);
DF_ASSERT_OFF(struct df_event, verdict, 45);
DF_ASSERT_OFF(struct df_event, reason, 46);
DF_ASSERT_OFF(struct df_event, direction, 47);
DF_ASSERT_OFF(struct df_event, ifindex, 48);
DF_ASSERT_OFF(struct df_event, policy_id, 52);

#endif /* DNSFENCE_MAPS_H */
