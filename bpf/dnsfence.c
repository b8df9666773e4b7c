// SPDX-License-Identifier: Apache-2.0
/*
 * dnsfence datapath: tc programs on the host side of a pod's interface.
 *
 *   pod_egress  - tc ingress of the host veth: packets the pod sends. Decides.
 *   pod_ingress - tc egress of the host veth: packets to the pod. Always passes,
 *                 but records inbound connections so the pod's replies pass.
 *
 * Egress verdict order (first match wins), see bpf/README.md:
 *   ARP / IPv6 ND / link-local -> anti-spoofing -> allow-mode pod ->
 *   non-first fragment of a tracked flow -> tracked flow -> ICMP error about a
 *   tracked flow -> DNS to a gateway -> live grant -> CIDR rule ->
 *   default (drop when enforced, log-and-pass in audit mode).
 *
 * Only helpers that are not GPL-only are used, so the Apache-2.0 license
 * string below is accepted by the kernel.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "dnsfence_maps.h"
#include "dnsfence_parse.h"

char LICENSE[] SEC("license") = "Apache-2.0";

/* ---- maps -------------------------------------------------------------- */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, DF_PODS_MAX);
	__type(key, struct df_pod_key);
	__type(value, struct df_pod_value);
} pods SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, DF_GRANTS_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct df_grant_key);
	__type(value, struct df_ports);
} grants SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, DF_CIDRS_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct df_cidr_key);
	__type(value, struct df_ports);
} cidrs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, DF_GATEWAYS_MAX);
	__type(key, struct df_pod_key);
	__type(value, struct df_gateway_value);
} gateways SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, DF_CONNTRACK_MAX);
	__type(key, struct df_ct_key);
	__type(value, struct df_ct_value);
} conntrack SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DF_R_MAX);
	__type(key, __u32);
	__type(value, struct df_counter);
} counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, DF_EVENT_LIMIT_MAX);
	__type(key, struct df_pod_key);
	__type(value, struct df_event_limit);
} event_limit SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, DF_EVENTS_BYTES);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct df_clock);
} clock_cache SEC(".maps");

/* ---- clocks ------------------------------------------------------------ */

/* CLOCK_BOOTTIME, exact: grant expiries, events, the event rate limit. */
static __always_inline __u64 now_exact(void)
{
	return bpf_ktime_get_boot_ns();
}

/* CLOCK_BOOTTIME as read at most one jiffy ago on this CPU: conntrack's idle
 * timestamps (timeouts of minutes, refresh once a second). bpf_jiffies64 is inlined
 * by the verifier (a load), bpf_ktime_get_boot_ns is a call that reads the clock
 * source, so established packets skip it until the tick moves on. */
static __always_inline __u64 now_coarse(void)
{
	__u32 zero = 0;
	struct df_clock *c = bpf_map_lookup_elem(&clock_cache, &zero);
	__u64 j = bpf_jiffies64();

	if (!c)
		return bpf_ktime_get_boot_ns();
	if (c->jiffies != j || !c->boot_ns) {
		c->boot_ns = bpf_ktime_get_boot_ns();
		c->jiffies = j;
	}
	return c->boot_ns;
}

/* ---- accounting -------------------------------------------------------- */

static __always_inline void count(__u32 reason, __u32 len)
{
	struct df_counter *c = bpf_map_lookup_elem(&counters, &reason);

	if (c) {
		c->packets += 1;
		c->bytes += len;
	}
}

/* Per-pod token bucket so one chatty pod cannot flood the ring buffer. */
static __always_inline int event_allowed(const __u8 *pod, __u64 now)
{
	struct df_pod_key k;
	struct df_event_limit *l, fresh;
	__u64 tokens, credit;

	__builtin_memcpy(k.addr, pod, 16);
	l = bpf_map_lookup_elem(&event_limit, &k);
	if (!l) {
		fresh.last_ns = now;
		fresh.tokens = DF_EVENT_BURST - 1;
		bpf_map_update_elem(&event_limit, &k, &fresh, BPF_ANY);
		return 1;
	}
	credit = (now - l->last_ns) / DF_EVENT_INTERVAL_NS;
	tokens = l->tokens + credit;
	if (tokens >= DF_EVENT_BURST) {
		tokens = DF_EVENT_BURST;
		l->last_ns = now;
	} else {
		/* keep the partial interval not yet credited */
		l->last_ns += credit * DF_EVENT_INTERVAL_NS;
	}
	if (tokens == 0)
		return 0;
	l->tokens = tokens - 1;
	return 1;
}

/* Events are rate-limited per pod address; spoofed packets per interface instead (the
 * claimed source is chosen by the sender), keyed by ff:ff:ff:fe + ifindex, a multicast
 * address no pod sends from. */
static __always_inline void emit(struct __sk_buff *skb, const struct pkt *p,
				 const __u8 *limit_key, const __u8 *pod, const __u8 *peer,
				 __u16 pod_port, __u16 peer_port, __u8 verdict,
				 __u8 reason, __u8 dir, __u32 policy_id, __u64 now)
{
	struct df_event *e;

	if (!event_allowed(limit_key, now)) {
		count(DF_R_EVENTS_SUPPRESSED, 0);
		return;
	}
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(DF_R_EVENTS_LOST, 0);
		return;
	}
	e->timestamp_ns = now;
	__builtin_memcpy(e->pod, pod, 16);
	__builtin_memcpy(e->peer, peer, 16);
	e->pod_port = bpf_ntohs(pod_port);
	e->peer_port = bpf_ntohs(peer_port);
	e->proto = p->proto;
	e->verdict = verdict;
	e->reason = reason;
	e->direction = dir;
	e->ifindex = skb->ifindex;
	e->policy_id = policy_id;
	bpf_ringbuf_submit(e, 0);
}

/* ---- conntrack --------------------------------------------------------- */

static __always_inline __u64 ct_timeout(__u8 proto)
{
	return proto == IPPROTO_TCP ? DF_CT_TIMEOUT_TCP_NS : DF_CT_TIMEOUT_OTHER_NS;
}

/* Returns the live entry for key, refreshing it; NULL if absent or idle. The idle time
 * is signed: another CPU may have stamped the entry after this CPU read its (coarse)
 * clock, and such an entry is live (unsigned, it would look idle for centuries). */
static __always_inline struct df_ct_value *ct_find(const struct df_ct_key *k, __u64 now)
{
	struct df_ct_value *v = bpf_map_lookup_elem(&conntrack, k);
	__s64 idle;

	if (!v)
		return 0;
	idle = (__s64)(now - v->last_seen_ns);
	if (idle > (__s64)ct_timeout(k->proto))
		return 0;
	if (idle > (__s64)DF_CT_REFRESH_NS)
		v->last_seen_ns = now;
	return v;
}

static __always_inline void ct_put(const struct df_ct_key *k, __u32 flags, __u64 now)
{
	struct df_ct_value v = {.last_seen_ns = now, .flags = flags};

	bpf_map_update_elem(&conntrack, k, &v, BPF_ANY);
}

static __always_inline void ct_key_egress(struct df_ct_key *k, const struct pkt *p,
					  int with_ports)
{
	__builtin_memcpy(k->pod, p->src, 16);
	__builtin_memcpy(k->peer, p->dst, 16);
	k->pod_port = with_ports ? p->sport : 0;
	k->peer_port = with_ports ? p->dport : 0;
	k->proto = p->proto;
	__builtin_memset(k->_pad, 0, sizeof(k->_pad));
}

/* A tracked entry counts unless it was created in audit mode and the pod is
 * enforced now. */
static __always_inline int ct_usable(const struct df_ct_value *v, __u8 mode)
{
	return v && !((v->flags & DF_CT_AUDIT) && mode == DF_MODE_ENFORCE);
}

/* Is this ICMP error from the pod about a flow the pod has with p->dst?
 * The quoted packet was sent peer -> pod. */
static __always_inline int icmp_error_related(struct __sk_buff *skb, const struct pkt *p,
					      __u8 mode, __u64 now)
{
	struct df_ct_key k;
	__u32 inner = p->l4_off + 8;
	__u32 inner_l4;
	__u8 ports[4];
	__u8 peer[16];
	__u8 podaddr[16];
	struct df_ct_value *v;

	if (!p->l4_ok)
		return 0;
	__builtin_memset(&k, 0, sizeof(k));
	if (p->proto == IPPROTO_ICMP) {
		struct iphdr ip;

		if (p->icmp_type != 3 && p->icmp_type != 11 && p->icmp_type != 12)
			return 0;
		if (bpf_skb_load_bytes(skb, inner, &ip, sizeof(ip)) || ip.ihl < 5)
			return 0;
		map_v4(peer, ip.saddr);
		map_v4(podaddr, ip.daddr);
		k.proto = ip.protocol;
		inner_l4 = inner + ip.ihl * 4;
	} else {
		struct ipv6hdr ip6;

		if (p->icmp_type < 1 || p->icmp_type > 4)
			return 0;
		if (bpf_skb_load_bytes(skb, inner, &ip6, sizeof(ip6)))
			return 0;
		__builtin_memcpy(peer, &ip6.saddr, 16);
		__builtin_memcpy(podaddr, &ip6.daddr, 16);
		k.proto = ip6.nexthdr;
		inner_l4 = inner + sizeof(ip6);
	}
	if (!addr_eq(podaddr, p->src) || !addr_eq(peer, p->dst))
		return 0;
	__builtin_memcpy(k.pod, p->src, 16);
	__builtin_memcpy(k.peer, p->dst, 16);
	if (k.proto == IPPROTO_TCP || k.proto == IPPROTO_UDP || k.proto == IPPROTO_SCTP_ ||
	    k.proto == IPPROTO_UDPLITE_) {
		if (bpf_skb_load_bytes(skb, inner_l4, ports, 4))
			return 0;
		__builtin_memcpy(&k.peer_port, ports, 2);
		__builtin_memcpy(&k.pod_port, ports + 2, 2);
	} else if (is_icmp(k.proto)) {
		__u8 ih[8];

		if (bpf_skb_load_bytes(skb, inner_l4, ih, 8))
			return 0;
		__builtin_memcpy(&k.pod_port, ih + 4, 2);
		k.peer_port = k.pod_port;
	}
	v = ct_find(&k, now);
	return ct_usable(v, mode);
}

/* ---- rules ------------------------------------------------------------- */

static __always_inline int ports_match(const struct df_ports *ports, __u8 proto,
				       __u16 port, __u64 now)
{
	int i;

#pragma clang loop unroll(full)
	for (i = 0; i < DF_PORT_SLOTS; i++) {
		const struct df_port_range *r = &ports->r[i];

		if (r->expiry_ns > now && (r->proto == DF_PROTO_ANY || r->proto == proto) &&
		    r->start <= port && port <= r->end)
			return 1;
	}
	return 0;
}

static __always_inline int grant_allows(const struct pkt *p, __u16 port, __u64 now)
{
	struct df_grant_key k;
	struct df_ports *v;

	__builtin_memcpy(k.pod, p->src, 16);
	__builtin_memcpy(k.dst, p->dst, 16);
	v = bpf_map_lookup_elem(&grants, &k);
	return v && ports_match(v, p->proto, port, now);
}

static __always_inline int cidr_allows(const struct pkt *p, __u32 policy_id, __u16 port,
				       __u64 now)
{
	struct df_cidr_key k;
	struct df_ports *v;

	k.prefixlen = 32 + 128;
	k.id = p->is_v6 ? policy_id : (policy_id | DF_CIDR_ID_V4);
	__builtin_memcpy(k.addr, p->dst, 16);
	v = bpf_map_lookup_elem(&cidrs, &k);
	return v && ports_match(v, p->proto, port, now);
}

static __always_inline int is_dns_to_gateway(const struct pkt *p)
{
	struct df_pod_key k;
	struct df_gateway_value *g;

	if (!p->l4_ok || (p->proto != IPPROTO_UDP && p->proto != IPPROTO_TCP) ||
	    p->dport != bpf_htons(53))
		return 0;
	__builtin_memcpy(k.addr, p->dst, 16);
	g = bpf_map_lookup_elem(&gateways, &k);
	return g && (g->flags & DF_GW_DNS);
}

/* IPv6 neighbour discovery and link-scoped traffic never leave the link, so
 * they pass before anti-spoofing (a pod needs ND to reach its gateway). */
static __always_inline int is_v6_link_local(const struct pkt *p)
{
	__u64 s0, s1;

	if (!p->is_v6)
		return 0;
	if (p->proto == IPPROTO_ICMPV6_ && p->l4_ok && p->icmp_type >= 133 &&
	    p->icmp_type <= 137 && p->hop_limit == 255)
		return 1;
	__builtin_memcpy(&s0, p->src, 8);
	__builtin_memcpy(&s1, p->src + 8, 8);
	if (!((p->src[0] == 0xfe && (p->src[1] & 0xc0) == 0x80) || (s0 == 0 && s1 == 0)))
		return 0;
	return (p->dst[0] == 0xfe && (p->dst[1] & 0xc0) == 0x80) || p->dst[0] == 0xff;
}

/* ---- programs ---------------------------------------------------------- */

/* Verdict for a packet of a known, not-allow-mode pod. Returns a DF_R_*. Conntrack
 * uses ct_now (now_coarse); the rules read the exact clock into *now, which stays 0 when
 * a tracked flow decided. */
static __always_inline __u32 decide(struct __sk_buff *skb, const struct pkt *p,
				    const struct df_pod_value *pod, __u64 ct_now, __u64 *now)
{
	struct df_ct_key k;
	__u16 port;

	if (p->frag == FRAG_LATER) {
		ct_key_egress(&k, p, 0);
		if (ct_usable(ct_find(&k, ct_now), pod->mode))
			return DF_R_FRAGMENT;
		return DF_R_FRAG_UNTRACKED;
	}
	ct_key_egress(&k, p, 1);
	if (ct_usable(ct_find(&k, ct_now), pod->mode))
		return DF_R_CT_ESTABLISHED;
	if (is_icmp(p->proto) && icmp_error_related(skb, p, pod->mode, ct_now))
		return DF_R_CT_RELATED;
	if (is_dns_to_gateway(p))
		return DF_R_DNS_GATEWAY;
	*now = now_exact();
	/* policy ports apply to port-carrying protocols; others match port 0 */
	port = (p->l4_ok && !is_icmp(p->proto)) ? bpf_ntohs(p->dport) : 0;
	if (grant_allows(p, port, *now))
		return DF_R_GRANT;
	if (cidr_allows(p, pod->policy_id, port, *now))
		return DF_R_CIDR;
	return DF_R_DEFAULT_DENY;
}

SEC("classifier")
int pod_egress(struct __sk_buff *skb)
{
	struct pkt p;
	struct df_pod_value *pod;
	struct df_ct_key k;
	__u64 now = 0, ct_now;
	__u32 reason;
	__u32 len = skb->len;
	int pass;

	if (skb->vlan_present) {
		count(DF_R_NON_IP, len);
		return TC_ACT_SHOT;
	}
	if (skb->protocol == bpf_htons(ETH_P_ARP)) {
		count(DF_R_LINK_LOCAL, len);
		return TC_ACT_OK;
	}
	if (skb->protocol != bpf_htons(ETH_P_IP) && skb->protocol != bpf_htons(ETH_P_IPV6)) {
		count(DF_R_NON_IP, len);
		return TC_ACT_SHOT;
	}
	__builtin_memset(&p, 0, sizeof(p));
	if (parse(skb, &p)) {
		count(DF_R_MALFORMED, len);
		return TC_ACT_SHOT;
	}
	if (is_v6_link_local(&p)) {
		count(DF_R_LINK_LOCAL, len);
		return TC_ACT_OK;
	}

	/* p.src is laid out as a df_pod_key */
	pod = bpf_map_lookup_elem(&pods, p.src);
	if (!pod || pod->ifindex != skb->ifindex) {
		__u8 ifkey[16] = {0xff, 0xff, 0xff, 0xfe};

		__builtin_memcpy(ifkey + 4, &skb->ifindex, 4);
		count(DF_R_SPOOFED, len);
		emit(skb, &p, ifkey, p.src, p.dst, p.sport, p.dport, DF_VERDICT_DROP, DF_R_SPOOFED,
		     DF_DIR_EGRESS, 0, now_exact());
		return TC_ACT_SHOT;
	}
	if (pod->mode == DF_MODE_ALLOW) {
		count(DF_R_UNENFORCED, len);
		return TC_ACT_OK;
	}

	ct_now = now_coarse();
	reason = decide(skb, &p, pod, ct_now, &now);
	pass = reason < DF_R_DEFAULT_DENY;
	if (!pass && !now)
		now = now_exact();
	if (!pass && pod->mode == DF_MODE_AUDIT) {
		/* log the would-be drop as the reason, pass it as audit */
		count(DF_R_AUDIT, len);
		emit(skb, &p, p.src, p.src, p.dst, p.sport, p.dport, DF_VERDICT_PASS, (__u8)reason,
		     DF_DIR_EGRESS, pod->policy_id, now);
		if (p.frag != FRAG_LATER) {
			ct_key_egress(&k, &p, 1);
			ct_put(&k, DF_CT_OUTBOUND | DF_CT_AUDIT, ct_now);
		}
		return TC_ACT_OK;
	}
	count(reason, len);
	if (!pass) {
		emit(skb, &p, p.src, p.src, p.dst, p.sport, p.dport, DF_VERDICT_DROP, (__u8)reason,
		     DF_DIR_EGRESS, pod->policy_id, now);
		return TC_ACT_SHOT;
	}
	if (reason == DF_R_GRANT || reason == DF_R_CIDR) {
		ct_key_egress(&k, &p, 1);
		ct_put(&k, DF_CT_OUTBOUND, ct_now);
	}
	/* the first fragment of an allowed datagram admits the later ones */
	if (p.frag == FRAG_FIRST && reason != DF_R_DNS_GATEWAY) {
		ct_key_egress(&k, &p, 0);
		ct_put(&k, DF_CT_OUTBOUND | DF_CT_FRAG, ct_now);
	}
	return TC_ACT_OK;
}

SEC("classifier")
int pod_ingress(struct __sk_buff *skb)
{
	struct pkt p;
	struct df_pod_value *pod;
	struct df_ct_key k;
	__u64 ct_now;
	int create;

	count(DF_R_INGRESS, skb->len);
	if (skb->protocol != bpf_htons(ETH_P_IP) && skb->protocol != bpf_htons(ETH_P_IPV6))
		return TC_ACT_OK;
	__builtin_memset(&p, 0, sizeof(p));
	if (parse(skb, &p) || p.frag == FRAG_LATER)
		return TC_ACT_OK;
	/* p.dst is laid out as a df_pod_key */
	pod = bpf_map_lookup_elem(&pods, p.dst);
	if (!pod || pod->ifindex != skb->ifindex || pod->mode == DF_MODE_ALLOW)
		return TC_ACT_OK;

	ct_now = now_coarse();
	/* the pod's orientation: pod = destination here */
	__builtin_memcpy(k.pod, p.dst, 16);
	__builtin_memcpy(k.peer, p.src, 16);
	k.pod_port = p.dport;
	k.peer_port = p.sport;
	k.proto = p.proto;
	__builtin_memset(k._pad, 0, sizeof(k._pad));
	if (ct_find(&k, ct_now))
		return TC_ACT_OK;

	/* Only what opens a connection to the pod creates an entry: a TCP SYN,
	 * an ICMP echo request, any datagram of a connectionless protocol. */
	switch (p.proto) {
	case IPPROTO_TCP:
		create = p.l4_ok && (p.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;
		break;
	case IPPROTO_ICMP:
		create = p.l4_ok && p.icmp_type == 8;
		break;
	case IPPROTO_ICMPV6_:
		create = p.l4_ok && p.icmp_type == 128;
		break;
	default:
		create = 1;
	}
	if (create)
		ct_put(&k, DF_CT_INBOUND, ct_now);
	return TC_ACT_OK;
}
