// The software control-plane engine, driven directly: requests in, outputs out.
#include <errno.h>
#include <gtest/gtest.h>
#include <sys/socket.h>

#include <cstring>
#include <initializer_list>
#include <memory>
#include <vector>

#include "netaccel/engine.h"
#include "test_support.h"

namespace netaccel {
namespace {

using test::ipv4;

constexpr uint64_t kNetns = 4026531840;
constexpr uint64_t kOtherNetns = 4026532000;

InetAddress ipv6(std::initializer_list<uint8_t> tail, uint16_t port) {
  InetAddress address{};
  std::memcpy(address.bytes + 16 - tail.size(), tail.begin(), tail.size());
  address.port = port;
  address.family = AF_INET6;
  return address;
}

InetAddress ipv6_any(uint16_t port) {
  return ipv6({}, port);
}
InetAddress ipv6_loopback(uint16_t port) {
  return ipv6({1}, port);
}
InetAddress ipv4_any(uint16_t port) {
  return ipv4(0, 0, 0, 0, port);
}
InetAddress ipv4_loopback(uint16_t port) {
  return ipv4(127, 0, 0, 1, port);
}

bool same(const InetAddress& a, const InetAddress& b) {
  return std::memcmp(a.bytes, b.bytes, sizeof a.bytes) == 0 && a.port == b.port &&
         a.family == b.family;
}

class SoftwareEngineTest : public ::testing::Test {
 protected:
  std::vector<EngineOutput> submit(uint32_t process_id, const Request& request) {
    std::vector<EngineOutput> out;
    engine->submit(process_id, request, out);
    return out;
  }

  Request request(RequestOp op) {
    Request r{};
    r.op = op;
    r.request_id = ++last_request_id;
    return r;
  }

  Request listen_request(uint64_t socket_id, const InetAddress& address, uint8_t flags = 0) {
    Request r = request(RequestOp::kListen);
    r.socket_id = socket_id;
    r.address = address;
    r.backlog = 128;
    r.flags = flags;
    return r;
  }

  Request connect_request(uint64_t socket_id, const InetAddress& destination, uint8_t flags = 0,
                          const InetAddress& source = InetAddress{}) {
    Request r = request(RequestOp::kConnect);
    r.socket_id = socket_id;
    r.address = destination;
    r.source = source;
    r.flags = flags;
    return r;
  }

  Request close_request(uint64_t connection_id) {
    Request r = request(RequestOp::kClose);
    r.connection_id = connection_id;
    return r;
  }

  // Status of the single reply `out` must hold, addressed to `process_id`.
  int reply_status(const std::vector<EngineOutput>& out, uint32_t process_id) {
    EXPECT_EQ(out.size(), 1u);
    if (out.size() != 1) return 1;
    EXPECT_EQ(out[0].notice, EngineNotice::kDeliver);
    EXPECT_EQ(out[0].destination, process_id);
    EXPECT_EQ(out[0].event.type, EventType::kReply);
    EXPECT_EQ(out[0].event.request_id, last_request_id);
    return out[0].event.status;
  }

  void listen_ok(uint32_t process_id, uint64_t socket_id, const InetAddress& address,
                 uint8_t flags = 0) {
    ASSERT_EQ(
        reply_status(submit(process_id, listen_request(socket_id, address, flags)), process_id), 0);
  }

  // Connects and returns the server process that got the connection (0: refused).
  uint32_t connect_to(uint32_t process_id, const InetAddress& destination, uint8_t flags = 0,
                      uint64_t* connection_id = nullptr) {
    const auto out = submit(process_id, connect_request(77, destination, flags));
    if (out.size() == 1) {
      EXPECT_EQ(out[0].event.status, -ECONNREFUSED);
      return 0;
    }
    EXPECT_EQ(out.size(), 3u);
    if (out.size() != 3) return 0;
    if (connection_id != nullptr) *connection_id = out[0].event.connection_id;
    return out[0].peer_process;
  }

  std::unique_ptr<ControlPlaneEngine> engine = make_software_engine();
  uint32_t last_request_id = 0;
};

TEST_F(SoftwareEngineTest, ListenRepliesWithRequestEchoed) {
  engine->add_process(1, kNetns);
  const auto out = submit(1, listen_request(5, ipv4_any(8080)));
  ASSERT_EQ(reply_status(out, 1), 0);
  EXPECT_EQ(out[0].event.op, RequestOp::kListen);
  EXPECT_EQ(out[0].event.socket_id, 5u);
  EXPECT_EQ(engine->counters().listeners, 1u);
  EXPECT_EQ(engine->name(), "software");
}

TEST_F(SoftwareEngineTest, SameSocketListeningTwiceIsAddressInUse) {
  engine->add_process(1, kNetns);
  listen_ok(1, 5, ipv4_any(8080));
  EXPECT_EQ(reply_status(submit(1, listen_request(5, ipv4_any(8081))), 1), -EADDRINUSE);
  EXPECT_EQ(engine->counters().rejected_requests, 1u);
}

TEST_F(SoftwareEngineTest, SeveralSocketsMayShareAPort) {
  engine->add_process(1, kNetns);
  engine->add_process(2, kNetns);
  listen_ok(1, 5, ipv4_any(8080));
  listen_ok(1, 6, ipv4_any(8080));
  listen_ok(2, 5, ipv4_any(8080));
  EXPECT_EQ(engine->counters().listeners, 3u);
}

TEST_F(SoftwareEngineTest, ConnectEmitsCreatedThenClientReplyThenIncoming) {
  engine->add_process(1, kNetns);  // server
  engine->add_process(2, kNetns);  // client
  listen_ok(1, 5, ipv4_any(8080));
  const Request connect = connect_request(9, ipv4_loopback(8080));
  const auto out = submit(2, connect);
  ASSERT_EQ(out.size(), 3u);

  EXPECT_EQ(out[0].notice, EngineNotice::kConnectionCreated);
  EXPECT_EQ(out[0].destination, 2u);
  EXPECT_EQ(out[0].peer_process, 1u);
  EXPECT_EQ(out[0].event.connection_id, 1u);

  const InetAddress client = ipv4(127, 0, 0, 1, 32768);
  EXPECT_EQ(out[1].notice, EngineNotice::kDeliver);
  EXPECT_EQ(out[1].destination, 2u);
  EXPECT_EQ(out[1].event.type, EventType::kReply);
  EXPECT_EQ(out[1].event.op, RequestOp::kConnect);
  EXPECT_EQ(out[1].event.status, 0);
  EXPECT_EQ(out[1].event.request_id, connect.request_id);
  EXPECT_EQ(out[1].event.socket_id, 9u);
  EXPECT_EQ(out[1].event.connection_id, 1u);
  EXPECT_TRUE(same(out[1].event.local, client));
  EXPECT_TRUE(same(out[1].event.peer, ipv4_loopback(8080)));

  EXPECT_EQ(out[2].notice, EngineNotice::kDeliver);
  EXPECT_EQ(out[2].destination, 1u);
  EXPECT_EQ(out[2].event.type, EventType::kIncoming);
  EXPECT_EQ(out[2].event.socket_id, 5u);
  EXPECT_EQ(out[2].event.connection_id, 1u);
  EXPECT_TRUE(same(out[2].event.local, ipv4_loopback(8080)));
  EXPECT_TRUE(same(out[2].event.peer, client));

  const EngineCounters counters = engine->counters();
  EXPECT_EQ(counters.connections_open, 1u);
  EXPECT_EQ(counters.connections_total, 1u);
  EXPECT_EQ(counters.requests, 2u);
  EXPECT_EQ(counters.rejected_requests, 0u);
}

TEST_F(SoftwareEngineTest, EventAddressesCarryNoFlagsOfTheRequester) {
  engine->add_process(1, kNetns);
  listen_ok(1, 5, ipv4_any(8080));
  InetAddress destination = ipv4_loopback(8080);
  destination.reserved = 0xff;
  InetAddress source = ipv4(127, 0, 0, 1, 40000);
  source.reserved = 0xff;
  const auto out = submit(1, connect_request(9, destination, 0, source));
  ASSERT_EQ(out.size(), 3u);
  for (const EngineOutput& output : out) {
    EXPECT_EQ(output.event.local.reserved, 0);
    EXPECT_EQ(output.event.peer.reserved, 0);
  }
}

TEST_F(SoftwareEngineTest, ConnectionIdsIncreaseAndEphemeralPortsRotate) {
  engine->add_process(1, kNetns);
  listen_ok(1, 5, ipv4_any(8080));
  for (uint64_t expected = 1; expected <= 3; ++expected) {
    const auto out = submit(1, connect_request(9, ipv4_loopback(8080)));
    ASSERT_EQ(out.size(), 3u);
    EXPECT_EQ(out[0].event.connection_id, expected);
    EXPECT_EQ(out[1].event.local.port, 32768 + expected - 1);
  }
}

TEST_F(SoftwareEngineTest, ExplicitSourceAddressIsTheClientAddress) {
  engine->add_process(1, kNetns);
  listen_ok(1, 5, ipv4_any(8080));
  const InetAddress source = ipv4(127, 0, 0, 2, 40000);
  const auto out = submit(1, connect_request(9, ipv4_loopback(8080), 0, source));
  ASSERT_EQ(out.size(), 3u);
  EXPECT_TRUE(same(out[1].event.local, source));
  EXPECT_TRUE(same(out[2].event.peer, source));
}

TEST_F(SoftwareEngineTest, SourceAddressWithoutPortGetsAnEphemeralPort) {
  engine->add_process(1, kNetns);
  listen_ok(1, 5, ipv4_any(8080));
  const auto out = submit(1, connect_request(9, ipv4_loopback(8080), 0, ipv4(127, 0, 0, 9, 0)));
  ASSERT_EQ(out.size(), 3u);
  EXPECT_TRUE(same(out[1].event.local, ipv4(127, 0, 0, 9, 32768)));
}

TEST_F(SoftwareEngineTest, ConnectToUnspecifiedAddressReachesLoopback) {
  engine->add_process(1, kNetns);
  listen_ok(1, 5, ipv4_any(8080));
  const auto out = submit(1, connect_request(9, ipv4_any(8080)));
  ASSERT_EQ(out.size(), 3u);
  EXPECT_TRUE(same(out[1].event.peer, ipv4_loopback(8080)));
}

TEST_F(SoftwareEngineTest, ListenersOnAPortAreChosenRoundRobin) {
  for (uint32_t process = 1; process <= 4; ++process) engine->add_process(process, kNetns);
  for (uint32_t server = 1; server <= 3; ++server) listen_ok(server, 5, ipv4_any(8080));
  std::vector<uint32_t> chosen;
  for (int i = 0; i < 6; ++i) chosen.push_back(connect_to(4, ipv4_loopback(8080)));
  EXPECT_EQ(chosen, (std::vector<uint32_t>{1, 2, 3, 1, 2, 3}));
}

TEST_F(SoftwareEngineTest, RoundRobinSkipsListenersThatDoNotAcceptTheDestination) {
  for (uint32_t process = 1; process <= 4; ++process) engine->add_process(process, kNetns);
  listen_ok(1, 5, ipv4_any(8080));
  listen_ok(2, 5, ipv6_any(8080), kRequestV6Only);  // never takes IPv4
  listen_ok(3, 5, ipv6_any(8080));
  std::vector<uint32_t> chosen;
  for (int i = 0; i < 4; ++i) chosen.push_back(connect_to(4, ipv4_loopback(8080)));
  EXPECT_EQ(chosen, (std::vector<uint32_t>{1, 3, 1, 3}));
}

TEST_F(SoftwareEngineTest, V6OnlyListenerRefusesIpv4) {
  engine->add_process(1, kNetns);
  listen_ok(1, 5, ipv6_any(8080), kRequestV6Only);
  EXPECT_EQ(connect_to(1, ipv4_loopback(8080)), 0u);
  EXPECT_EQ(connect_to(1, ipv6_loopback(8080)), 1u);
}

TEST_F(SoftwareEngineTest, DualStackListenerSeesIpv4PeersAsMappedIpv6) {
  engine->add_process(1, kNetns);
  listen_ok(1, 5, ipv6_any(8080));
  const auto out = submit(1, connect_request(9, ipv4_loopback(8080)));
  ASSERT_EQ(out.size(), 3u);
  EXPECT_EQ(out[1].event.local.family, AF_INET);  // the client's IPv4 socket
  EXPECT_EQ(out[1].event.peer.family, AF_INET);
  EXPECT_EQ(out[2].event.local.family, AF_INET6);  // the accepted IPv6 socket
  EXPECT_EQ(out[2].event.peer.family, AF_INET6);
  EXPECT_EQ(out[2].event.peer.bytes[12], 127);
}

TEST_F(SoftwareEngineTest, Ipv4WildcardRefusesIpv6) {
  engine->add_process(1, kNetns);
  listen_ok(1, 5, ipv4_any(8080));
  EXPECT_EQ(connect_to(1, ipv6_loopback(8080)), 0u);
}

TEST_F(SoftwareEngineTest, SpecificAddressListenerTakesOnlyThatAddress) {
  engine->add_process(1, kNetns);
  listen_ok(1, 5, ipv4(10, 0, 0, 5, 8080));
  EXPECT_EQ(connect_to(1, ipv4_loopback(8080)), 0u);
  EXPECT_EQ(connect_to(1, ipv4(10, 0, 0, 6, 8080)), 0u);
  // Its own bound address proves the destination is local.
  EXPECT_EQ(connect_to(1, ipv4(10, 0, 0, 5, 8080)), 1u);
}

TEST_F(SoftwareEngineTest, WildcardListenerNeedsALocalDestination) {
  engine->add_process(1, kNetns);
  listen_ok(1, 5, ipv4_any(8080));
  EXPECT_EQ(connect_to(1, ipv4(10, 0, 0, 5, 8080)), 0u);
  EXPECT_EQ(connect_to(1, ipv4(127, 1, 2, 3, 8080)), 1u);
  EXPECT_EQ(connect_to(1, ipv4(10, 0, 0, 5, 8080), kRequestDestinationLocal), 1u);
}

TEST_F(SoftwareEngineTest, ListenersInAnotherNetnsAreInvisible) {
  engine->add_process(1, kNetns);
  engine->add_process(2, kOtherNetns);
  listen_ok(1, 5, ipv4_any(8080));
  EXPECT_EQ(connect_to(2, ipv4_loopback(8080)), 0u);
  EXPECT_EQ(connect_to(1, ipv4_loopback(8080)), 1u);
}

// Two attached containers on one bridge: 10.0.0.2 (kNetns) and 10.0.0.3 (kOtherNetns).
class CrossContainerTest : public SoftwareEngineTest {
 protected:
  void SetUp() override {
    engine->add_process(1, kNetns);
    engine->add_process(2, kOtherNetns);
    ASSERT_TRUE(engine->add_container_address(kNetns, ipv4(10, 0, 0, 2, 0)));
    ASSERT_TRUE(engine->add_container_address(kNetns, ipv6({0xfd, 0, 0, 0, 0, 0, 0, 2}, 0)));
    ASSERT_TRUE(engine->add_container_address(kOtherNetns, ipv4(10, 0, 0, 3, 0)));
    listen_ok(2, 5, ipv6_any(6379));
  }
};

TEST_F(CrossContainerTest, ConnectToAnotherContainersAddressReachesItsListener) {
  const auto out = submit(1, connect_request(77, ipv4(10, 0, 0, 3, 6379)));
  ASSERT_EQ(out.size(), 3u);
  EXPECT_EQ(out[0].peer_process, 2u);
  // Each side sees the container addresses, as over the bridge.
  const Event& reply = out[1].event;
  EXPECT_EQ(reply.status, 0);
  EXPECT_TRUE(same(reply.peer, ipv4(10, 0, 0, 3, 6379)));
  EXPECT_TRUE(same(reply.local, ipv4(10, 0, 0, 2, reply.local.port)));
  EXPECT_GE(reply.local.port, kEphemeralPortFirst);
  const Event& incoming = out[2].event;
  EXPECT_EQ(incoming.local.family, AF_INET6);
  EXPECT_EQ(std::memcmp(incoming.local.bytes, reply.peer.bytes, 16), 0);
  EXPECT_EQ(std::memcmp(incoming.peer.bytes, reply.local.bytes, 16), 0);
  EXPECT_EQ(incoming.peer.port, reply.local.port);
}

TEST_F(CrossContainerTest, LoopbackAndUnknownAddressesStayInTheNamespace) {
  EXPECT_EQ(connect_to(1, ipv4_loopback(6379)), 0u);
  EXPECT_EQ(connect_to(1, ipv4(10, 0, 0, 4, 6379)), 0u);
  EXPECT_EQ(connect_to(2, ipv4(10, 0, 0, 3, 6379), kRequestDestinationLocal), 2u);
}

TEST_F(CrossContainerTest, AClientWithoutAnAddressOfTheFamilyGoesToTheKernel) {
  engine->remove_container(kNetns);
  EXPECT_EQ(connect_to(1, ipv4(10, 0, 0, 3, 6379)), 0u);
  ASSERT_TRUE(engine->add_container_address(kNetns, ipv6({0xfd, 0, 0, 0, 0, 0, 0, 2}, 0)));
  EXPECT_EQ(connect_to(1, ipv4(10, 0, 0, 3, 6379)), 0u);
  ASSERT_TRUE(engine->add_container_address(kNetns, ipv4(10, 0, 0, 2, 0)));
  EXPECT_EQ(connect_to(1, ipv4(10, 0, 0, 3, 6379)), 2u);
}

TEST_F(CrossContainerTest, DetachedContainerIsNoLongerReached) {
  engine->remove_container(kOtherNetns);
  EXPECT_EQ(connect_to(1, ipv4(10, 0, 0, 3, 6379)), 0u);
  EXPECT_EQ(engine->counters().container_addresses, 2u);
}

TEST_F(CrossContainerTest, DenyRuleRefusesWithThePolicyFlagUntilAllowed) {
  ASSERT_TRUE(engine->deny_connections(kNetns, kOtherNetns, 6379));
  ASSERT_TRUE(engine->deny_connections(kNetns, kOtherNetns, 6379));  // once is enough
  EXPECT_EQ(engine->counters().policy_rules, 1u);
  auto out = submit(1, connect_request(77, ipv4(10, 0, 0, 3, 6379)));
  ASSERT_EQ(reply_status(out, 1), -ECONNREFUSED);
  EXPECT_EQ(out[0].event.local.reserved, kEventPolicyDenied);
  EXPECT_EQ(engine->counters().policy_denials, 1u);
  // A rule has a direction and a port.
  listen_ok(1, 6, ipv4_any(6379));
  EXPECT_EQ(connect_to(2, ipv4(10, 0, 0, 2, 6379)), 1u);
  listen_ok(2, 7, ipv4_any(80));
  EXPECT_EQ(connect_to(1, ipv4(10, 0, 0, 3, 80)), 2u);
  // Port 0 denies every port.
  ASSERT_TRUE(engine->deny_connections(kNetns, kOtherNetns, 0));
  out = submit(1, connect_request(77, ipv4(10, 0, 0, 3, 80)));
  ASSERT_EQ(reply_status(out, 1), -ECONNREFUSED);
  EXPECT_EQ(out[0].event.local.reserved, kEventPolicyDenied);
  engine->allow_connections(kNetns, kOtherNetns, 0);
  engine->allow_connections(kNetns, kOtherNetns, 6379);
  EXPECT_EQ(engine->counters().policy_rules, 0u);
  EXPECT_EQ(connect_to(1, ipv4(10, 0, 0, 3, 6379)), 2u);
}

TEST_F(CrossContainerTest, AnAddressAddedAgainMovesToItsNewNamespace) {
  constexpr uint64_t kThirdNetns = 4026532100;
  engine->add_process(3, kThirdNetns);
  ASSERT_TRUE(engine->add_container_address(kThirdNetns, ipv4(10, 0, 0, 3, 0)));
  listen_ok(3, 9, ipv4_any(6379));
  EXPECT_EQ(connect_to(1, ipv4(10, 0, 0, 3, 6379)), 3u);
  EXPECT_EQ(engine->counters().container_addresses, 3u);
}

TEST_F(CrossContainerTest, TablesHaveLimits) {
  SoftwareEngineLimits limits;
  limits.max_container_addresses = 1;
  limits.max_policy_rules = 1;
  engine = make_software_engine(limits);
  EXPECT_TRUE(engine->add_container_address(kNetns, ipv4(10, 0, 0, 2, 0)));
  EXPECT_FALSE(engine->add_container_address(kOtherNetns, ipv4(10, 0, 0, 3, 0)));
  EXPECT_TRUE(engine->deny_connections(kNetns, kOtherNetns, 1));
  EXPECT_FALSE(engine->deny_connections(kNetns, kOtherNetns, 2));
}

TEST_F(SoftwareEngineTest, WrongPortIsRefused) {
  engine->add_process(1, kNetns);
  listen_ok(1, 5, ipv4_any(8080));
  EXPECT_EQ(connect_to(1, ipv4_loopback(8081)), 0u);
  EXPECT_EQ(engine->counters().rejected_requests, 1u);
}

TEST_F(SoftwareEngineTest, UnlistenRemovesTheListener) {
  engine->add_process(1, kNetns);
  listen_ok(1, 5, ipv4_any(8080));
  Request unlisten = request(RequestOp::kUnlisten);
  unlisten.socket_id = 5;
  EXPECT_EQ(reply_status(submit(1, unlisten), 1), 0);
  EXPECT_EQ(connect_to(1, ipv4_loopback(8080)), 0u);
  EXPECT_EQ(engine->counters().listeners, 0u);
  unlisten.request_id = ++last_request_id;
  EXPECT_EQ(reply_status(submit(1, unlisten), 1), -EBADF);
}

TEST_F(SoftwareEngineTest, UnlistenOfAnotherProcessesSocketIsBadFd) {
  engine->add_process(1, kNetns);
  engine->add_process(2, kNetns);
  listen_ok(1, 5, ipv4_any(8080));
  Request unlisten = request(RequestOp::kUnlisten);
  unlisten.socket_id = 5;
  EXPECT_EQ(reply_status(submit(2, unlisten), 2), -EBADF);
  EXPECT_EQ(connect_to(2, ipv4_loopback(8080)), 1u);
}

TEST_F(SoftwareEngineTest, ConnectionIsReleasedWhenBothEndsClose) {
  engine->add_process(1, kNetns);
  engine->add_process(2, kNetns);
  listen_ok(1, 5, ipv4_any(8080));
  uint64_t connection_id = 0;
  ASSERT_EQ(connect_to(2, ipv4_loopback(8080), 0, &connection_id), 1u);

  EXPECT_EQ(reply_status(submit(2, close_request(connection_id)), 2), 0);
  EXPECT_EQ(engine->counters().connections_open, 1u);

  const auto out = submit(1, close_request(connection_id));
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(out[0].notice, EngineNotice::kDeliver);
  EXPECT_EQ(out[0].destination, 1u);
  EXPECT_EQ(out[0].event.status, 0);
  EXPECT_EQ(out[0].event.connection_id, connection_id);
  EXPECT_EQ(out[1].notice, EngineNotice::kConnectionReleased);
  EXPECT_EQ(out[1].destination, kMonitorDestination);
  EXPECT_EQ(out[1].event.connection_id, connection_id);
  EXPECT_EQ(engine->counters().connections_open, 0u);
  EXPECT_EQ(engine->counters().connections_total, 1u);
}

TEST_F(SoftwareEngineTest, DoubleCloseAndStrangersAreBadFd) {
  engine->add_process(1, kNetns);
  engine->add_process(2, kNetns);
  engine->add_process(3, kNetns);
  listen_ok(1, 5, ipv4_any(8080));
  uint64_t connection_id = 0;
  ASSERT_EQ(connect_to(2, ipv4_loopback(8080), 0, &connection_id), 1u);
  EXPECT_EQ(reply_status(submit(3, close_request(connection_id)), 3), -EBADF);
  EXPECT_EQ(reply_status(submit(2, close_request(connection_id)), 2), 0);
  EXPECT_EQ(reply_status(submit(2, close_request(connection_id)), 2), -EBADF);
  EXPECT_EQ(reply_status(submit(2, close_request(12345)), 2), -EBADF);
  EXPECT_EQ(reply_status(submit(2, close_request(0)), 2), -EBADF);
}

TEST_F(SoftwareEngineTest, ProcessConnectedToItselfClosesBothEnds) {
  engine->add_process(1, kNetns);
  listen_ok(1, 5, ipv4_any(8080));
  uint64_t connection_id = 0;
  ASSERT_EQ(connect_to(1, ipv4_loopback(8080), 0, &connection_id), 1u);
  EXPECT_EQ(submit(1, close_request(connection_id)).size(), 1u);
  const auto out = submit(1, close_request(connection_id));
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(out[1].notice, EngineNotice::kConnectionReleased);
  EXPECT_EQ(reply_status(submit(1, close_request(connection_id)), 1), -EBADF);
}

TEST_F(SoftwareEngineTest, ListenerTableFull) {
  engine = make_software_engine(SoftwareEngineLimits{.max_listeners = 2, .max_connections = 8});
  engine->add_process(1, kNetns);
  listen_ok(1, 1, ipv4_any(8080));
  listen_ok(1, 2, ipv4_any(8081));
  EXPECT_EQ(reply_status(submit(1, listen_request(3, ipv4_any(8082))), 1), -ENOBUFS);
  Request unlisten = request(RequestOp::kUnlisten);
  unlisten.socket_id = 1;
  EXPECT_EQ(reply_status(submit(1, unlisten), 1), 0);
  listen_ok(1, 3, ipv4_any(8082));
}

TEST_F(SoftwareEngineTest, ConnectionTableFull) {
  engine = make_software_engine(SoftwareEngineLimits{.max_listeners = 8, .max_connections = 2});
  engine->add_process(1, kNetns);
  listen_ok(1, 5, ipv4_any(8080));
  uint64_t first = 0;
  ASSERT_EQ(connect_to(1, ipv4_loopback(8080), 0, &first), 1u);
  ASSERT_EQ(connect_to(1, ipv4_loopback(8080)), 1u);
  EXPECT_EQ(reply_status(submit(1, connect_request(9, ipv4_loopback(8080))), 1), -ENOBUFS);
  // A half-closed connection still occupies its entry.
  submit(1, close_request(first));
  EXPECT_EQ(reply_status(submit(1, connect_request(9, ipv4_loopback(8080))), 1), -ENOBUFS);
  submit(1, close_request(first));
  EXPECT_EQ(connect_to(1, ipv4_loopback(8080)), 1u);
}

TEST_F(SoftwareEngineTest, RemovedProcessAbandonsItsEndsAndDropsItsListeners) {
  engine->add_process(1, kNetns);  // server, dies
  engine->add_process(2, kNetns);
  listen_ok(1, 5, ipv4_any(8080));
  uint64_t open_connection = 0;
  uint64_t half_closed = 0;
  uint64_t closed_by_server = 0;
  ASSERT_EQ(connect_to(2, ipv4_loopback(8080), 0, &open_connection), 1u);
  ASSERT_EQ(connect_to(2, ipv4_loopback(8080), 0, &half_closed), 1u);
  ASSERT_EQ(connect_to(2, ipv4_loopback(8080), 0, &closed_by_server), 1u);
  submit(2, close_request(half_closed));
  submit(1, close_request(closed_by_server));

  std::vector<EngineOutput> out;
  engine->remove_process(1, out);
  int abandoned_open = 0, abandoned_half = 0, released_half = 0, other = 0;
  for (const EngineOutput& output : out) {
    const uint64_t id = output.event.connection_id;
    if (output.notice == EngineNotice::kEndpointAbandoned && output.destination == 1 &&
        id == open_connection) {
      ++abandoned_open;
    } else if (output.notice == EngineNotice::kEndpointAbandoned && output.destination == 1 &&
               id == half_closed) {
      ++abandoned_half;
    } else if (output.notice == EngineNotice::kConnectionReleased && id == half_closed) {
      ++released_half;
    } else {
      ++other;
    }
  }
  EXPECT_EQ(abandoned_open, 1);
  EXPECT_EQ(abandoned_half, 1);
  EXPECT_EQ(released_half, 1);
  EXPECT_EQ(other, 0);
  // Abandonment comes before release.
  ASSERT_FALSE(out.empty());
  EXPECT_NE(out.front().notice, EngineNotice::kConnectionReleased);

  EngineCounters counters = engine->counters();
  EXPECT_EQ(counters.processes, 1u);
  EXPECT_EQ(counters.listeners, 0u);
  EXPECT_EQ(counters.connections_open, 2u);
  EXPECT_EQ(connect_to(2, ipv4_loopback(8080)), 0u);

  // The survivor's close of the abandoned connection releases it.
  const auto closed = submit(2, close_request(open_connection));
  ASSERT_EQ(closed.size(), 2u);
  EXPECT_EQ(closed[1].notice, EngineNotice::kConnectionReleased);
  const auto last = submit(2, close_request(closed_by_server));
  ASSERT_EQ(last.size(), 2u);
  EXPECT_EQ(engine->counters().connections_open, 0u);

  // Removing twice, or an unknown process, changes nothing.
  out.clear();
  engine->remove_process(1, out);
  engine->remove_process(99, out);
  EXPECT_TRUE(out.empty());
}

TEST_F(SoftwareEngineTest, ProcessConnectedToItselfAbandonsBothEnds) {
  engine->add_process(1, kNetns);
  listen_ok(1, 5, ipv4_any(8080));
  uint64_t connection_id = 0;
  ASSERT_EQ(connect_to(1, ipv4_loopback(8080), 0, &connection_id), 1u);
  std::vector<EngineOutput> out;
  engine->remove_process(1, out);
  ASSERT_EQ(out.size(), 3u);
  EXPECT_EQ(out[0].notice, EngineNotice::kEndpointAbandoned);
  EXPECT_EQ(out[1].notice, EngineNotice::kEndpointAbandoned);
  EXPECT_EQ(out[2].notice, EngineNotice::kConnectionReleased);
  EXPECT_EQ(engine->counters().connections_open, 0u);
}

TEST_F(SoftwareEngineTest, GarbageOpIsAnError) {
  engine->add_process(1, kNetns);
  Request garbage{};
  std::memset(&garbage, 0xa5, sizeof garbage);
  garbage.op = static_cast<RequestOp>(0x7f);
  garbage.request_id = 4242;
  std::vector<EngineOutput> out;
  engine->submit(1, garbage, out);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].notice, EngineNotice::kDeliver);
  EXPECT_EQ(out[0].destination, 1u);
  EXPECT_EQ(out[0].event.type, EventType::kError);
  EXPECT_EQ(out[0].event.status, -EINVAL);
  EXPECT_EQ(out[0].event.request_id, 4242u);
  EXPECT_EQ(engine->counters().rejected_requests, 1u);
}

TEST_F(SoftwareEngineTest, MalformedAddressesAreErrors) {
  engine->add_process(1, kNetns);
  InetAddress bad_family = ipv4_any(8080);
  bad_family.family = AF_UNIX;
  InetAddress unmapped_ipv4{};
  unmapped_ipv4.family = AF_INET;
  unmapped_ipv4.port = 8080;
  unmapped_ipv4.bytes[0] = 127;
  for (const Request& r :
       {listen_request(1, bad_family), listen_request(2, unmapped_ipv4),
        listen_request(3, ipv4_any(0)), connect_request(4, bad_family),
        connect_request(5, ipv4_loopback(0)), connect_request(6, unmapped_ipv4)}) {
    const auto out = submit(1, r);
    ASSERT_EQ(out.size(), 1u);
    EXPECT_EQ(out[0].event.type, EventType::kError);
    EXPECT_EQ(out[0].event.status, -EINVAL);
  }
  EXPECT_EQ(engine->counters().listeners, 0u);
  EXPECT_EQ(engine->counters().requests, 6u);
  EXPECT_EQ(engine->counters().rejected_requests, 6u);
}

TEST_F(SoftwareEngineTest, RandomDescriptorsNeverBreakTheTables) {
  engine->add_process(1, kNetns);
  engine->add_process(2, kNetns);
  listen_ok(1, 5, ipv4_any(8080));
  uint32_t state = 12345;
  std::vector<EngineOutput> out;
  for (int i = 0; i < 20000; ++i) {
    Request r;
    auto* bytes = reinterpret_cast<unsigned char*>(&r);
    for (std::size_t b = 0; b < sizeof r; ++b) {
      state = state * 1664525u + 1013904223u;
      bytes[b] = static_cast<unsigned char>(state >> 24);
    }
    out.clear();
    engine->submit(2, r, out);
    std::size_t replies = 0;
    for (const EngineOutput& output : out) {
      if (output.notice == EngineNotice::kDeliver && output.destination == 2 &&
          output.event.type != EventType::kIncoming) {
        ++replies;
      }
    }
    ASSERT_EQ(replies, 1u);
  }
  EXPECT_EQ(connect_to(2, ipv4_loopback(8080)), 1u);
}

}  // namespace
}  // namespace netaccel
