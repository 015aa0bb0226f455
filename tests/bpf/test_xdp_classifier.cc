// The XDP classifier under BPF_PROG_RUN: verdicts, per-container and
// per-flow counters, steering, on well-formed, tagged, truncated and
// malformed frames.
#include <gtest/gtest.h>

#include <array>
#include <memory>

#include "bpf_test_support.h"
#include "netaccel_bpf.h"
#include "packet_builder.h"
#include "xdp_classifier.skel.h"

namespace netaccel::testing {
namespace {

using Frame = std::vector<std::uint8_t>;

std::array<std::uint8_t, NETACCEL_ADDRESS_BYTES> ipv4_mapped(const char* text) {
  std::array<std::uint8_t, NETACCEL_ADDRESS_BYTES> address{};
  address[10] = address[11] = 0xff;
  inet_pton(AF_INET, text, address.data() + 12);
  return address;
}

std::array<std::uint8_t, NETACCEL_ADDRESS_BYTES> ipv6_address(const char* text) {
  std::array<std::uint8_t, NETACCEL_ADDRESS_BYTES> address{};
  inet_pton(AF_INET6, text, address.data());
  return address;
}

class XdpClassifierTest : public BpfTest {
 protected:
  void SetUp() override {
    NETACCEL_SKIP_WITHOUT_BPF_PRIVILEGES();
    BpfTest::SetUp();
    skeleton_.reset(xdp_classifier::open_and_load());
    ASSERT_TRUE(skeleton_) << "the verifier rejected xdp_classify: " << std::strerror(errno);
  }

  // The program's verdict on `frame`.
  int run(const Frame& frame) {
    LIBBPF_OPTS(bpf_test_run_opts, options, .data_in = frame.data(),
                .data_size_in = static_cast<__u32>(frame.size()));
    const int error =
        bpf_prog_test_run_opts(bpf_program__fd(skeleton_->progs.xdp_classify), &options);
    EXPECT_EQ(error, 0) << std::strerror(-error);
    return static_cast<int>(options.retval);
  }

  netaccel_container_counters counters() {
    const __u32 zero = 0;
    return per_cpu_sum<netaccel_container_counters>(bpf_map__fd(skeleton_->maps.container_stats),
                                                    &zero);
  }

  std::size_t flow_count() {
    std::size_t count = 0;
    netaccel_flow_key key{};
    netaccel_flow_key next{};
    const void* previous = nullptr;
    while (bpf_map_get_next_key(bpf_map__fd(skeleton_->maps.flow_stats), previous, &next) == 0) {
      ++count;
      key = next;
      previous = &key;
    }
    return count;
  }

  // The counters of the one flow there must be.
  netaccel_flow_key only_flow(netaccel_flow_counters& counters) {
    netaccel_flow_key key{};
    EXPECT_EQ(flow_count(), 1u);
    EXPECT_EQ(bpf_map_get_next_key(bpf_map__fd(skeleton_->maps.flow_stats), nullptr, &key), 0);
    EXPECT_EQ(bpf_map_lookup_elem(bpf_map__fd(skeleton_->maps.flow_stats), &key, &counters), 0);
    return key;
  }

  void steer(std::uint8_t protocol, std::uint16_t port, netaccel_steer_verdict verdict) {
    const netaccel_steer_key key{port, protocol, 0};
    const netaccel_steer_action action{static_cast<__u32>(verdict), 0};
    ASSERT_EQ(bpf_map_update_elem(bpf_map__fd(skeleton_->maps.steering), &key, &action, BPF_ANY),
              0);
  }

  void deny(const std::array<std::uint8_t, NETACCEL_ADDRESS_BYTES>& source, std::uint16_t port) {
    netaccel_policy_key key{};
    std::memcpy(key.source, source.data(), source.size());
    key.port = port;
    const __u32 present = 1;
    ASSERT_EQ(
        bpf_map_update_elem(bpf_map__fd(skeleton_->maps.policy_deny), &key, &present, BPF_ANY), 0);
  }

  // The verdict and the frame the program leaves (what XDP_TX sends).
  int run_and_capture(const Frame& frame, Frame& out) {
    out.assign(frame.size() + 64, 0);
    LIBBPF_OPTS(bpf_test_run_opts, options, .data_in = frame.data(), .data_out = out.data(),
                .data_size_in = static_cast<__u32>(frame.size()),
                .data_size_out = static_cast<__u32>(out.size()));
    const int error =
        bpf_prog_test_run_opts(bpf_program__fd(skeleton_->progs.xdp_classify), &options);
    EXPECT_EQ(error, 0) << std::strerror(-error);
    out.resize(options.data_size_out);
    return static_cast<int>(options.retval);
  }

  struct Destroy {
    void operator()(xdp_classifier* skeleton) const { xdp_classifier::destroy(skeleton); }
  };
  std::unique_ptr<xdp_classifier, Destroy> skeleton_;
};

TEST_F(XdpClassifierTest, Ipv4TcpPassesAndIsCountedAsOneFlow) {
  const Frame frame =
      PacketBuilder().ipv4("10.0.0.1", "10.0.0.2").tcp(40000, 6379).payload(100).build();
  EXPECT_EQ(run(frame), XDP_PASS);
  EXPECT_EQ(run(frame), XDP_PASS);

  const netaccel_container_counters container = counters();
  EXPECT_EQ(container.packets, 2u);
  EXPECT_EQ(container.bytes, 2 * frame.size());
  EXPECT_EQ(container.passed, 2u);
  EXPECT_EQ(container.malformed, 0u);
  netaccel_flow_counters flow{};
  const netaccel_flow_key key = only_flow(flow);
  EXPECT_EQ(flow.packets, 2u);
  EXPECT_EQ(flow.bytes, 2 * frame.size());
  EXPECT_EQ(key.ip_version, 4);
  EXPECT_EQ(key.protocol, IPPROTO_TCP);
  EXPECT_EQ(key.source_port, 40000);
  EXPECT_EQ(key.destination_port, 6379);
  EXPECT_EQ(key.vlan_id, 0);
  EXPECT_EQ(0, std::memcmp(key.source, ipv4_mapped("10.0.0.1").data(), NETACCEL_ADDRESS_BYTES));
  EXPECT_EQ(0,
            std::memcmp(key.destination, ipv4_mapped("10.0.0.2").data(), NETACCEL_ADDRESS_BYTES));
}

TEST_F(XdpClassifierTest, Ipv6UdpIsParsed) {
  const Frame frame = PacketBuilder().ipv6("fd00::1", "fd00::2").udp(5353, 53).payload(20).build();
  EXPECT_EQ(run(frame), XDP_PASS);
  netaccel_flow_counters flow{};
  const netaccel_flow_key key = only_flow(flow);
  EXPECT_EQ(key.ip_version, 6);
  EXPECT_EQ(key.protocol, IPPROTO_UDP);
  EXPECT_EQ(key.source_port, 5353);
  EXPECT_EQ(key.destination_port, 53);
  EXPECT_EQ(0,
            std::memcmp(key.destination, ipv6_address("fd00::2").data(), NETACCEL_ADDRESS_BYTES));
  EXPECT_EQ(flow.bytes, frame.size());
}

TEST_F(XdpClassifierTest, DifferentPortsAreDifferentFlows) {
  run(PacketBuilder().ipv4("10.0.0.1", "10.0.0.2").tcp(40000, 80).build());
  run(PacketBuilder().ipv4("10.0.0.1", "10.0.0.2").tcp(40001, 80).build());
  run(PacketBuilder().ipv4("10.0.0.1", "10.0.0.2").udp(40000, 80).build());
  EXPECT_EQ(flow_count(), 3u);
  EXPECT_EQ(counters().packets, 3u);
}

TEST_F(XdpClassifierTest, VlanTagsAreSkippedAndTheInnerIdRecorded) {
  EXPECT_EQ(run(PacketBuilder().vlan(42).ipv4("10.0.0.1", "10.0.0.2").tcp(1, 2).build()), XDP_PASS);
  netaccel_flow_counters flow{};
  netaccel_flow_key key = only_flow(flow);
  EXPECT_EQ(key.vlan_id, 42);
  EXPECT_EQ(key.destination_port, 2);

  ASSERT_EQ(bpf_map_delete_elem(bpf_map__fd(skeleton_->maps.flow_stats), &key), 0);
  const Frame qinq =
      PacketBuilder().vlan(100, true).vlan(7).ipv6("fd00::1", "fd00::2").udp(3, 4).build();
  EXPECT_EQ(run(qinq), XDP_PASS);
  key = only_flow(flow);
  EXPECT_EQ(key.vlan_id, 7);
  EXPECT_EQ(key.ip_version, 6);
  EXPECT_EQ(key.source_port, 3);
  EXPECT_EQ(counters().malformed, 0u);
}

TEST_F(XdpClassifierTest, Ipv6ExtensionHeadersAreWalked) {
  const Frame frame = PacketBuilder()
                          .ipv6("fd00::1", "fd00::2")
                          .ipv6_options(IPPROTO_HOPOPTS)
                          .ipv6_options(IPPROTO_DSTOPTS)
                          .ipv6_fragment(0, true)
                          .tcp(1234, 443)
                          .build();
  EXPECT_EQ(run(frame), XDP_PASS);
  netaccel_flow_counters flow{};
  const netaccel_flow_key key = only_flow(flow);
  EXPECT_EQ(key.protocol, IPPROTO_TCP);
  EXPECT_EQ(key.source_port, 1234);
  EXPECT_EQ(key.destination_port, 443);
}

TEST_F(XdpClassifierTest, LaterFragmentsHaveNoPorts) {
  run(PacketBuilder()
          .ipv4("10.0.0.1", "10.0.0.2")
          .udp(1000, 2000)
          .ipv4_fragment(185, false)
          .build());
  netaccel_flow_counters flow{};
  netaccel_flow_key key = only_flow(flow);
  EXPECT_EQ(key.protocol, IPPROTO_UDP);
  EXPECT_EQ(key.source_port, 0);
  EXPECT_EQ(key.destination_port, 0);

  ASSERT_EQ(bpf_map_delete_elem(bpf_map__fd(skeleton_->maps.flow_stats), &key), 0);
  run(PacketBuilder().ipv6("fd00::1", "fd00::2").ipv6_fragment(185, false).udp(1000, 2000).build());
  key = only_flow(flow);
  EXPECT_EQ(key.protocol, IPPROTO_UDP);
  EXPECT_EQ(key.destination_port, 0);
  EXPECT_EQ(counters().malformed, 0u);
}

TEST_F(XdpClassifierTest, NonIpFramesPass) {
  EXPECT_EQ(run(PacketBuilder().ether_type(ETH_P_ARP).payload(28).build()), XDP_PASS);
  const netaccel_container_counters container = counters();
  EXPECT_EQ(container.not_ip, 1u);
  EXPECT_EQ(container.passed, 1u);
  EXPECT_EQ(flow_count(), 0u);
}

TEST_F(XdpClassifierTest, OtherTransportProtocolsAreFlowsWithoutPorts) {
  EXPECT_EQ(
      run(PacketBuilder().ipv4("10.0.0.1", "10.0.0.2").protocol(IPPROTO_ICMP).payload(8).build()),
      XDP_PASS);
  netaccel_flow_counters flow{};
  const netaccel_flow_key key = only_flow(flow);
  EXPECT_EQ(key.protocol, IPPROTO_ICMP);
  EXPECT_EQ(key.source_port, 0);
}

// Every cut of a frame short of its last header is malformed, passed to
// the kernel, and makes no flow.
TEST_F(XdpClassifierTest, TruncatedFramesPassAsMalformed) {
  const PacketBuilder tcp4 = PacketBuilder().ipv4("10.0.0.1", "10.0.0.2").tcp(1, 2);
  const PacketBuilder udp6 = PacketBuilder().ipv6("fd00::1", "fd00::2").udp(1, 2);
  const PacketBuilder tagged = PacketBuilder().vlan(5).ipv4("10.0.0.1", "10.0.0.2").udp(1, 2);
  const PacketBuilder extended =
      PacketBuilder().ipv6("fd00::1", "fd00::2").ipv6_options(IPPROTO_HOPOPTS).tcp(1, 2);
  const struct {
    const char* name;
    Frame frame;
  } cases[] = {
      {"ipv4 header cut", tcp4.truncated(ETH_HLEN + 10)},
      {"tcp header cut", tcp4.truncated(ETH_HLEN + 20 + 12)},
      {"ipv6 header cut", udp6.truncated(ETH_HLEN + 30)},
      {"udp header cut", udp6.truncated(ETH_HLEN + 40 + 4)},
      {"vlan tag cut", tagged.truncated(ETH_HLEN + 2)},
      {"ipv6 extension cut", extended.truncated(ETH_HLEN + 40 + 1)},
      {"tcp after extension cut", extended.truncated(ETH_HLEN + 40 + 8 + 10)},
  };
  std::uint64_t expected = 0;
  for (const auto& test_case : cases) {
    SCOPED_TRACE(test_case.name);
    EXPECT_EQ(run(test_case.frame), XDP_PASS);
    EXPECT_EQ(counters().malformed, ++expected);
  }
  EXPECT_EQ(counters().passed, expected);
  EXPECT_EQ(flow_count(), 0u);
}

TEST_F(XdpClassifierTest, InconsistentHeadersPassAsMalformed) {
  PacketBuilder short_ihl = PacketBuilder().ipv4("10.0.0.1", "10.0.0.2").tcp(1, 2);
  short_ihl.ipv4_header()->ihl = 4;
  PacketBuilder wrong_version = PacketBuilder().ipv4("10.0.0.1", "10.0.0.2").tcp(1, 2);
  wrong_version.ipv4_header()->version = 6;
  PacketBuilder short_total = PacketBuilder().ipv4("10.0.0.1", "10.0.0.2").tcp(1, 2);
  short_total.ipv4_header()->tot_len = htons(12);
  const struct {
    const char* name;
    Frame frame;
  } cases[] = {
      {"ihl below 5", short_ihl.build()},
      {"version 6 in an IPv4 EtherType", wrong_version.build()},
      {"total length below the header", short_total.build()},
      {"tcp data offset below 5",
       PacketBuilder().ipv4("10.0.0.1", "10.0.0.2").tcp(1, 2).tcp_data_offset(3).build()},
  };
  std::uint64_t expected = 0;
  for (const auto& test_case : cases) {
    SCOPED_TRACE(test_case.name);
    EXPECT_EQ(run(test_case.frame), XDP_PASS);
    EXPECT_EQ(counters().malformed, ++expected);
  }
  EXPECT_EQ(flow_count(), 0u);
}

TEST_F(XdpClassifierTest, SteeringDropsByPolicy) {
  steer(IPPROTO_TCP, 8080, NETACCEL_STEER_DROP);
  EXPECT_EQ(run(PacketBuilder().ipv4("10.0.0.1", "10.0.0.2").tcp(40000, 8080).build()), XDP_DROP);
  // The key is (protocol, destination port): UDP to 8080 and TCP from 8080 pass.
  EXPECT_EQ(run(PacketBuilder().ipv4("10.0.0.1", "10.0.0.2").udp(40000, 8080).build()), XDP_PASS);
  EXPECT_EQ(run(PacketBuilder().ipv4("10.0.0.1", "10.0.0.2").tcp(8080, 40000).build()), XDP_PASS);
  const netaccel_container_counters container = counters();
  EXPECT_EQ(container.dropped, 1u);
  EXPECT_EQ(container.passed, 2u);
  EXPECT_EQ(container.packets, 3u);
}

TEST_F(XdpClassifierTest, SteeringToAQueueWithoutSocketPasses) {
  steer(IPPROTO_UDP, 4789, NETACCEL_STEER_XSK);
  EXPECT_EQ(run(PacketBuilder().ipv6("fd00::1", "fd00::2").udp(1, 4789).build()), XDP_PASS);
  const netaccel_container_counters container = counters();
  EXPECT_EQ(container.xsk_missing, 1u);
  EXPECT_EQ(container.to_xsk, 0u);
  EXPECT_EQ(container.passed, 1u);
}

TEST_F(XdpClassifierTest, ExplicitPassVerdictPasses) {
  steer(IPPROTO_TCP, 22, NETACCEL_STEER_PASS);
  EXPECT_EQ(run(PacketBuilder().ipv4("10.0.0.1", "10.0.0.2").tcp(1, 22).build()), XDP_PASS);
  EXPECT_EQ(counters().passed, 1u);
}

// RFC 1071 sum of 16-bit words; 0xffff over a header with a valid checksum.
std::uint16_t ones_complement_sum(const std::uint8_t* bytes, std::size_t length,
                                  std::uint32_t sum = 0) {
  for (std::size_t i = 0; i + 1 < length; i += 2) sum += bytes[i] << 8 | bytes[i + 1];
  if (length % 2 != 0) sum += bytes[length - 1] << 8;
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  return static_cast<std::uint16_t>(sum);
}

TEST_F(XdpClassifierTest, DeniedSynIsAnsweredWithAResetAsByAReject) {
  deny(ipv4_mapped("10.0.0.1"), 6379);
  const Frame syn = PacketBuilder()
                        .ipv4("10.0.0.1", "10.0.0.2")
                        .tcp(40000, 6379)
                        .tcp_sequence(0x01020304)
                        .payload(12)  // as if options: the reset carries none
                        .build();
  Frame reset;
  ASSERT_EQ(run_and_capture(syn, reset), XDP_TX);
  ASSERT_EQ(reset.size(), sizeof(ethhdr) + sizeof(iphdr) + sizeof(tcphdr));
  const auto* ethernet = reinterpret_cast<const ethhdr*>(reset.data());
  const auto* sent = reinterpret_cast<const ethhdr*>(syn.data());
  EXPECT_EQ(std::memcmp(ethernet->h_dest, sent->h_source, ETH_ALEN), 0);
  EXPECT_EQ(std::memcmp(ethernet->h_source, sent->h_dest, ETH_ALEN), 0);
  const auto* ip = reinterpret_cast<const iphdr*>(reset.data() + sizeof(ethhdr));
  const auto* syn_ip = reinterpret_cast<const iphdr*>(syn.data() + sizeof(ethhdr));
  EXPECT_EQ(ip->saddr, syn_ip->daddr);
  EXPECT_EQ(ip->daddr, syn_ip->saddr);
  EXPECT_EQ(ntohs(ip->tot_len), sizeof(iphdr) + sizeof(tcphdr));
  EXPECT_EQ(ones_complement_sum(reinterpret_cast<const std::uint8_t*>(ip), sizeof *ip), 0xffff);
  const auto* tcp = reinterpret_cast<const tcphdr*>(ip + 1);
  EXPECT_EQ(ntohs(tcp->source), 6379);
  EXPECT_EQ(ntohs(tcp->dest), 40000);
  EXPECT_TRUE(tcp->rst && tcp->ack && !tcp->syn && !tcp->fin);
  EXPECT_EQ(tcp->seq, 0u);
  EXPECT_EQ(ntohl(tcp->ack_seq), 0x01020305u);
  EXPECT_EQ(tcp->doff, 5);
  // The TCP checksum covers the IPv4 pseudo-header.
  std::uint8_t pseudo[12] = {};
  std::memcpy(pseudo, &ip->saddr, 4);
  std::memcpy(pseudo + 4, &ip->daddr, 4);
  pseudo[9] = IPPROTO_TCP;
  pseudo[11] = sizeof(tcphdr);
  EXPECT_EQ(ones_complement_sum(reinterpret_cast<const std::uint8_t*>(tcp), sizeof *tcp,
                                ones_complement_sum(pseudo, sizeof pseudo)),
            0xffff);
  EXPECT_EQ(counters().rejected, 1u);
}

TEST_F(XdpClassifierTest, PolicyLeavesOtherSourcesPortsAndEstablishedFlowsAlone) {
  deny(ipv4_mapped("10.0.0.1"), 6379);
  EXPECT_EQ(run(PacketBuilder().ipv4("10.0.0.9", "10.0.0.2").tcp(40000, 6379).build()), XDP_PASS);
  EXPECT_EQ(run(PacketBuilder().ipv4("10.0.0.1", "10.0.0.2").tcp(40000, 6380).build()), XDP_PASS);
  EXPECT_EQ(run(PacketBuilder()
                    .ipv4("10.0.0.1", "10.0.0.2")
                    .tcp(40000, 6379)
                    .tcp_sequence(7, /*ack=*/true)
                    .build()),
            XDP_PASS);
  EXPECT_EQ(run(PacketBuilder().ipv4("10.0.0.1", "10.0.0.2").udp(40000, 6379).build()), XDP_PASS);
  EXPECT_EQ(counters().rejected, 0u);
}

TEST_F(XdpClassifierTest, DenyingEveryPortResetsIpv6Syns) {
  deny(ipv6_address("fd00::1"), 0);
  const Frame syn =
      PacketBuilder().ipv6("fd00::1", "fd00::2").tcp(40000, 443).tcp_sequence(99).build();
  Frame reset;
  ASSERT_EQ(run_and_capture(syn, reset), XDP_TX);
  ASSERT_EQ(reset.size(), sizeof(ethhdr) + sizeof(ipv6hdr) + sizeof(tcphdr));
  const auto* ip = reinterpret_cast<const ipv6hdr*>(reset.data() + sizeof(ethhdr));
  EXPECT_EQ(ntohs(ip->payload_len), sizeof(tcphdr));
  const auto* tcp = reinterpret_cast<const tcphdr*>(ip + 1);
  EXPECT_TRUE(tcp->rst && tcp->ack);
  EXPECT_EQ(ntohl(tcp->ack_seq), 100u);
  std::uint8_t pseudo[40] = {};
  std::memcpy(pseudo, &ip->saddr, 16);
  std::memcpy(pseudo + 16, &ip->daddr, 16);
  pseudo[35] = sizeof(tcphdr);
  pseudo[39] = IPPROTO_TCP;
  EXPECT_EQ(ones_complement_sum(reinterpret_cast<const std::uint8_t*>(tcp), sizeof *tcp,
                                ones_complement_sum(pseudo, sizeof pseudo)),
            0xffff);
}

}  // namespace
}  // namespace netaccel::testing
