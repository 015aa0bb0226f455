#include "receive_checksum.h"

#include <arpa/inet.h>

#include <cstdint>
#include <cstring>

namespace netaccel::stack {
namespace {

constexpr std::size_t kEthernetHeader = 14;
constexpr uint16_t kEtherTypeIpv4 = 0x0800;
constexpr uint8_t kProtocolTcp = 6;
constexpr std::size_t kTcpChecksumOffset = 16;

// Ones'-complement sum of `length` bytes, as 16-bit big-endian words,
// continuing from `sum` where `odd` says a byte is pending.
uint64_t add_bytes(uint64_t sum, const unsigned char* data, std::size_t length, bool* odd) {
  std::size_t i = 0;
  if (*odd && length > 0) {
    sum += data[0];
    i = 1;
    *odd = false;
  }
  for (; i + 1 < length; i += 2) sum += (uint32_t{data[i]} << 8) | data[i + 1];
  if (i < length) {
    sum += uint32_t{data[i]} << 8;
    *odd = true;
  }
  return sum;
}

uint16_t fold(uint64_t sum) {
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  return static_cast<uint16_t>(sum);
}

}  // namespace

ReceiveChecksum check_tcp_checksum(const pbuf* frame) {
  const auto* bytes = static_cast<const unsigned char*>(frame->payload);
  // lwIP's parsers need the headers in the first buffer too.
  if (frame->len < kEthernetHeader + 20) return ReceiveChecksum::kNotTcp;
  if (((bytes[12] << 8) | bytes[13]) != kEtherTypeIpv4) return ReceiveChecksum::kNotTcp;
  const unsigned char* ip = bytes + kEthernetHeader;
  const std::size_t ip_header = static_cast<std::size_t>(ip[0] & 0x0f) * 4;
  const std::size_t total = (std::size_t{ip[2]} << 8) | ip[3];
  const bool fragment = ((ip[6] & 0x3f) | ip[7]) != 0;
  if ((ip[0] >> 4) != 4 || ip[9] != kProtocolTcp || fragment || ip_header < 20 ||
      total < ip_header + 20 || kEthernetHeader + total > frame->tot_len ||
      frame->len < kEthernetHeader + ip_header + 20) {
    return ReceiveChecksum::kNotTcp;
  }
  const std::size_t tcp_length = total - ip_header;
  // Pseudo-header: addresses, protocol, TCP length.
  uint64_t pseudo = 0;
  bool odd = false;
  pseudo = add_bytes(pseudo, ip + 12, 8, &odd);
  pseudo += kProtocolTcp;
  pseudo += tcp_length;

  // A local sender's unfinished checksum is recognised without reading the
  // payload (the same 2^-16 odds as below); only other frames are summed.
  const unsigned char* tcp = ip + ip_header;
  const uint16_t field =
      static_cast<uint16_t>((tcp[kTcpChecksumOffset] << 8) | tcp[kTcpChecksumOffset + 1]);
  if (field == fold(pseudo)) return ReceiveChecksum::kPartial;

  uint64_t sum = pseudo;
  std::size_t skip = kEthernetHeader + ip_header;
  std::size_t left = tcp_length;
  for (const pbuf* piece = frame; piece != nullptr && left > 0; piece = piece->next) {
    std::size_t length = piece->len;
    const auto* data = static_cast<const unsigned char*>(piece->payload);
    if (skip >= length) {
      skip -= length;
      continue;
    }
    data += skip;
    length -= skip;
    skip = 0;
    if (length > left) length = left;
    sum = add_bytes(sum, data, length, &odd);
    left -= length;
  }
  return fold(sum) == 0xffff ? ReceiveChecksum::kValid : ReceiveChecksum::kInvalid;
}

}  // namespace netaccel::stack
