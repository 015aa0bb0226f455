// XDP classifier on each interface of an attached container: parses
// Ethernet (up to two VLAN tags), IPv4, IPv6 (with extension headers), TCP
// and UDP; counts per-flow and per-container packets and bytes; and applies
// the steering map that the user-space stack fills (pass, AF_XDP, drop); and
// answers connection attempts the isolation policy denies with a TCP RST.
// Anything it cannot parse goes to the kernel, which decides about it.
// vmlinux.h first: the libbpf headers and ours use its types.
// clang-format off
#include "vmlinux.h"
// clang-format on
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "netaccel_bpf.h"

#define ETH_ALEN 6
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define ETH_P_8021Q 0x8100
#define ETH_P_8021AD 0x88A8
// IPv6 extension headers (vmlinux.h has only the IPPROTO_* of IPv4's enum).
#define IPPROTO_HOPOPTS 0
#define IPPROTO_ROUTING 43
#define IPPROTO_FRAGMENT 44
#define IPPROTO_DSTOPTS 60
#define IP_OFFSET 0x1FFF
#define IPV6_FRAG_OFFSET 0xFFF8
#define MAX_VLAN_TAGS 2
#define MAX_IPV6_EXTENSION_HEADERS 4

char LICENSE[] SEC("license") = "GPL";

struct {
  __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
  __uint(max_entries, 1);
  __type(key, __u32);
  __type(value, struct netaccel_container_counters);
} container_stats SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_LRU_HASH);
  __uint(max_entries, 16384);
  __type(key, struct netaccel_flow_key);
  __type(value, struct netaccel_flow_counters);
} flow_stats SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, 1024);
  __type(key, struct netaccel_steer_key);
  __type(value, struct netaccel_steer_action);
} steering SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_XSKMAP);
  __uint(max_entries, 64);
  __type(key, __u32);
  __type(value, __u32);
} xsk_sockets SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, 1024);
  __type(key, struct netaccel_policy_key);
  __type(value, __u32);
} policy_deny SEC(".maps");

// Not used by the program: the container's identity, pinned beside its
// counters so that the CLI and the monitor read both from one place.
struct {
  __uint(type, BPF_MAP_TYPE_ARRAY);
  __uint(max_entries, 1);
  __type(key, __u32);
  __type(value, struct netaccel_container_record);
} container_record SEC(".maps");

enum parse_result { PARSED, MALFORMED, NOT_IP };

// Where the headers start, for the replies the program writes itself.
struct packet_layout {
  void* l3;
  void* l4;  // NULL after IPv6 extension headers or for a later fragment
};

// IPv4 addresses as ::ffff:a.b.c.d.
static __always_inline void map_ipv4(__u8 address[NETACCEL_ADDRESS_BYTES], __be32 ipv4) {
  __builtin_memset(address, 0, 10);
  address[10] = 0xff;
  address[11] = 0xff;
  __builtin_memcpy(address + 12, &ipv4, sizeof ipv4);
}

// Reads the ports at `l4`; MALFORMED when the header is cut short.
static __always_inline enum parse_result parse_ports(void* l4, void* data_end,
                                                     struct netaccel_flow_key* key) {
  if (key->protocol == IPPROTO_TCP) {
    struct tcphdr* tcp = l4;
    if ((void*)(tcp + 1) > data_end || tcp->doff < 5) return MALFORMED;
    key->source_port = bpf_ntohs(tcp->source);
    key->destination_port = bpf_ntohs(tcp->dest);
  } else if (key->protocol == IPPROTO_UDP) {
    struct udphdr* udp = l4;
    if ((void*)(udp + 1) > data_end) return MALFORMED;
    key->source_port = bpf_ntohs(udp->source);
    key->destination_port = bpf_ntohs(udp->dest);
  }
  return PARSED;
}

static __always_inline enum parse_result parse_ipv4(void* l3, void* data_end,
                                                    struct netaccel_flow_key* key,
                                                    struct packet_layout* layout) {
  struct iphdr* ip = l3;
  if ((void*)(ip + 1) > data_end) return MALFORMED;
  const __u32 header_bytes = ip->ihl * 4;
  if (ip->version != 4 || header_bytes < sizeof(*ip) || bpf_ntohs(ip->tot_len) < header_bytes)
    return MALFORMED;
  key->ip_version = 4;
  key->protocol = ip->protocol;
  map_ipv4(key->source, ip->saddr);
  map_ipv4(key->destination, ip->daddr);
  // Only the first fragment carries the ports.
  if (bpf_ntohs(ip->frag_off) & IP_OFFSET) return PARSED;
  layout->l4 = l3 + header_bytes;
  return parse_ports(l3 + header_bytes, data_end, key);
}

static __always_inline enum parse_result parse_ipv6(void* l3, void* data_end,
                                                    struct netaccel_flow_key* key,
                                                    struct packet_layout* layout) {
  struct ipv6hdr* ip = l3;
  if ((void*)(ip + 1) > data_end) return MALFORMED;
  if (ip->version != 6) return MALFORMED;
  key->ip_version = 6;
  __builtin_memcpy(key->source, &ip->saddr, NETACCEL_ADDRESS_BYTES);
  __builtin_memcpy(key->destination, &ip->daddr, NETACCEL_ADDRESS_BYTES);
  __u8 next_header = ip->nexthdr;
  void* cursor = ip + 1;
#pragma unroll
  for (int i = 0; i < MAX_IPV6_EXTENSION_HEADERS; ++i) {
    if (next_header == IPPROTO_FRAGMENT) {
      struct frag_hdr* fragment = cursor;
      if ((void*)(fragment + 1) > data_end) return MALFORMED;
      key->protocol = fragment->nexthdr;
      if (bpf_ntohs(fragment->frag_off) & IPV6_FRAG_OFFSET) return PARSED;
      next_header = fragment->nexthdr;
      cursor = fragment + 1;
    } else if (next_header == IPPROTO_HOPOPTS || next_header == IPPROTO_ROUTING ||
               next_header == IPPROTO_DSTOPTS || next_header == IPPROTO_AH) {
      struct ipv6_opt_hdr* option = cursor;
      if ((void*)(option + 1) > data_end) return MALFORMED;
      // AH counts its length in 4-byte units less 2, the others in 8-byte units less 1.
      const __u32 length =
          next_header == IPPROTO_AH ? (option->hdrlen + 2) * 4 : (option->hdrlen + 1) * 8;
      next_header = option->nexthdr;
      cursor += length;
    } else {
      break;
    }
  }
  key->protocol = next_header;
  if (cursor == (void*)(ip + 1)) layout->l4 = cursor;
  return parse_ports(cursor, data_end, key);
}

static __always_inline enum parse_result parse_packet(void* data, void* data_end,
                                                      struct netaccel_flow_key* key,
                                                      struct packet_layout* layout) {
  struct ethhdr* ethernet = data;
  if ((void*)(ethernet + 1) > data_end) return MALFORMED;
  __u16 ether_type = bpf_ntohs(ethernet->h_proto);
  void* cursor = ethernet + 1;
#pragma unroll
  for (int i = 0; i < MAX_VLAN_TAGS; ++i) {
    if (ether_type != ETH_P_8021Q && ether_type != ETH_P_8021AD) break;
    struct vlan_hdr* vlan = cursor;
    if ((void*)(vlan + 1) > data_end) return MALFORMED;
    key->vlan_id = bpf_ntohs(vlan->h_vlan_TCI) & 0x0FFF;
    ether_type = bpf_ntohs(vlan->h_vlan_encapsulated_proto);
    cursor = vlan + 1;
  }
  layout->l3 = cursor;
  if (ether_type == ETH_P_IP) return parse_ipv4(cursor, data_end, key, layout);
  if (ether_type == ETH_P_IPV6) return parse_ipv6(cursor, data_end, key, layout);
  return NOT_IP;
}

static __always_inline void count_flow(const struct netaccel_flow_key* key, __u64 bytes) {
  struct netaccel_flow_counters* flow = bpf_map_lookup_elem(&flow_stats, key);
  if (!flow) {
    const struct netaccel_flow_counters first = {.packets = 1, .bytes = bytes};
    // Another CPU may have inserted it meanwhile: then add to its entry.
    if (bpf_map_update_elem(&flow_stats, key, &first, BPF_NOEXIST) == 0) return;
    flow = bpf_map_lookup_elem(&flow_stats, key);
    if (!flow) return;
  }
  __sync_fetch_and_add(&flow->packets, 1);
  __sync_fetch_and_add(&flow->bytes, bytes);
}

static __always_inline bool denied(const struct netaccel_flow_key* key) {
  struct netaccel_policy_key rule = {.port = key->destination_port};
  __builtin_memcpy(rule.source, key->source, NETACCEL_ADDRESS_BYTES);
  if (bpf_map_lookup_elem(&policy_deny, &rule)) return true;
  rule.port = 0;
  return bpf_map_lookup_elem(&policy_deny, &rule) != NULL;
}

static __always_inline __u16 fold_checksum(__u64 sum) {
  sum = (sum & 0xffff) + (sum >> 16);
  sum = (sum & 0xffff) + (sum >> 16);
  sum = (sum & 0xffff) + (sum >> 16);
  return (__u16)~sum;
}

// Pseudo-headers for the TCP checksum.
struct ipv4_pseudo_header {
  __be32 source;
  __be32 destination;
  __u8 zero;
  __u8 protocol;
  __be16 length;
};
struct ipv6_pseudo_header {
  struct in6_addr source;
  struct in6_addr destination;
  __be32 length;
  __u8 zero[3];
  __u8 next_header;
};

// Turns the SYN at `tcp` into the RST|ACK a closed port would send: ports
// swapped, seq 0, ack = SYN's seq + 1, no options. The caller swaps the
// addresses and sets the checksum over `pseudo_sum`.
static __always_inline void write_reset(struct tcphdr* tcp) {
  const __be16 source = tcp->source;
  tcp->source = tcp->dest;
  tcp->dest = source;
  tcp->ack_seq = bpf_htonl(bpf_ntohl(tcp->seq) + 1);
  tcp->seq = 0;
  // doff 5, then the flags byte: RST | ACK, nothing else.
  ((__u8*)tcp)[12] = 5 << 4;
  ((__u8*)tcp)[13] = 0x14;
  tcp->window = 0;
  tcp->check = 0;
  tcp->urg_ptr = 0;
}

// Answers a denied SYN with a RST back out of the interface it came in
// on. Only what can be rewritten in place: Ethernet (VLAN tags kept), IPv4
// without options or IPv6 without extension headers; anything else is
// dropped, which leaves the client to time out instead.
static __always_inline int reject(struct xdp_md* ctx, const struct netaccel_flow_key* key,
                                  const struct packet_layout* layout) {
  void* data = (void*)(long)ctx->data;
  void* data_end = (void*)(long)ctx->data_end;
  struct ethhdr* ethernet = data;
  struct tcphdr* tcp = layout->l4;
  if ((void*)(ethernet + 1) > data_end || !tcp || (void*)(tcp + 1) > data_end) return XDP_DROP;
  __u8 mac[ETH_ALEN];
  __builtin_memcpy(mac, ethernet->h_source, ETH_ALEN);
  __builtin_memcpy(ethernet->h_source, ethernet->h_dest, ETH_ALEN);
  __builtin_memcpy(ethernet->h_dest, mac, ETH_ALEN);
  write_reset(tcp);
  // A plain number from here on: the verifier allows no arithmetic that
  // mixes packet pointers with the buffer length below.
  const __u32 frame_bytes = (__u32)((long)(tcp + 1) - (long)data) & 0xff;
  if (key->ip_version == 4) {
    struct iphdr* ip = layout->l3;
    if ((void*)(ip + 1) > data_end || ip->ihl != 5) return XDP_DROP;
    const __be32 source = ip->saddr;
    ip->saddr = ip->daddr;
    ip->daddr = source;
    ip->tot_len = bpf_htons(sizeof(*ip) + sizeof(*tcp));
    ip->id = 0;
    ip->frag_off = bpf_htons(0x4000);  // DF, as Linux sends its resets
    ip->ttl = 64;
    ip->check = 0;
    ip->check = fold_checksum(bpf_csum_diff(NULL, 0, (__be32*)ip, sizeof(*ip), 0));
    struct ipv4_pseudo_header pseudo = {.source = ip->saddr,
                                        .destination = ip->daddr,
                                        .protocol = IPPROTO_TCP,
                                        .length = bpf_htons(sizeof(*tcp))};
    const __s64 pseudo_sum = bpf_csum_diff(NULL, 0, (__be32*)&pseudo, sizeof(pseudo), 0);
    tcp->check = fold_checksum(bpf_csum_diff(NULL, 0, (__be32*)tcp, sizeof(*tcp), pseudo_sum));
  } else {
    struct ipv6hdr* ip = layout->l3;
    if ((void*)(ip + 1) > data_end) return XDP_DROP;
    struct in6_addr source = ip->saddr;
    ip->saddr = ip->daddr;
    ip->daddr = source;
    ip->payload_len = bpf_htons(sizeof(*tcp));
    ip->hop_limit = 64;
    struct ipv6_pseudo_header pseudo = {.source = ip->saddr,
                                        .destination = ip->daddr,
                                        .length = bpf_htonl(sizeof(*tcp)),
                                        .next_header = IPPROTO_TCP};
    const __s64 pseudo_sum = bpf_csum_diff(NULL, 0, (__be32*)&pseudo, sizeof(pseudo), 0);
    tcp->check = fold_checksum(bpf_csum_diff(NULL, 0, (__be32*)tcp, sizeof(*tcp), pseudo_sum));
  }
  // The SYN's options (and any padding) go: the reset ends at its TCP header.
  const __u32 buffer_bytes = (__u32)bpf_xdp_get_buff_len(ctx) & 0xffff;
  if (buffer_bytes > frame_bytes &&
      bpf_xdp_adjust_tail(ctx, (int)frame_bytes - (int)buffer_bytes) != 0) {
    return XDP_DROP;
  }
  return XDP_TX;
}

// The verdict of the steering map for this flow, counted.
static __always_inline int steer(const struct netaccel_flow_key* key, __u32 rx_queue,
                                 struct netaccel_container_counters* counters) {
  if (key->protocol != IPPROTO_TCP && key->protocol != IPPROTO_UDP) goto pass;
  const struct netaccel_steer_key steer_key = {.port = key->destination_port,
                                               .protocol = key->protocol};
  const struct netaccel_steer_action* action = bpf_map_lookup_elem(&steering, &steer_key);
  if (!action) goto pass;
  if (action->verdict == NETACCEL_STEER_DROP) {
    counters->dropped++;
    return XDP_DROP;
  }
  if (action->verdict == NETACCEL_STEER_XSK) {
    const long verdict = bpf_redirect_map(&xsk_sockets, rx_queue, XDP_PASS);
    if (verdict == XDP_REDIRECT) {
      counters->to_xsk++;
      return XDP_REDIRECT;
    }
    counters->xsk_missing++;
  }
pass:
  counters->passed++;
  return XDP_PASS;
}

// xdp.frags: the veth keeps its GSO with a multi-buffer program attached;
// headers are in the first buffer, the length counts all of them.
SEC("xdp.frags")
int xdp_classify(struct xdp_md* ctx) {
  void* data = (void*)(long)ctx->data;
  void* data_end = (void*)(long)ctx->data_end;
  const __u32 zero = 0;
  struct netaccel_container_counters* counters = bpf_map_lookup_elem(&container_stats, &zero);
  if (!counters) return XDP_PASS;
  const __u64 bytes = bpf_xdp_get_buff_len(ctx);
  counters->packets++;
  counters->bytes += bytes;

  struct netaccel_flow_key key = {};
  struct packet_layout layout = {};
  const enum parse_result result = parse_packet(data, data_end, &key, &layout);
  if (result != PARSED) {
    if (result == MALFORMED)
      counters->malformed++;
    else
      counters->not_ip++;
    counters->passed++;
    return XDP_PASS;
  }
  count_flow(&key, bytes);
  // A connection attempt (SYN without ACK) the isolation policy denies.
  if (key.protocol == IPPROTO_TCP && layout.l4 &&
      (void*)((struct tcphdr*)layout.l4 + 1) <= data_end && ((struct tcphdr*)layout.l4)->syn &&
      !((struct tcphdr*)layout.l4)->ack && denied(&key)) {
    counters->rejected++;
    return reject(ctx, &key, &layout);
  }
  return steer(&key, ctx->rx_queue_index, counters);
}
