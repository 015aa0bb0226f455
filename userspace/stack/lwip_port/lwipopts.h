/* netaccel's lwIP configuration: one lwIP instance, driven by the stack's
 * worker thread, polled (NO_SYS=1, raw API, no lwIP threads), TCP over IPv4 on Ethernet,
 * sized for throughput between containers rather than for a microcontroller.
 * Each choice says why. */
#ifndef NETACCEL_LWIPOPTS_H
#define NETACCEL_LWIPOPTS_H

/* Poll mode: the worker drives lwIP; nothing in lwIP blocks or locks. */
#define NO_SYS 1
#define SYS_LIGHTWEIGHT_PROT 0
#define LWIP_SOCKET 0
#define LWIP_NETCONN 0
#define LWIP_TIMERS 1

/* Memory. The heap serves PBUF_RAM (headers, ARP, control segments): libc's
 * malloc scales where lwIP's fixed heap would cap the number of connections.
 * Pools stay pools: their allocations are a pointer pop. */
#define MEM_LIBC_MALLOC 1
#define MEM_ALIGNMENT 8
#define MEMP_MEM_MALLOC 0
/* Connections and listeners a worker can hold; a SYN flood exhausts these
 * (and is counted as a memory error) rather than the process's memory. */
#define MEMP_NUM_TCP_PCB 4096
#define MEMP_NUM_TCP_PCB_LISTEN 256
/* Segments and reference pbufs: the stack writes without copying (the
 * application's ring is the send buffer), one reference pbuf and one segment
 * per MSS of unacknowledged data: 256 KiB rings over a few hundred busy
 * connections. */
#define MEMP_NUM_TCP_SEG 32768
#define MEMP_NUM_PBUF 32768
/* Received frames are custom pbufs around the packet buffers (no copy); the
 * pool is only for what lwIP allocates itself. */
#define PBUF_POOL_SIZE 1024
#define PBUF_POOL_BUFSIZE 1536
#define LWIP_SUPPORT_CUSTOM_PBUF 1
#define MEMP_NUM_ARP_QUEUE 256
#define MEMP_NUM_SYS_TIMEOUT 16

/* Protocols: TCP over IPv4 only. UDP, ICMP and fragments stay with the
 * container's kernel (the XDP classifier passes them); ARP is lwIP's, fed
 * with what the kernel also sees. */
#define LWIP_IPV4 1
#define LWIP_IPV6 0
#define LWIP_ARP 1
#define ARP_TABLE_SIZE 256
#define ARP_QUEUEING 1
#define ETHARP_SUPPORT_STATIC_ENTRIES 1
#define LWIP_ETHERNET 1
#define LWIP_ICMP 0
#define LWIP_RAW 0
#define LWIP_UDP 0
#define LWIP_DHCP 0
#define LWIP_IGMP 0
#define LWIP_DNS 0
#define IP_REASSEMBLY 0
#define IP_FRAG 0
#define IP_FORWARD 0

/* TCP. An MSS for a 1500-byte MTU; windows big enough for a veth's
 * bandwidth-delay product with a millisecond of netem delay (1 MiB at
 * 8 Gbit/s), hence window scaling. */
#define LWIP_TCP 1
/* lwIP counts retransmission timeouts in ticks of twice this and sends
 * delayed ACKs on this tick: its 250 ms default makes a lost segment cost a
 * second or more and a delayed ACK a quarter of one. 25 ms gives an RTO
 * floor near the kernel's 200 ms and delayed ACKs near its 40 ms. */
#define TCP_TMR_INTERVAL 25
#define TCP_MSS 1460
#define LWIP_WND_SCALE 1
#define TCP_RCV_SCALE 5
#define TCP_WND (1024 * 1024)
/* The send buffer is the application's ring (256 KiB); lwIP's own limit must
 * not be the smaller one. */
#define TCP_SND_BUF (512 * 1024)
#define TCP_SND_QUEUELEN 4096
/* Below 0xffff less 4 MSS (a u16 in lwIP); the rings do the batching. */
#define TCP_SNDLOWAT (32 * 1024)
#define TCP_SNDQUEUELOWAT (TCP_SND_QUEUELEN / 2)
/* Out-of-order segments are kept (reordering links) and SACKed. */
#define TCP_QUEUE_OOSEQ 1
#define LWIP_TCP_SACK_OUT 1
#define LWIP_TCP_MAX_SACK_NUM 4
#define LWIP_TCP_TIMESTAMPS 1
#define LWIP_TCP_KEEPALIVE 1
#define TCP_LISTEN_BACKLOG 1
#define TCP_DEFAULT_LISTEN_BACKLOG 255
/* Writes gather into one frame at the port (linkoutput copies the chain). */
#define TCP_OVERSIZE TCP_MSS
#define LWIP_NETIF_TX_SINGLE_PBUF 0
/* A port reused right after a close, as SO_REUSEADDR lets the kernel. */
#define SO_REUSE 1
/* Initial sequence numbers keyed by a secret, as RFC 6528 asks (lwIP's
 * default is a predictable counter). */
#define LWIP_HOOK_TCP_ISN(local_ip, local_port, remote_ip, remote_port) \
  netaccel_tcp_isn(local_ip, local_port, remote_ip, remote_port)
/* A SYN that finds its listener's backlog full is dropped by lwIP without a
 * word (tcp_listen_input), where the kernel counts it (ListenOverflows): this
 * hook counts it among the TCP segments dropped, so that a SYN flood shows in
 * drops.tcp_segments. It looks at nothing but listeners' segments. */
#define LWIP_HOOK_TCP_INPACKET_PCB(pcb, hdr, optlen, opt1len, opt2, p)           \
  ((pcb)->state == LISTEN                                                        \
       ? netaccel_tcp_listen_segment((const struct tcp_pcb_listen*)(pcb), (hdr)) \
       : 0)

/* Checksums: generated in software (AF_XDP has no offload), checked on
 * input; per netif so that a port with verified receive checksums may skip
 * the check. */
#define LWIP_CHECKSUM_CTRL_PER_NETIF 1
#define CHECKSUM_GEN_IP 1
#define CHECKSUM_GEN_TCP 1
#define CHECKSUM_CHECK_IP 1
#define CHECKSUM_CHECK_TCP 1

/* Counters for `netaccel stats`: memory errors, checksum drops and, from the
 * MIB-II set, retransmitted segments. */
#define LWIP_STATS 1
/* 32-bit counters: lwIP's default 16-bit ones wrap after 65 536 events (a
 * SYN flood's dropped segments), and the published totals went backwards. */
#define LWIP_STATS_LARGE 1
#define LWIP_STATS_DISPLAY 0
#define MIB2_STATS 1
#define TCP_STATS 1
#define IP_STATS 1
#define ETHARP_STATS 1
#define MEM_STATS 1
#define MEMP_STATS 1
#define LINK_STATS 1

#define LWIP_NETIF_STATUS_CALLBACK 0
#define LWIP_NETIF_LINK_CALLBACK 0
/* One netif per container the stack serves. */
#define LWIP_SINGLE_NETIF 0

#if !defined(__ASSEMBLER__)
struct ip4_addr;
struct tcp_pcb_listen;
struct tcp_hdr;
#ifdef __cplusplus
extern "C" {
#endif
unsigned int netaccel_tcp_isn(const struct ip4_addr* local_ip, unsigned short local_port,
                              const struct ip4_addr* remote_ip, unsigned short remote_port);
/* Always 0 (ERR_OK): lwIP goes on with the segment. */
int netaccel_tcp_listen_segment(const struct tcp_pcb_listen* listener,
                                const struct tcp_hdr* header);
#ifdef __cplusplus
}
#endif
#endif

#endif /* NETACCEL_LWIPOPTS_H */
