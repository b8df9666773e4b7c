/* SPDX-License-Identifier: Apache-2.0 */
/*
 * dnsfence datapath: packet parsing shared by both programs. Every read goes through
 * bpf_skb_load_bytes (offsets relative to the Ethernet header, which tc programs see at
 * both hooks), so variable-length IPv4 options and IPv6 extension headers need no
 * packet-pointer bookkeeping for the verifier.
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

/* Reads ports (or ICMP type and echo identifier) at p->l4_off. */
static __always_inline int parse_l4(struct __sk_buff *skb, struct pkt *p)
{
	__u8 h[14];

	switch (p->proto) {
	case IPPROTO_TCP:
		if (bpf_skb_load_bytes(skb, p->l4_off, h, 14))
			return -1;
		__builtin_memcpy(&p->sport, h, 2);
		__builtin_memcpy(&p->dport, h + 2, 2);
		p->tcp_flags = h[13];
		break;
	case IPPROTO_UDP:
	case IPPROTO_SCTP_:
	case IPPROTO_UDPLITE_:
		if (bpf_skb_load_bytes(skb, p->l4_off, h, 4))
			return -1;
		__builtin_memcpy(&p->sport, h, 2);
		__builtin_memcpy(&p->dport, h + 2, 2);
		break;
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6_:
		if (bpf_skb_load_bytes(skb, p->l4_off, h, 8))
			return -1;
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
		return 0; /* no ports: tracked with ports 0 */
	}
	p->l4_ok = 1;
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
static __always_inline int parse(struct __sk_buff *skb, struct pkt *p)
{
	if (skb->protocol == bpf_htons(ETH_P_IP))
		return parse_v4(skb, p);
	return parse_v6(skb, p);
}

#endif /* DNSFENCE_PARSE_H */
