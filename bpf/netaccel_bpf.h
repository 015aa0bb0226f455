// Layouts shared by the BPF programs (bpf/*.bpf.c) and user space (the
// loader, the CLI, the tests). BPF code includes vmlinux.h first, user space
// <linux/types.h>; both then see the same __u8..__u64 types.
//
// Addresses are 16 bytes in network order; IPv4 is stored IPv4-mapped
// (::ffff:a.b.c.d) so that one key type serves both families and a v4-mapped
// IPv6 socket matches its IPv4 peer. Ports are in host order so that
// `bpftool map dump` prints them readably.
#ifndef NETACCEL_BPF_H
#define NETACCEL_BPF_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

#define NETACCEL_ADDRESS_BYTES 16
#define NETACCEL_MAX_INTERFACES 8
#define NETACCEL_MAX_ADDRESSES 8
#define NETACCEL_NAME_BYTES 64
#define NETACCEL_IFNAME_BYTES 16
#define NETACCEL_PATH_BYTES 256
#define NETACCEL_CNI_ID_BYTES 128

// ---------------------------------------------------------------------------
// XDP classifier (one instance per container, maps under <container>/).

// What the steering map tells the classifier to do with a flow's packets.
enum netaccel_steer_verdict {
  NETACCEL_STEER_PASS = 0,  // to the kernel stack of the container
  NETACCEL_STEER_XSK = 1,   // to the AF_XDP socket of the receiving queue in xsk_sockets
  NETACCEL_STEER_DROP = 2,  // dropped by policy
};

// Steering is by the container's own (destination) port: DockNet's
// (protocol, local port) -> queue.
struct netaccel_steer_key {
  __u16 port;
  __u8 protocol;  // IPPROTO_TCP or IPPROTO_UDP
  __u8 zero;      // padding, must be 0
};

// An AF_XDP socket takes frames only from the device queue it is bound to,
// so the redirect goes to xsk_sockets[rx queue]: a stack binds one socket
// per queue of the interface.
struct netaccel_steer_action {
  __u32 verdict;  // enum netaccel_steer_verdict
  __u32 owner;    // pid of the user-space stack that steered the port: a
                  // restarted stack removes the entries of a dead one
};

struct netaccel_flow_key {
  __u8 source[NETACCEL_ADDRESS_BYTES];
  __u8 destination[NETACCEL_ADDRESS_BYTES];
  __u16 source_port;  // 0 for protocols without ports and non-first fragments
  __u16 destination_port;
  __u16 vlan_id;  // innermost 802.1Q/802.1ad tag, 0 when untagged
  __u8 protocol;  // IPPROTO_*
  __u8 ip_version;
};

struct netaccel_flow_counters {
  __u64 packets;
  __u64 bytes;
};

// Per container, per CPU (index 0 of container_stats).
struct netaccel_container_counters {
  __u64 packets;
  __u64 bytes;
  __u64 passed;       // handed to the kernel
  __u64 to_xsk;       // redirected to an AF_XDP socket
  __u64 xsk_missing;  // steered to a queue with no socket: passed instead
  __u64 dropped;      // dropped by policy
  __u64 malformed;    // truncated or inconsistent headers: passed, the kernel decides
  __u64 not_ip;       // neither IPv4 nor IPv6 (ARP...): passed
  __u64 rejected;     // connection attempts refused by the isolation policy (RST sent back)
};

// The isolation policy on the server's side (policy_deny, per container,
// written by the monitor): a TCP SYN from `source` to the container's
// `port` (0: any port) is answered with a RST, as a REJECT --reject-with
// tcp-reset rule would, so clients that are not preloaded get ECONNREFUSED
// too. Established connections are left alone.
struct netaccel_policy_key {
  __u8 source[NETACCEL_ADDRESS_BYTES];
  __u16 port;
  __u16 zero;  // padding, must be 0
};

// What an attached container is, for the CLI and the monitor to read back
// (container_record, one entry, pinned with the container's maps).
struct netaccel_container_record {
  char name[NETACCEL_NAME_BYTES];
  // The cgroup v2 whose sock_ops program serves the container: the
  // hierarchy's root, shared by all containers (containers are told apart
  // by network namespace, not by cgroup).
  char cgroup_path[NETACCEL_PATH_BYTES];
  __u64 netns_inode;
  __u64 netns_device;
  __u64 cgroup_id;
  __u32 container_id;  // key of the container in the shared maps
  __u32 interface_count;
  __u32 address_count;
  __u32 xdp_generic;  // 1 when the XDP programs run in generic (skb) mode
  __u32 ifindex[NETACCEL_MAX_INTERFACES];
  char ifname[NETACCEL_MAX_INTERFACES][NETACCEL_IFNAME_BYTES];
  __u8 addresses[NETACCEL_MAX_ADDRESSES][NETACCEL_ADDRESS_BYTES];
  __u64 netns_cookie;  // its key in attached_netns (SO_NETNS_COOKIE, bpf_get_netns_cookie)
  // The path the namespace was attached by (a runtime's bind mount, say):
  // detach enters the namespace through it when no /run/netns name leads there.
  char netns_path[NETACCEL_PATH_BYTES];
  // Set when a CNI runtime attached it (netaccel-cni): the runtime's
  // container id and network name, by which DEL and GC find it once its
  // namespace is gone. Empty for `netaccel attach`.
  char cni_container_id[NETACCEL_CNI_ID_BYTES];
  char cni_network[NETACCEL_NAME_BYTES];
};

// ---------------------------------------------------------------------------
// sock_ops + sk_msg short-circuit (maps shared by all containers, pinned
// under /sys/fs/bpf/netaccel/).

// One established TCP socket, seen from its own end.
struct netaccel_socket_key {
  __u8 local_address[NETACCEL_ADDRESS_BYTES];
  __u8 remote_address[NETACCEL_ADDRESS_BYTES];
  __u32 local_port;
  __u32 remote_port;
};

// local_endpoints: address of an attached container -> the container.
struct netaccel_endpoint {
  __u32 container_id;
  // Its attachment, new at every attach (never 0). A socket is redirected
  // only while both ends carry the generation of their container's current
  // attachment (socket_generations): a connection that went over TCP while
  // a container was detached stays on TCP after it is attached again, since
  // bytes redirected then would overtake the TCP bytes still unread.
  __u32 generation;
};

// socket_generations' value for a socket that sent a message over TCP
// while in the sockhash: it stays on TCP (no attachment has generation 0).
#define NETACCEL_GENERATION_TCP_ONLY 0

// attached_netns: network namespace cookie -> the container it is. The
// sock_ops program runs for every TCP socket of the host (it is attached
// once, at the cgroup v2 root) and acts only on sockets of these namespaces.
struct netaccel_attached_netns {
  __u32 container_id;
};

// Per container (keyed by container_id), per CPU.
struct netaccel_sockmap_counters {
  __u64 sockets_added;     // established sockets put in the sockhash
  __u64 redirected_msgs;   // sendmsg calls short-circuited to the peer socket
  __u64 redirected_bytes;  // their payload
  __u64 passed_msgs;       // sent the normal way: peer not in the sockhash
  __u64 passed_bytes;
};

#endif  // NETACCEL_BPF_H
