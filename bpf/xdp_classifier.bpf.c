// XDP classifier on each interface of an attached container: parses
// Ethernet (up to two VLAN tags), IPv4, IPv6 (with extension headers), TCP
// and UDP; counts per-flow and per-container packets and bytes; and applies
// the steering map that the user-space stack fills (pass, AF_XDP, drop).
// Anything it cannot parse goes to the kernel, which decides about it.
// vmlinux.h first: the libbpf headers and ours use its types.
// clang-format off
#include "vmlinux.h"
// clang-format on
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "netaccel_bpf.h"

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

// Not used by the program: the container's identity, pinned beside its
// counters so that the CLI and the monitor read both from one place.
struct {
  __uint(type, BPF_MAP_TYPE_ARRAY);
  __uint(max_entries, 1);
  __type(key, __u32);
  __type(value, struct netaccel_container_record);
} container_record SEC(".maps");

enum parse_result { PARSED, MALFORMED, NOT_IP };

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
                                                    struct netaccel_flow_key* key) {
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
  return parse_ports(l3 + header_bytes, data_end, key);
}

static __always_inline enum parse_result parse_ipv6(void* l3, void* data_end,
                                                    struct netaccel_flow_key* key) {
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
  return parse_ports(cursor, data_end, key);
}

static __always_inline enum parse_result parse_packet(void* data, void* data_end,
                                                      struct netaccel_flow_key* key) {
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
  if (ether_type == ETH_P_IP) return parse_ipv4(cursor, data_end, key);
  if (ether_type == ETH_P_IPV6) return parse_ipv6(cursor, data_end, key);
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
  const enum parse_result result = parse_packet(data, data_end, &key);
  if (result != PARSED) {
    if (result == MALFORMED)
      counters->malformed++;
    else
      counters->not_ip++;
    counters->passed++;
    return XDP_PASS;
  }
  count_flow(&key, bytes);
  return steer(&key, ctx->rx_queue_index, counters);
}
