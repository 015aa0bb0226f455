// The glue lwIP needs from its platform in NO_SYS mode, and its netif.
#include "lwip_port.h"

#include <sys/random.h>
#include <time.h>

#include <cstring>

#include "lwip/etharp.h"
#include "lwip/init.h"
#include "lwip/ip4_addr.h"
#include "lwip/priv/tcp_priv.h"
#include "lwip/stats.h"
#include "lwip/tcp.h"
#include "netif/ethernet.h"
#include "worker.h"

namespace {

uint64_t monotonic_ms() {
  timespec now{};
  clock_gettime(CLOCK_MONOTONIC, &now);
  return static_cast<uint64_t>(now.tv_sec) * 1000 + static_cast<uint64_t>(now.tv_nsec) / 1000000;
}

uint64_t random_word() {
  uint64_t word = 0;
  while (getrandom(&word, sizeof word, 0) != sizeof word) {
  }
  return word;
}

// splitmix64: a fast, well-mixed step; seeded from the kernel's randomness.
uint64_t mix(uint64_t value) {
  value += 0x9e3779b97f4a7c15ULL;
  value = (value ^ (value >> 30)) * 0xbf58476d1ce4e5b9ULL;
  value = (value ^ (value >> 27)) * 0x94d049bb133111ebULL;
  return value ^ (value >> 31);
}

thread_local uint64_t random_state = random_word();
const uint64_t isn_secret = random_word();

}  // namespace

extern "C" {

u32_t sys_now(void) {
  return static_cast<u32_t>(monotonic_ms());
}

unsigned int netaccel_lwip_random(void) {
  random_state = mix(random_state);
  return static_cast<unsigned int>(random_state);
}

// RFC 6528: a clock that ticks every 4 microseconds plus a keyed hash of the
// connection's addresses, so that sequence numbers cannot be guessed.
unsigned int netaccel_tcp_isn(const struct ip4_addr* local_ip, unsigned short local_port,
                              const struct ip4_addr* remote_ip, unsigned short remote_port) {
  timespec now{};
  clock_gettime(CLOCK_MONOTONIC, &now);
  const uint64_t ticks =
      (static_cast<uint64_t>(now.tv_sec) * 1000000000ULL + static_cast<uint64_t>(now.tv_nsec)) /
      4000;
  const uint64_t addresses = (uint64_t{local_ip->addr} << 32) | remote_ip->addr;
  const uint64_t ports = (uint64_t{local_port} << 16) | remote_port;
  return static_cast<unsigned int>(ticks + mix(isn_secret ^ mix(addresses ^ mix(ports))));
}

// tcp_listen_input's own tests, in its order: a RST is ignored, an ACK
// answered with a RST, and a SYN dropped when the backlog is full.
int netaccel_tcp_listen_segment(const struct tcp_pcb_listen* listener,
                                const struct tcp_hdr* header) {
  const u8_t flags = TCPH_FLAGS(header);
  if ((flags & (TCP_SYN | TCP_ACK | TCP_RST)) == TCP_SYN &&
      listener->accepts_pending >= listener->backlog) {
    TCP_STATS_INC(tcp.drop);
    MIB2_STATS_INC(mib2.tcpinerrs);
  }
  return 0;
}
}

namespace netaccel::stack {
namespace {

constexpr uint32_t kMinimumFrame = 60;  // Ethernet's, without the FCS

void free_received(pbuf* buffer) {
  auto* holder = reinterpret_cast<RxPbuf*>(buffer);
  holder->worker->release_rx(holder);
}

err_t link_output(netif* interface, pbuf* frame) {
  PacketPort& port = *static_cast<Lane*>(interface->state)->port;
  if (frame->tot_len > port.frame_capacity()) return ERR_BUF;
  unsigned char* buffer = port.claim_tx();
  if (buffer == nullptr) return ERR_MEM;  // lwIP keeps the segment and sends it later
  const uint16_t length = pbuf_copy_partial(frame, buffer, frame->tot_len, 0);
  uint32_t wire_length = length;
  if (wire_length < kMinimumFrame) {
    std::memset(buffer + wire_length, 0, kMinimumFrame - wire_length);
    wire_length = kMinimumFrame;
  }
  port.commit_tx(wire_length);
  return ERR_OK;
}

err_t initialise_interface(netif* interface) {
  const auto* config = static_cast<const InterfaceConfig*>(interface->state);
  interface->name[0] = 'n';
  interface->name[1] = 'a';
  interface->output = etharp_output;
  interface->linkoutput = link_output;
  interface->mtu = static_cast<u16_t>(config->mtu);
  interface->hwaddr_len = ETH_HWADDR_LEN;
  std::memcpy(interface->hwaddr, config->mac.data(), ETH_HWADDR_LEN);
  interface->flags =
      NETIF_FLAG_BROADCAST | NETIF_FLAG_ETHARP | NETIF_FLAG_ETHERNET | NETIF_FLAG_LINK_UP;
  // The worker checks received TCP checksums itself (receive_checksum.h).
  NETIF_SET_CHECKSUM_CTRL(interface, NETIF_CHECKSUM_ENABLE_ALL & ~NETIF_CHECKSUM_CHECK_TCP);
  return ERR_OK;
}

}  // namespace

void initialise_lwip() {
  static bool initialised = false;
  if (initialised) return;
  lwip_init();
  initialised = true;
}

void add_interface(netif* interface, const InterfaceConfig& config, Lane* lane) {
  ip4_addr_t address{config.address};
  ip4_addr_t netmask{config.netmask};
  ip4_addr_t gateway{config.gateway};
  // netif_add calls the init function with `state` set: the config first,
  // then the lane for link_output.
  netif_add(interface, &address, &netmask, &gateway, const_cast<InterfaceConfig*>(&config),
            initialise_interface, ethernet_input);
  interface->state = lane;
  if (netif_default == nullptr) netif_set_default(interface);
  netif_set_up(interface);
}

pbuf* wrap_received(Worker* worker, PacketPort* port, const RxBuffer& buffer, RxPbuf* holder) {
  holder->custom.custom_free_function = free_received;
  holder->worker = worker;
  holder->port = port;
  holder->handle = buffer.handle;
  return pbuf_alloced_custom(PBUF_RAW, static_cast<u16_t>(buffer.length), PBUF_REF, &holder->custom,
                             buffer.data, static_cast<u16_t>(buffer.length));
}

}  // namespace netaccel::stack
