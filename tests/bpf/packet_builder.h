// Frames for BPF_PROG_RUN, built header by header (katran's and the kernel
// selftests' fixtures are the model): Ethernet, VLAN tags, IPv4, IPv6 and its
// extension headers, TCP, UDP, payload. build() chains the EtherTypes and
// next-header fields and fills the IP length fields; truncate() and the
// raw field setters make the malformed frames.
#pragma once

#include <arpa/inet.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <netinet/in.h>

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <vector>

namespace netaccel::testing {

class PacketBuilder {
 public:
  PacketBuilder() {
    ethhdr ethernet{};
    std::memcpy(ethernet.h_dest, "\x02\x00\x00\x00\x00\x02", ETH_ALEN);
    std::memcpy(ethernet.h_source, "\x02\x00\x00\x00\x00\x01", ETH_ALEN);
    next_type_offset_ = offsetof(ethhdr, h_proto);
    append(&ethernet, sizeof ethernet);
  }

  // An 802.1Q tag (802.1ad when `outer`), before the network header.
  PacketBuilder& vlan(std::uint16_t id, bool outer = false) {
    set_next_type(outer ? 0x88A8 : 0x8100);
    const std::uint16_t tag[2] = {htons(id), 0};
    next_type_offset_ = bytes_.size() + 2;
    append(tag, sizeof tag);
    return *this;
  }

  PacketBuilder& ether_type(std::uint16_t type) {
    set_next_type(type);
    return *this;
  }

  PacketBuilder& ipv4(const char* source, const char* destination) {
    set_next_type(ETH_P_IP);
    iphdr ip{};
    ip.version = 4;
    ip.ihl = 5;
    ip.ttl = 64;
    inet_pton(AF_INET, source, &ip.saddr);
    inet_pton(AF_INET, destination, &ip.daddr);
    return add_ip_header(&ip, sizeof ip, 4, offsetof(iphdr, protocol));
  }

  PacketBuilder& ipv6(const char* source, const char* destination) {
    set_next_type(ETH_P_IPV6);
    ipv6hdr ip{};
    ip.version = 6;
    ip.hop_limit = 64;
    inet_pton(AF_INET6, source, &ip.saddr);
    inet_pton(AF_INET6, destination, &ip.daddr);
    return add_ip_header(&ip, sizeof ip, 6, offsetof(ipv6hdr, nexthdr));
  }

  // An 8-byte IPv6 extension header: hop-by-hop, routing, destination options.
  PacketBuilder& ipv6_options(std::uint8_t type) {
    set_protocol(type);
    const std::uint8_t header[8] = {};  // next header (filled later), length 0 = 8 bytes
    protocol_offset_ = bytes_.size();
    append(header, sizeof header);
    return *this;
  }

  PacketBuilder& ipv6_fragment(std::uint16_t offset_units, bool more) {
    set_protocol(IPPROTO_FRAGMENT);
    std::uint8_t header[8] = {};
    const std::uint16_t offset =
        htons(static_cast<std::uint16_t>(offset_units << 3 | (more ? 1 : 0)));
    std::memcpy(header + 2, &offset, sizeof offset);
    protocol_offset_ = bytes_.size();
    append(header, sizeof header);
    return *this;
  }

  // IPv4 fragment offset (in 8-byte units) and more-fragments flag.
  PacketBuilder& ipv4_fragment(std::uint16_t offset_units, bool more) {
    iphdr* ip = header<iphdr>(ip_offset_);
    ip->frag_off = htons(static_cast<std::uint16_t>(offset_units | (more ? 0x2000 : 0)));
    return *this;
  }

  PacketBuilder& tcp(std::uint16_t source_port, std::uint16_t destination_port) {
    tcphdr tcp{};
    tcp.source = htons(source_port);
    tcp.dest = htons(destination_port);
    tcp.doff = 5;
    tcp.syn = 1;
    return add_transport_header(IPPROTO_TCP, &tcp, sizeof tcp);
  }

  PacketBuilder& udp(std::uint16_t source_port, std::uint16_t destination_port) {
    udphdr udp{};
    udp.source = htons(source_port);
    udp.dest = htons(destination_port);
    return add_transport_header(IPPROTO_UDP, &udp, sizeof udp);
  }

  PacketBuilder& protocol(std::uint8_t value) {
    set_protocol(value);
    return *this;
  }

  PacketBuilder& payload(std::size_t bytes) {
    bytes_.resize(bytes_.size() + bytes, 0xab);
    return *this;
  }

  // The last TCP header's sequence number and ACK flag (a SYN otherwise).
  PacketBuilder& tcp_sequence(std::uint32_t sequence, bool ack = false) {
    header<tcphdr>(l4_offset_)->seq = htonl(sequence);
    header<tcphdr>(l4_offset_)->ack = ack ? 1 : 0;
    return *this;
  }

  // The last TCP header's data offset (32-bit words), for malformed frames.
  PacketBuilder& tcp_data_offset(std::uint8_t words) {
    header<tcphdr>(l4_offset_)->doff = words & 0xf;
    return *this;
  }

  std::vector<std::uint8_t> build() const {
    std::vector<std::uint8_t> frame = bytes_;
    if (ip_version_ == 4) {
      auto* ip = reinterpret_cast<iphdr*>(frame.data() + ip_offset_);
      if (ip->tot_len == 0)
        ip->tot_len = htons(static_cast<std::uint16_t>(frame.size() - ip_offset_));
    } else if (ip_version_ == 6) {
      auto* ip = reinterpret_cast<ipv6hdr*>(frame.data() + ip_offset_);
      ip->payload_len =
          htons(static_cast<std::uint16_t>(frame.size() - ip_offset_ - sizeof(ipv6hdr)));
    }
    if (l4_offset_ != 0 && frame[protocol_offset_] == IPPROTO_UDP) {
      auto* udp = reinterpret_cast<udphdr*>(frame.data() + l4_offset_);
      udp->len = htons(static_cast<std::uint16_t>(frame.size() - l4_offset_));
    }
    return frame;
  }

  // The frame cut to `bytes`.
  std::vector<std::uint8_t> truncated(std::size_t bytes) const {
    std::vector<std::uint8_t> frame = build();
    frame.resize(bytes);
    return frame;
  }

  // Direct access for malformed frames: the IPv4 header.
  iphdr* ipv4_header() { return header<iphdr>(ip_offset_); }

 private:
  PacketBuilder& add_transport_header(std::uint8_t protocol, const void* header, std::size_t size) {
    set_protocol(protocol);
    l4_offset_ = bytes_.size();
    append(header, size);
    return *this;
  }

  PacketBuilder& add_ip_header(const void* header, std::size_t size, int version,
                               std::size_t protocol_field) {
    ip_offset_ = bytes_.size();
    ip_version_ = version;
    protocol_offset_ = ip_offset_ + protocol_field;
    append(header, size);
    return *this;
  }

  template <typename Header>
  Header* header(std::size_t offset) {
    if (offset == 0) throw std::logic_error("PacketBuilder: no such header yet");
    return reinterpret_cast<Header*>(bytes_.data() + offset);
  }

  void append(const void* data, std::size_t size) {
    const std::size_t at = bytes_.size();
    bytes_.resize(at + size);
    std::memcpy(bytes_.data() + at, data, size);
  }

  void set_next_type(std::uint16_t type) {
    const std::uint16_t network = htons(type);
    std::memcpy(bytes_.data() + next_type_offset_, &network, sizeof network);
  }

  void set_protocol(std::uint8_t protocol) {
    if (protocol_offset_ == 0) throw std::logic_error("PacketBuilder: no IP header yet");
    bytes_[protocol_offset_] = protocol;
  }

  std::vector<std::uint8_t> bytes_;
  std::size_t next_type_offset_ = 0;
  std::size_t ip_offset_ = 0;
  int ip_version_ = 0;
  std::size_t protocol_offset_ = 0;  // the field naming the next header
  std::size_t l4_offset_ = 0;
};

}  // namespace netaccel::testing
