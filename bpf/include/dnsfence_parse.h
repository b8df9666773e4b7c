/* SPDX-License-Identifier: Apache-2.0 */
/*
 * dnsfence datapath: packet parsing shared by both programs. Offsets are relative to the
 * Ethernet header, which tc programs see at skb->data at both hooks.
 *
 * The common case (IPv4 without options, or IPv6 straight to TCP/UDP/UDP-Lite/SCTP/ICMPv6,
 * not a later fragment, with the network header and 14 bytes of L4 header in the linear
 * data) is read with direct packet access (parse_fast). Everything else (IPv4 options,
 * IPv6 extension headers, later fragments, headers in paged data, truncated packets) goes
 * through bpf_skb_load_bytes (parse_slow), so variable-length headers need no
 * packet-pointer bookkeeping for the verifier. Both produce the same struct pkt for a
 * packet the fast path accepts (it leaves everything else untouched to the slow path,
 * which also decides every "malformed"), and the L4 decoding is shared (decode_l4).
 */
#ifndef DNSFENCE_PARSE_H
#define DNSFENCE_PARSE_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#define IPPROTO_ICMPV6_ 58
#define IPPROTO_SCTP_ 132
#define IPPROTO_UDPLITE_ 136
#define NEXTHDR_HOP 0
#define NEXTHDR_ROUTING 43
#define NEXTHDR_FRAGMENT 44
#define NEXTHDR_AUTH 51
#define NEXTHDR_NONE 59
#define NEXTHDR_DEST 60
#define DF_MAX_EXT_HDRS 8

#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_ACK 0x10

#define FRAG_NONE 0
#define FRAG_FIRST 1
#define FRAG_LATER 2

/* ---- parsed packet ----------------------------------------------------- */

struct pkt {
	__u8 src[16];
	__u8 dst[16];
	__u16 sport; /* network order; ICMP echo: identifier in both */
	__u16 dport;
	__u8 proto;
	__u8 l4_ok; /* ports/flags/type are valid */
	__u8 frag;  /* FRAG_* */
	__u8 tcp_flags;
	__u8 icmp_type;
	__u8 is_v6;
	__u8 hop_limit;
	__u8 _pad;
	__u32 l4_off;
};

static __always_inline void map_v4(__u8 *dst, __be32 addr)
{
	__builtin_memset(dst, 0, 10);
	dst[10] = 0xff;
	dst[11] = 0xff;
	__builtin_memcpy(dst + 12, &addr, 4);
}

static __always_inline int addr_eq(const __u8 *a, const __u8 *b)
{
	__u64 a0, a1, b0, b1;

	__builtin_memcpy(&a0, a, 8);
	__builtin_memcpy(&a1, a + 8, 8);
	__builtin_memcpy(&b0, b, 8);
	__builtin_memcpy(&b1, b + 8, 8);
	return a0 == b0 && a1 == b1;
}

static __always_inline int is_icmp(__u8 proto)
{
	return proto == IPPROTO_ICMP || proto == IPPROTO_ICMPV6_;
}

/* Decodes ports (or ICMP type and echo identifier) from h, which holds at least
 * the bytes of the L4 header parse_l4 loads for p->proto (14 for TCP, 4 for UDP,
 * UDP-Lite and SCTP, 8 for ICMP/ICMPv6), on the stack or in the packet. */
static __always_inline void decode_l4(struct pkt *p, const __u8 *h)
{
	switch (p->proto) {
	case IPPROTO_TCP:
		__builtin_memcpy(&p->sport, h, 2);
		__builtin_memcpy(&p->dport, h + 2, 2);
		p->tcp_flags = h[13];
		break;
	case IPPROTO_UDP:
	case IPPROTO_SCTP_:
	case IPPROTO_UDPLITE_:
		__builtin_memcpy(&p->sport, h, 2);
		__builtin_memcpy(&p->dport, h + 2, 2);
		break;
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6_:
		p->icmp_type = h[0];
		/* echo request/reply: the identifier is both "ports", so the two
		 * directions of a ping normalise to the same conntrack key */
		if ((p->proto == IPPROTO_ICMP && (h[0] == 8 || h[0] == 0)) ||
		    (p->proto == IPPROTO_ICMPV6_ && (h[0] == 128 || h[0] == 129))) {
			__builtin_memcpy(&p->sport, h + 4, 2);
			p->dport = p->sport;
		}
		break;
	default:
		return; /* no ports: tracked with ports 0 */
	}
	p->l4_ok = 1;
}

/* Reads ports (or ICMP type and echo identifier) at p->l4_off. */
static __always_inline int parse_l4(struct __sk_buff *skb, struct pkt *p)
{
	__u8 h[14];

	switch (p->proto) {
	case IPPROTO_TCP:
		if (bpf_skb_load_bytes(skb, p->l4_off, h, 14))
			return -1;
		break;
	case IPPROTO_UDP:
	case IPPROTO_SCTP_:
	case IPPROTO_UDPLITE_:
		if (bpf_skb_load_bytes(skb, p->l4_off, h, 4))
			return -1;
		break;
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6_:
		if (bpf_skb_load_bytes(skb, p->l4_off, h, 8))
			return -1;
		break;
	default:
		return 0; /* no ports: tracked with ports 0 */
	}
	decode_l4(p, h);
	return 0;
}

static __always_inline int parse_v4(struct __sk_buff *skb, struct pkt *p)
{
	struct iphdr ip;
	__u16 frag;

	if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)))
		return -1;
	if (ip.version != 4 || ip.ihl < 5)
		return -1;
	map_v4(p->src, ip.saddr);
	map_v4(p->dst, ip.daddr);
	p->proto = ip.protocol;
	p->hop_limit = ip.ttl;
	frag = bpf_ntohs(ip.frag_off);
	if (frag & 0x1fff) {
		p->frag = FRAG_LATER;
		return 0;
	}
	if (frag & 0x2000)
		p->frag = FRAG_FIRST;
	p->l4_off = ETH_HLEN + ip.ihl * 4;
	return parse_l4(skb, p);
}

static __always_inline int parse_v6(struct __sk_buff *skb, struct pkt *p)
{
	struct ipv6hdr ip6;
	__u32 off = ETH_HLEN + sizeof(struct ipv6hdr);
	__u8 nh;
	__u8 h[8];
	int i;

	if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip6, sizeof(ip6)))
		return -1;
	if (ip6.version != 6)
		return -1;
	__builtin_memcpy(p->src, &ip6.saddr, 16);
	__builtin_memcpy(p->dst, &ip6.daddr, 16);
	p->is_v6 = 1;
	p->hop_limit = ip6.hop_limit;
	nh = ip6.nexthdr;

	/* Bounded walk over extension headers (verifier needs the bound). */
	for (i = 0; i < DF_MAX_EXT_HDRS; i++) {
		switch (nh) {
		case NEXTHDR_HOP:
		case NEXTHDR_ROUTING:
		case NEXTHDR_DEST:
			if (bpf_skb_load_bytes(skb, off, h, 2))
				return -1;
			nh = h[0];
			off += ((__u32)h[1] + 1) * 8;
			break;
		case NEXTHDR_AUTH:
			if (bpf_skb_load_bytes(skb, off, h, 2))
				return -1;
			nh = h[0];
			off += ((__u32)h[1] + 2) * 4;
			break;
		case NEXTHDR_FRAGMENT: {
			__u16 fo;

			if (bpf_skb_load_bytes(skb, off, h, 8))
				return -1;
			nh = h[0];
			off += 8;
			fo = ((__u16)h[2] << 8) | h[3];
			if (fo & 0xfff8) {
				p->proto = nh;
				p->frag = FRAG_LATER;
				return 0;
			}
			if (fo & 1)
				p->frag = FRAG_FIRST;
			break;
		}
		default:
			goto done;
		}
	}
	/* more extension headers than we walk: refuse to guess */
	if (nh == NEXTHDR_HOP || nh == NEXTHDR_ROUTING || nh == NEXTHDR_DEST ||
	    nh == NEXTHDR_AUTH || nh == NEXTHDR_FRAGMENT)
		return -1;
done:
	p->proto = nh;
	if (nh == NEXTHDR_NONE)
		return 0;
	p->l4_off = off;
	return parse_l4(skb, p);
}

/* 0 = parsed; -1 = malformed/truncated. */
static __always_inline int parse_slow(struct __sk_buff *skb, struct pkt *p)
{
	if (skb->protocol == bpf_htons(ETH_P_IP))
		return parse_v4(skb, p);
	return parse_v6(skb, p);
}

/* Direct packet access for the common case. 1 = parsed (exactly as parse_slow would);
 * 0 = not the common case, p untouched: use parse_slow. Reads DF_FAST_L4 bytes of L4
 * header whatever the protocol needs (at most 14), so a short datagram whose
 * frame ends before that takes the slow path, which gives the same result. */
#define DF_FAST_L4 14
static __always_inline int parse_fast(struct __sk_buff *skb, struct pkt *p)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;

	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = data + ETH_HLEN;
		__u8 *l4 = (__u8 *)(ip + 1);

		if ((void *)(l4 + DF_FAST_L4) > end)
			return 0;
		/* version 4, ihl 5; later fragments (no L4 header) take the slow path */
		if (*(__u8 *)ip != 0x45 || (ip->frag_off & bpf_htons(0x1fff)))
			return 0;
		map_v4(p->src, ip->saddr);
		map_v4(p->dst, ip->daddr);
		p->proto = ip->protocol;
		p->hop_limit = ip->ttl;
		if (ip->frag_off & bpf_htons(0x2000))
			p->frag = FRAG_FIRST;
		p->l4_off = ETH_HLEN + sizeof(struct iphdr);
		decode_l4(p, l4);
		return 1;
	}
	{
		struct ipv6hdr *ip6 = data + ETH_HLEN;
		__u8 *l4 = (__u8 *)(ip6 + 1);
		__u8 nh;

		if ((void *)(l4 + DF_FAST_L4) > end)
			return 0;
		nh = ip6->nexthdr;
		/* extension headers and "no next header" take the slow path */
		if (ip6->version != 6 ||
		    (nh != IPPROTO_TCP && nh != IPPROTO_UDP && nh != IPPROTO_ICMPV6_ &&
		     nh != IPPROTO_SCTP_ && nh != IPPROTO_UDPLITE_))
			return 0;
		__builtin_memcpy(p->src, &ip6->saddr, 16);
		__builtin_memcpy(p->dst, &ip6->daddr, 16);
		p->is_v6 = 1;
		p->hop_limit = ip6->hop_limit;
		p->proto = nh;
		p->l4_off = ETH_HLEN + sizeof(struct ipv6hdr);
		decode_l4(p, l4);
		return 1;
	}
}

/* 0 = parsed; -1 = malformed/truncated. skb->protocol is IPv4 or IPv6. */
static __always_inline int parse(struct __sk_buff *skb, struct pkt *p)
{
	if (parse_fast(skb, p))
		return 0;
	return parse_slow(skb, p);
}

#endif /* DNSFENCE_PARSE_H */
