// SPDX-License-Identifier: MIT OR Apache-2.0
//
// ebpf-l7-filter: HTTP/1.x method + path rules enforced at tc ingress.
//
// Semantics: docs/ebpf.md (the spec both enforcement points implement); the userspace twin in
// src/ is the reference the differential test compares this program with.
//
// Build (what `cargo xtask ebpf-build` runs, from the crate directory):
//   clang -target bpf -O2 -g -Wall -Werror -fdebug-prefix-map=$PWD=. -I/usr/include/$(uname -m)-linux-gnu \
//         -c bpf/l7_filter.c -o bpf/l7_filter.o
//
// The layouts of every map key/value and of the event are mirrored byte for byte in
// src/kernel/layout.rs; change both together.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#define MAX_PATH 128         /* bytes of path compared; longer paths are `overlong` */
#define MAX_METHOD 16        /* bytes of a method token */
#define EVENT_PATH 64        /* bytes of path carried by an event */
#define MAX_RULES 1024       /* rule ids are 1..=MAX_RULES; 0 is the default verdict */
#define FLOOR_ANY 10
#define PORT_BITMAP_BYTES 8192

/* Bytes of payload copied for parsing: method, SP, path, terminator, 3 bytes of lookahead. */
#define SCAN_BYTES 160

/* Method ids (spec: "Request start"). 0 = any other token. */
#define METHOD_OTHER 0

/* Actions stored in rule values and the config. */
#define ACTION_ALLOW 0
#define ACTION_DENY 1
#define ACTION_AUDIT 2

/* Event reasons. */
#define REASON_RULE 0
#define REASON_DEFAULT 1
#define REASON_SPLIT 2
#define REASON_OVERLONG 3
#define REASON_NON_CANONICAL 4
#define REASON_FLOW_DENIED 5

/* Event verdicts. */
#define VERDICT_ALLOW 0
#define VERDICT_DENY 1
#define VERDICT_AUDIT 2

/* Indexes of the per-CPU `stats` array. */
#define STAT_SEGMENTS 0    /* segments with payload to a configured port */
#define STAT_REQUESTS 1    /* of which request starts */
#define STAT_ALLOWED 2
#define STAT_DENIED 3
#define STAT_AUDITED 4
#define STAT_REFUSED 5     /* strict-mode refusals (split, overlong, non-canonical) */
#define STAT_FLOW_DROPS 6  /* segments dropped because their flow was denied before */
#define STAT_EVENTS_LOST 7 /* events not written: ring buffer full */
#define STAT_COUNT 8

/* Config flags. */
#define CFG_STRICT 1       /* refusals are denied (else: floors[method]) */
#define CFG_NO_WAKEUP 2    /* submit events with BPF_RB_NO_WAKEUP (consumer polls on a timer) */

struct l7_config {
	__u8 default_action;  /* ACTION_ALLOW or ACTION_DENY */
	__u8 flags;           /* CFG_* */
	__u8 active_gen;      /* generation byte of the rule keys in force */
	__u8 _reserved;
	__u8 floors[12];      /* non-strict verdict per method id, [FLOOR_ANY] for any method */
	__u8 ports[PORT_BITMAP_BYTES]; /* bit p set: TCP destination port p is filtered */
};

/* LPM key: generation, method (0 = rules without `methods`), path bytes, then a 0 byte
 * marking the end of the path. No tail padding (aya's lpm_trie::Key is packed). */
struct rule_key {
	__u32 prefixlen;
	__u8 gen;
	__u8 method;
	__u8 path[MAX_PATH + 2];
};

struct rule_value {
	__u32 rule_id;
	__u16 rank;  /* 2 * rule path length + (exact ? 1 : 0): the spec's precedence */
	__u8 action;
	__u8 _pad;
};

struct flow_key {
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport;  /* host byte order */
	__u16 dport;
	__u8 family;  /* 4 or 6 */
	__u8 _pad[3];
};

struct l7_event {
	__u64 time_ns;      /* bpf_ktime_get_ns (CLOCK_MONOTONIC) */
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport;        /* host byte order */
	__u16 dport;
	__u8 family;        /* 4 or 6 */
	__u8 verdict;       /* VERDICT_* */
	__u8 reason;        /* REASON_* */
	__u8 method;        /* method id */
	__u32 rule_id;      /* 1-based rule index, 0 = default */
	__u16 path_len;     /* length of the path seen (may exceed EVENT_PATH) */
	__u8 method_len;    /* bytes in method_text */
	__u8 path_copied;   /* bytes in path */
	__u8 method_text[MAX_METHOD];
	__u8 path[EVENT_PATH];
};

struct scratch {
	/* Results of the scanning loops, stored and read back so the verifier sees one unknown
	 * value after each loop instead of walking the rest of the program once per exit. */
	__u32 method_len;
	__u32 method;
	__u32 path_len;
	__u32 reason;
	__u8 buf[SCAN_BYTES];
	struct rule_key key;
	struct l7_event ev;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct l7_config);
} config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct rule_key);
	__type(value, struct rule_value);
} rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MAX_RULES + 1);
	__type(key, __u32);
	__type(value, __u64);
} rule_hits SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct flow_key);
	__type(value, __u32);
} denied_flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scratch);
} scratch SEC(".maps");

/* barrier_var (bpf_helpers.h) keeps clang from folding a bounds-checked value into a form
 * the verifier cannot follow. */

static __always_inline void count(__u32 index)
{
	__u64 *value = bpf_map_lookup_elem(&stats, &index);
	if (value)
		*value += 1;
}

static __always_inline void count_rule(__u32 rule_id)
{
	__u64 *value = bpf_map_lookup_elem(&rule_hits, &rule_id);
	if (value)
		*value += 1;
}

static __always_inline int is_upper(__u8 c)
{
	return c >= 'A' && c <= 'Z';
}

/* The path's terminators: SP, CR, LF, '?'. */
static __always_inline int path_end(__u8 c)
{
	return c == ' ' || c == '\r' || c == '\n' || c == '?';
}

static __always_inline int upper_hex(__u8 c)
{
	return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'F');
}

static __always_inline __u8 hex_digit(__u8 c)
{
	return c <= '9' ? c - '0' : c - 'A' + 10;
}

/* A decoded %XX byte that has an unencoded canonical form (unreserved) or is '/' or '\'. */
static __always_inline int needs_no_encoding(__u8 v)
{
	return (v >= '0' && v <= '9') || (v >= 'A' && v <= 'Z') || (v >= 'a' && v <= 'z') ||
	       v == '-' || v == '.' || v == '_' || v == '~' || v == '/' || v == '\\';
}

/* Checks 1-4 of the spec for the path byte at p[0] (index i in the path), looking ahead at
 * up to three bytes. The byte after the path is its terminator (SP, CR, LF, '?'), so a
 * lookahead that reaches it sees "end of path"; when the segment ends first, the outcome is
 * `split` and this flag is not used. */
static __always_inline __u32 bad_path_byte(const __u8 *p, __u32 i)
{
	__u8 c = p[0];
	if (i == 0 && c != '/')
		return 1;
	if (c < 0x21 || c > 0x7e || c == '#' || c == '\\')
		return 1;
	if (c == '%') {
		if (!upper_hex(p[1]) || !upper_hex(p[2]))
			return 1;
		return needs_no_encoding((hex_digit(p[1]) << 4) | hex_digit(p[2]));
	}
	if (c == '/') {
		__u8 c1 = p[1];
		if (c1 == '/')
			return 1;
		if (c1 == '.') {
			__u8 c2 = p[2];
			if (c2 == '/' || path_end(c2))
				return 1;
			if (c2 == '.' && (p[3] == '/' || path_end(p[3])))
				return 1;
		}
	}
	return 0;
}

struct scan_ctx {
	struct scratch *s;
	__u32 path_off;
	__u32 n;
	__u32 len;
	__u32 bad;
	__u32 reason;
};

/* One byte of the path scan: 0 = next byte, 1 = stop. */
static __always_inline long scan_path_byte(struct scan_ctx *scan, __u64 i)
{
	struct scratch *s = scan->s;
	__u64 j = (__u64)scan->path_off + i;
	barrier_var(j);
	if (j > SCAN_BYTES - 4 || i > MAX_PATH || j >= scan->n) {
		scan->len = i;
		scan->reason = REASON_SPLIT;
		return 1;
	}
	__u8 c = s->buf[j];
	if (path_end(c)) {
		scan->len = i;
		return 1;
	}
	if (i == MAX_PATH) {
		scan->len = i;
		scan->reason = REASON_OVERLONG;
		return 1;
	}
	scan->bad |= bad_path_byte(s->buf + j, i);
	s->key.path[i] = c;
	scan->len = i + 1;
	return 0;
}

/* The bpf_loop callback: SCAN_UNROLL bytes per call, fewer calls per path. */
#define SCAN_UNROLL 8
static long scan_path_bytes(__u64 index, void *ctx)
{
	struct scan_ctx *scan = ctx;
#pragma unroll
	for (int k = 0; k < SCAN_UNROLL; k++) {
		if (scan_path_byte(scan, index * SCAN_UNROLL + k))
			return 1;
	}
	return 0;
}

static __always_inline void deny_flow(const struct flow_key *flow, __u32 rule_id)
{
	bpf_map_update_elem(&denied_flows, flow, &rule_id, BPF_ANY);
}

static __always_inline __u8 method_id(const __u8 *m, __u32 len)
{
	switch (len) {
	case 3:
		if (m[0] == 'G' && m[1] == 'E' && m[2] == 'T')
			return 1;
		if (m[0] == 'P' && m[1] == 'U' && m[2] == 'T')
			return 4;
		break;
	case 4:
		if (m[0] == 'H' && m[1] == 'E' && m[2] == 'A' && m[3] == 'D')
			return 2;
		if (m[0] == 'P' && m[1] == 'O' && m[2] == 'S' && m[3] == 'T')
			return 3;
		break;
	case 5:
		if (m[0] == 'T' && m[1] == 'R' && m[2] == 'A' && m[3] == 'C' && m[4] == 'E')
			return 8;
		if (m[0] == 'P' && m[1] == 'A' && m[2] == 'T' && m[3] == 'C' && m[4] == 'H')
			return 9;
		break;
	case 6:
		if (m[0] == 'D' && m[1] == 'E' && m[2] == 'L' && m[3] == 'E' && m[4] == 'T' &&
		    m[5] == 'E')
			return 5;
		break;
	case 7:
		if (m[0] == 'C' && m[1] == 'O' && m[2] == 'N' && m[3] == 'N' && m[4] == 'E' &&
		    m[5] == 'C' && m[6] == 'T')
			return 6;
		if (m[0] == 'O' && m[1] == 'P' && m[2] == 'T' && m[3] == 'I' && m[4] == 'O' &&
		    m[5] == 'N' && m[6] == 'S')
			return 7;
		break;
	}
	return METHOD_OTHER;
}

/* Writes an event; a full ring is counted, never waited for. */
static __always_inline void emit(struct scratch *s, const struct flow_key *flow,
				 const struct l7_config *cfg, __u8 verdict, __u8 reason,
				 __u8 method, __u32 rule_id, __u32 method_len, __u32 path_off,
				 __u32 path_len)
{
	struct l7_event *ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);
	if (!ev) {
		count(STAT_EVENTS_LOST);
		return;
	}
	ev->time_ns = bpf_ktime_get_ns();
	__builtin_memcpy(ev->saddr, flow->saddr, 16);
	__builtin_memcpy(ev->daddr, flow->daddr, 16);
	ev->sport = flow->sport;
	ev->dport = flow->dport;
	ev->family = flow->family;
	ev->verdict = verdict;
	ev->reason = reason;
	ev->method = method;
	ev->rule_id = rule_id;
	ev->path_len = path_len;
	if (method_len > MAX_METHOD)
		method_len = MAX_METHOD;
	ev->method_len = method_len;
	__builtin_memcpy(ev->method_text, s->buf, MAX_METHOD);
	__u32 copied = path_len < EVENT_PATH ? path_len : EVENT_PATH;
	ev->path_copied = copied;
	barrier_var(path_off);
	if (path_off > SCAN_BYTES - EVENT_PATH)
		path_off = SCAN_BYTES - EVENT_PATH;
	__builtin_memcpy(ev->path, s->buf + path_off, EVENT_PATH);
	__u64 flags = (cfg && (cfg->flags & CFG_NO_WAKEUP)) ? BPF_RB_NO_WAKEUP : 0;
	bpf_ringbuf_submit(ev, flags);
}

SEC("classifier")
int l7_filter(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct flow_key flow = {};
	struct tcphdr *tcp;
	__u32 payload_off, payload_len;

	if ((void *)(eth + 1) > data_end)
		return TC_ACT_UNSPEC;

	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > data_end)
			return TC_ACT_UNSPEC;
		if (ip->protocol != IPPROTO_TCP)
			return TC_ACT_UNSPEC;
		/* Later fragments carry no TCP header. */
		if (ip->frag_off & bpf_htons(0x1fff))
			return TC_ACT_UNSPEC;
		__u32 ihl = ip->ihl * 4;
		if (ihl < sizeof(*ip))
			return TC_ACT_UNSPEC;
		tcp = (void *)ip + ihl;
		if ((void *)(tcp + 1) > data_end)
			return TC_ACT_UNSPEC;
		__u32 total = bpf_ntohs(ip->tot_len);
		__u32 doff = tcp->doff * 4;
		if (total < ihl + doff)
			return TC_ACT_UNSPEC;
		payload_len = total - ihl - doff;
		payload_off = sizeof(*eth) + ihl + doff;
		flow.family = 4;
		__builtin_memcpy(flow.saddr, &ip->saddr, 4);
		__builtin_memcpy(flow.daddr, &ip->daddr, 4);
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > data_end)
			return TC_ACT_UNSPEC;
		/* Extension-header chains are not parsed (documented; the twin is the boundary). */
		if (ip6->nexthdr != IPPROTO_TCP)
			return TC_ACT_UNSPEC;
		tcp = (void *)(ip6 + 1);
		if ((void *)(tcp + 1) > data_end)
			return TC_ACT_UNSPEC;
		__u32 total = bpf_ntohs(ip6->payload_len);
		__u32 doff = tcp->doff * 4;
		if (total < doff)
			return TC_ACT_UNSPEC;
		payload_len = total - doff;
		payload_off = sizeof(*eth) + sizeof(*ip6) + doff;
		flow.family = 6;
		__builtin_memcpy(flow.saddr, &ip6->saddr, 16);
		__builtin_memcpy(flow.daddr, &ip6->daddr, 16);
	} else {
		return TC_ACT_UNSPEC;
	}

	__u16 dport = bpf_ntohs(tcp->dest);
	__u32 zero = 0;
	struct l7_config *cfg = bpf_map_lookup_elem(&config, &zero);
	if (!cfg)
		return TC_ACT_UNSPEC;
	__u32 byte = dport >> 3;
	if (byte >= PORT_BITMAP_BYTES)
		return TC_ACT_UNSPEC;
	if (!(cfg->ports[byte] & (1 << (dport & 7))))
		return TC_ACT_UNSPEC;

	flow.sport = bpf_ntohs(tcp->source);
	flow.dport = dport;

	if (payload_len == 0) {
		/* A new connection may reuse the 4-tuple of a denied one. */
		if (tcp->syn)
			bpf_map_delete_elem(&denied_flows, &flow);
		return TC_ACT_UNSPEC;
	}
	count(STAT_SEGMENTS);

	struct scratch *s = bpf_map_lookup_elem(&scratch, &zero);
	if (!s)
		return TC_ACT_UNSPEC;

	if (bpf_map_lookup_elem(&denied_flows, &flow)) {
		count(STAT_FLOW_DROPS);
		emit(s, &flow, cfg, VERDICT_DENY, REASON_FLOW_DENIED, 0, 0, 0, 0, 0);
		return TC_ACT_SHOT;
	}

	__u32 n = payload_len;
	if (n > SCAN_BYTES)
		n = SCAN_BYTES;
	barrier_var(n);
	if (n < 1 || n > SCAN_BYTES)
		return TC_ACT_UNSPEC;
	if (bpf_skb_load_bytes(skb, payload_off, s->buf, n) < 0)
		return TC_ACT_UNSPEC;

	/* Request start: 1..=16 bytes of A-Z, then SP (spec "Request start"). */
	if (!is_upper(s->buf[0]))
		return TC_ACT_UNSPEC;
	__u32 letters = 1;
	for (; letters <= MAX_METHOD; letters++) {
		if (letters >= n || !is_upper(s->buf[letters]))
			break;
	}
	s->method_len = letters;
	asm volatile("" ::: "memory");

	__u32 method_len = s->method_len, floor = METHOD_OTHER;
	__u32 path_off = 0, path_len = 0;
	__u8 reason;
	if (method_len > MAX_METHOD) {
		/* 17 or more capital letters: an overlong method. */
		count(STAT_REQUESTS);
		method_len = MAX_METHOD;
		path_off = MAX_METHOD;
		s->method = METHOD_OTHER;
		reason = REASON_OVERLONG;
		goto refused;
	}
	if (method_len >= n) {
		/* Only letters up to the end of the segment: the method is split; it may become
		 * any method, so the floor of all rules applies. */
		count(STAT_REQUESTS);
		path_off = n;
		s->method = METHOD_OTHER;
		floor = FLOOR_ANY;
		reason = REASON_SPLIT;
		goto refused;
	}
	if (s->buf[method_len] != ' ')
		return TC_ACT_UNSPEC;
	count(STAT_REQUESTS);
	s->method = method_id(s->buf, method_len);
	asm volatile("" ::: "memory");
	method_len = s->method_len;
	if (method_len < 1 || method_len > MAX_METHOD)
		return TC_ACT_UNSPEC;
	path_off = method_len + 1;

	/* Scan the target up to SP/CR/LF/'?' (spec "Target and path"): split and overlong are
	 * decided by the scan; the canonical-path checks only set a flag on the way. bpf_loop
	 * keeps the verifier to one pass over the loop body. */
	struct rule_key *key = &s->key;
	struct scan_ctx scan = { .s = s, .path_off = path_off, .n = n, .reason = REASON_RULE };
	bpf_loop((MAX_PATH + SCAN_UNROLL) / SCAN_UNROLL, scan_path_bytes, &scan, 0);
	path_len = scan.len;
	reason = scan.reason;
	if (reason == REASON_RULE && (path_len == 0 || scan.bad))
		reason = REASON_NON_CANONICAL;
	if (path_len > MAX_PATH || method_len > MAX_METHOD)
		return TC_ACT_UNSPEC;
	floor = s->method;
	if (reason != REASON_RULE)
		goto refused;

	/* Longest match: one lookup for method-specific rules, one for any-method rules. */
	__u8 method = s->method;
	__u32 rule_id;
	__u8 action;
	key->path[path_len] = 0;
	key->prefixlen = (2 + path_len + 1) * 8;
	key->gen = cfg->active_gen;
	struct rule_value *specific = 0, *any;
	if (method != METHOD_OTHER) {
		key->method = method;
		specific = bpf_map_lookup_elem(&rules, key);
	}
	key->method = METHOD_OTHER;
	any = bpf_map_lookup_elem(&rules, key);
	if (specific && (!any || specific->rank >= any->rank))
		any = specific;
	if (any) {
		rule_id = any->rule_id;
		action = any->action;
		reason = REASON_RULE;
	} else {
		rule_id = 0;
		action = cfg->default_action;
		reason = REASON_DEFAULT;
	}
	count_rule(rule_id);

	if (action == ACTION_ALLOW) {
		count(STAT_ALLOWED);
		return TC_ACT_UNSPEC;
	}
	if (action == ACTION_AUDIT) {
		count(STAT_AUDITED);
		emit(s, &flow, cfg, VERDICT_AUDIT, reason, method, rule_id, method_len, path_off,
		     path_len);
		return TC_ACT_UNSPEC;
	}
	count(STAT_DENIED);
	deny_flow(&flow, rule_id);
	emit(s, &flow, cfg, VERDICT_DENY, reason, method, rule_id, method_len, path_off, path_len);
	return TC_ACT_SHOT;

refused:
	/* split / overlong / non_canonical: deny when strict, else the floor verdict; an event
	 * either way. */
	count(STAT_REFUSED);
	action = ACTION_DENY;
	if (!(cfg->flags & CFG_STRICT) && floor <= FLOOR_ANY)
		action = cfg->floors[floor];
	method = s->method;
	if (action == ACTION_ALLOW || action == ACTION_AUDIT) {
		count(action == ACTION_ALLOW ? STAT_ALLOWED : STAT_AUDITED);
		emit(s, &flow, cfg, action == ACTION_ALLOW ? VERDICT_ALLOW : VERDICT_AUDIT, reason,
		     method, 0, method_len, path_off, path_len);
		return TC_ACT_UNSPEC;
	}
	count(STAT_DENIED);
	deny_flow(&flow, 0);
	emit(s, &flow, cfg, VERDICT_DENY, reason, method, 0, method_len, path_off, path_len);
	return TC_ACT_SHOT;
}

char _license[] SEC("license") = "Dual MIT/GPL";
