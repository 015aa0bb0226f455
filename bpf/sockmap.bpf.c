// The kernel short-circuit (tier 1): a sock_ops program, attached once at
// the cgroup v2 root so that it sees every process of every container,
// whether it started before or after the attach, puts established TCP
// sockets of attached network namespaces (by netns cookie) whose both ends
// are addresses of attached containers into a sockhash; an sk_msg program
// on that sockhash hands each sendmsg's payload straight to the peer
// socket's receive queue, skipping TCP/IP, the veths and the bridge. The
// maps are shared by all containers: both ends of a connection must be in
// one sockhash.
// vmlinux.h first: the libbpf headers and ours use its types.
// clang-format off
#include "vmlinux.h"
// clang-format on
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "netaccel_bpf.h"

#define AF_INET 2
#define AF_INET6 10

char LICENSE[] SEC("license") = "GPL";

struct {
  __uint(type, BPF_MAP_TYPE_SOCKHASH);
  __uint(max_entries, 65536);
  __type(key, struct netaccel_socket_key);
  __type(value, __u64);
} established_sockets SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, 1024);
  __type(key, __u8[NETACCEL_ADDRESS_BYTES]);
  __type(value, struct netaccel_endpoint);
} local_endpoints SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, 1024);
  __type(key, __u64);
  __type(value, struct netaccel_attached_netns);
} attached_netns SEC(".maps");

// Each socket of the sockhash -> the generation of its container's
// attachment when it entered (netaccel_endpoint.generation); removed when
// the socket closes.
struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, 65536);
  __type(key, struct netaccel_socket_key);
  __type(value, __u32);
} socket_generations SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_PERCPU_HASH);
  __uint(max_entries, 1024);
  __type(key, __u32);
  __type(value, struct netaccel_sockmap_counters);
} sockmap_stats SEC(".maps");

static __always_inline void set_address(__u8 address[NETACCEL_ADDRESS_BYTES], __u32 family,
                                        __u32 ipv4, const __u32 ipv6[4]) {
  if (family == AF_INET) {
    // IPv4-mapped, as everywhere in netaccel's maps.
    __builtin_memset(address, 0, 10);
    address[10] = 0xff;
    address[11] = 0xff;
    __builtin_memcpy(address + 12, &ipv4, sizeof ipv4);
  } else {
    __builtin_memcpy(address, ipv6, NETACCEL_ADDRESS_BYTES);
  }
}

// The socket's key as seen from its own end. sock_ops and sk_msg contexts
// name these fields alike; a macro serves both because the verifier does
// not let a context's arrays be passed by pointer: they are copied first.
#define SOCKET_KEY_OF(ctx, key)                                                                 \
  do {                                                                                          \
    const __u32 local_ipv6[4] = {(ctx)->local_ip6[0], (ctx)->local_ip6[1], (ctx)->local_ip6[2], \
                                 (ctx)->local_ip6[3]};                                          \
    const __u32 remote_ipv6[4] = {(ctx)->remote_ip6[0], (ctx)->remote_ip6[1],                   \
                                  (ctx)->remote_ip6[2], (ctx)->remote_ip6[3]};                  \
    set_address((key)->local_address, (ctx)->family, (ctx)->local_ip4, local_ipv6);             \
    set_address((key)->remote_address, (ctx)->family, (ctx)->remote_ip4, remote_ipv6);          \
    (key)->local_port = (ctx)->local_port;                                                      \
    (key)->remote_port = bpf_ntohl((ctx)->remote_port); /* the port, shifted, network order */  \
  } while (0)

// A closed socket leaves the sockhash by itself; its generation goes here.
static __always_inline void forget_closed_socket(struct bpf_sock_ops* skops) {
  if (skops->args[1] != BPF_TCP_CLOSE) return;
  struct netaccel_socket_key key = {};
  SOCKET_KEY_OF(skops, &key);
  bpf_map_delete_elem(&socket_generations, &key);
}

SEC("sockops")
int sockops_track(struct bpf_sock_ops* skops) {
  if (skops->family != AF_INET && skops->family != AF_INET6) return 1;
  if (skops->op == BPF_SOCK_OPS_STATE_CB) {
    forget_closed_socket(skops);
    return 1;
  }
  if (skops->op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB &&
      skops->op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB)
    return 1;
  // Most sockets of the host belong to no attached container: one lookup.
  const __u64 netns_cookie = bpf_get_netns_cookie(skops);
  const struct netaccel_attached_netns* container =
      bpf_map_lookup_elem(&attached_netns, &netns_cookie);
  if (!container) return 1;
  struct netaccel_socket_key key = {};
  SOCKET_KEY_OF(skops, &key);

  // The local address must be one the container registered: addresses
  // registered are unique across containers, so the sockhash key is too
  // (two containers' loopback connections would collide).
  const struct netaccel_endpoint* local = bpf_map_lookup_elem(&local_endpoints, key.local_address);
  if (!local || local->container_id != container->container_id ||
      !bpf_map_lookup_elem(&local_endpoints, key.remote_address))
    return 1;
  struct netaccel_sockmap_counters* counters =
      bpf_map_lookup_elem(&sockmap_stats, &container->container_id);
  if (!counters) return 1;
  // The generation first: sk_msg redirects no socket without one.
  if (bpf_map_update_elem(&socket_generations, &key, &local->generation, BPF_ANY) != 0) return 1;
  if (bpf_sock_hash_update(skops, &established_sockets, &key, BPF_ANY) != 0) {
    bpf_map_delete_elem(&socket_generations, &key);
    return 1;
  }
  __sync_fetch_and_add(&counters->sockets_added, 1);
  // Told when it closes, to forget its generation.
  bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
  return 1;
}

SEC("sk_msg")
int sk_msg_redirect(struct sk_msg_md* msg) {
  const __u64 bytes = msg->size;
  struct netaccel_socket_key self = {};
  SOCKET_KEY_OF(msg, &self);
  // The peer's entry: its local end is our remote end.
  struct netaccel_socket_key peer = {};
  __builtin_memcpy(peer.local_address, self.remote_address, NETACCEL_ADDRESS_BYTES);
  __builtin_memcpy(peer.remote_address, self.local_address, NETACCEL_ADDRESS_BYTES);
  peer.local_port = self.remote_port;
  peer.remote_port = self.local_port;

  // A detached container's sockets stay in the sockhash until they close;
  // without its endpoint they are no longer short-circuited, and once it
  // is attached again (a new generation) they are not either: the bytes
  // they sent over TCP meanwhile may still be unread.
  const struct netaccel_endpoint* self_endpoint =
      bpf_map_lookup_elem(&local_endpoints, self.local_address);
  const struct netaccel_endpoint* peer_endpoint =
      bpf_map_lookup_elem(&local_endpoints, self.remote_address);
  const __u32* self_generation = bpf_map_lookup_elem(&socket_generations, &self);
  const __u32* peer_generation = bpf_map_lookup_elem(&socket_generations, &peer);
  struct netaccel_sockmap_counters* counters =
      self_endpoint ? bpf_map_lookup_elem(&sockmap_stats, &self_endpoint->container_id) : 0;
  const bool current = self_endpoint && peer_endpoint && self_generation && peer_generation &&
                       *self_generation == self_endpoint->generation &&
                       *peer_generation == peer_endpoint->generation;
  if (counters && current &&
      bpf_msg_redirect_hash(msg, &established_sockets, &peer, BPF_F_INGRESS) == SK_PASS) {
    __sync_fetch_and_add(&counters->redirected_msgs, 1);
    __sync_fetch_and_add(&counters->redirected_bytes, bytes);
    return SK_PASS;
  }
  if (counters) {
    __sync_fetch_and_add(&counters->passed_msgs, 1);
    __sync_fetch_and_add(&counters->passed_bytes, bytes);
  }
  // Once a message of the socket went over TCP (its peer not in the
  // sockhash yet, or a container detached), later ones must too: redirected,
  // they would be read before the TCP bytes still unread.
  if (self_generation && *self_generation != NETACCEL_GENERATION_TCP_ONLY) {
    const __u32 tcp_only = NETACCEL_GENERATION_TCP_ONLY;
    bpf_map_update_elem(&socket_generations, &self, &tcp_only, BPF_EXIST);
  }
  return SK_PASS;
}
