// The sockmap short-circuit on real loopback TCP connections (IPv4, IPv6): the verifier
// accepts both programs, and sk_msg hands a message straight to the peer
// socket only when both ends are registered endpoints in the sockhash,
// counting what it redirected and what it passed. (sock_ops has no
// BPF_PROG_RUN; the container tests drive it from a real cgroup.)
#include <netinet/in.h>
#include <sys/socket.h>

#include <memory>
#include <string>

#include "bpf_test_support.h"
#include "netaccel/shm.h"
#include "netaccel_bpf.h"
#include "sockmap.skel.h"

namespace netaccel::testing {
namespace {

constexpr __u32 kContainerId = 7;
constexpr __u32 kFirstGeneration = 1;  // netaccel_endpoint.generation of an attach

// A connected loopback TCP pair, and each end's key as sock_ops builds it.
struct TcpPair {
  UniqueFd client;
  UniqueFd server;
  netaccel_socket_key client_key{};
  netaccel_socket_key server_key{};
};

// The loopback address of `family` as netaccel's maps store it.
void set_loopback(int family, __u8 (&address)[NETACCEL_ADDRESS_BYTES]) {
  std::memset(address, 0, sizeof address);
  if (family == AF_INET) {
    address[10] = address[11] = 0xff;  // IPv4-mapped
    address[12] = 127;
  }
  address[15] = 1;
}

// The port of a bound socket.
std::uint16_t local_port(int fd) {
  sockaddr_storage address{};
  socklen_t length = sizeof address;
  getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length);
  return ntohs(address.ss_family == AF_INET ? reinterpret_cast<sockaddr_in*>(&address)->sin_port
                                            : reinterpret_cast<sockaddr_in6*>(&address)->sin6_port);
}

TcpPair connect_pair(int family) {
  TcpPair pair;
  sockaddr_storage address{};
  socklen_t length = 0;
  if (family == AF_INET) {
    auto* ipv4 = reinterpret_cast<sockaddr_in*>(&address);
    ipv4->sin_family = AF_INET;
    ipv4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    length = sizeof *ipv4;
  } else {
    auto* ipv6 = reinterpret_cast<sockaddr_in6*>(&address);
    ipv6->sin6_family = AF_INET6;
    ipv6->sin6_addr = in6addr_loopback;
    length = sizeof *ipv6;
  }
  const UniqueFd listener(socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (bind(listener.get(), reinterpret_cast<sockaddr*>(&address), length) != 0 ||
      listen(listener.get(), 1) != 0 ||
      getsockname(listener.get(), reinterpret_cast<sockaddr*>(&address), &length) != 0) {
    ADD_FAILURE() << "listen: " << std::strerror(errno);
    return pair;
  }
  pair.client = UniqueFd(socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (connect(pair.client.get(), reinterpret_cast<sockaddr*>(&address), length) != 0) {
    ADD_FAILURE() << "connect: " << std::strerror(errno);
    return pair;
  }
  pair.server = UniqueFd(accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
  for (netaccel_socket_key* key : {&pair.client_key, &pair.server_key}) {
    set_loopback(family, key->local_address);
    set_loopback(family, key->remote_address);
  }
  pair.client_key.local_port = pair.server_key.remote_port = local_port(pair.client.get());
  pair.server_key.local_port = pair.client_key.remote_port = local_port(pair.server.get());
  return pair;
}

class SockmapTest : public BpfTest, public ::testing::WithParamInterface<int> {
 protected:
  void SetUp() override {
    NETACCEL_SKIP_WITHOUT_BPF_PRIVILEGES();
    BpfTest::SetUp();
    skeleton_.reset(sockmap::open_and_load());
    ASSERT_TRUE(skeleton_) << "the verifier rejected the sockmap programs: "
                           << std::strerror(errno);
    ASSERT_EQ(
        bpf_prog_attach(bpf_program__fd(skeleton_->progs.sk_msg_redirect),
                        bpf_map__fd(skeleton_->maps.established_sockets), BPF_SK_MSG_VERDICT, 0),
        0);
    const std::vector<netaccel_sockmap_counters> zeros(
        static_cast<std::size_t>(libbpf_num_possible_cpus()));
    ASSERT_EQ(bpf_map_update_elem(bpf_map__fd(skeleton_->maps.sockmap_stats), &kContainerId,
                                  zeros.data(), BPF_ANY),
              0);
  }

  // Registers the loopback address as attach does, for attachment
  // `generation` (each attach has a new one).
  void register_loopback(__u32 generation = kFirstGeneration) {
    __u8 loopback[NETACCEL_ADDRESS_BYTES];
    set_loopback(GetParam(), loopback);
    const netaccel_endpoint endpoint{kContainerId, generation};
    ASSERT_EQ(bpf_map_update_elem(bpf_map__fd(skeleton_->maps.local_endpoints), loopback, &endpoint,
                                  BPF_ANY),
              0);
  }

  void unregister_loopback() {
    __u8 loopback[NETACCEL_ADDRESS_BYTES];
    set_loopback(GetParam(), loopback);
    ASSERT_EQ(bpf_map_delete_elem(bpf_map__fd(skeleton_->maps.local_endpoints), loopback), 0);
  }

  // What sock_ops does on establishment, done from user space: the socket
  // with the generation of the attachment it was established under.
  void add_to_sockhash(int fd, const netaccel_socket_key& key,
                       __u32 generation = kFirstGeneration) {
    ASSERT_EQ(bpf_map_update_elem(bpf_map__fd(skeleton_->maps.socket_generations), &key,
                                  &generation, BPF_ANY),
              0);
    const __u64 value = static_cast<__u64>(fd);
    ASSERT_EQ(bpf_map_update_elem(bpf_map__fd(skeleton_->maps.established_sockets), &key, &value,
                                  BPF_ANY),
              0)
        << std::strerror(errno);
  }

  netaccel_sockmap_counters counters() {
    return per_cpu_sum<netaccel_sockmap_counters>(bpf_map__fd(skeleton_->maps.sockmap_stats),
                                                  &kContainerId);
  }

  static void send_and_expect(int from, int to, const std::string& message) {
    ASSERT_EQ(send(from, message.data(), message.size(), 0), static_cast<ssize_t>(message.size()));
    std::string received(message.size(), '\0');
    std::size_t got = 0;
    while (got < message.size()) {
      const ssize_t n = recv(to, received.data() + got, received.size() - got, 0);
      ASSERT_GT(n, 0) << std::strerror(errno);
      got += static_cast<std::size_t>(n);
    }
    EXPECT_EQ(received, message);
  }

  struct Destroy {
    void operator()(sockmap* skeleton) const { sockmap::destroy(skeleton); }
  };
  std::unique_ptr<sockmap, Destroy> skeleton_;
};

TEST_P(SockmapTest, BothEndsRegisteredAreShortCircuited) {
  register_loopback();
  TcpPair pair = connect_pair(GetParam());
  add_to_sockhash(pair.client.get(), pair.client_key);
  add_to_sockhash(pair.server.get(), pair.server_key);

  send_and_expect(pair.client.get(), pair.server.get(), "GET key\r\n");
  send_and_expect(pair.server.get(), pair.client.get(), std::string(100000, 'v'));
  const netaccel_sockmap_counters after = counters();
  EXPECT_GE(after.redirected_msgs, 2u);
  EXPECT_EQ(after.redirected_bytes, 9u + 100000u);
  EXPECT_EQ(after.passed_msgs, 0u);
}

TEST_P(SockmapTest, PeerMissingFromTheSockhashGoesThroughTcp) {
  register_loopback();
  TcpPair pair = connect_pair(GetParam());
  add_to_sockhash(pair.client.get(), pair.client_key);  // the server end is not there

  send_and_expect(pair.client.get(), pair.server.get(), "hello");
  const netaccel_sockmap_counters after = counters();
  EXPECT_EQ(after.redirected_msgs, 0u);
  EXPECT_EQ(after.passed_msgs, 1u);
  EXPECT_EQ(after.passed_bytes, 5u);
}

// Detach unregisters the endpoints first: sockets still in the sockhash go
// back to TCP, and bytes already redirected are read before the later ones.
TEST_P(SockmapTest, UnregisteredEndpointsStopTheShortCircuitInOrder) {
  register_loopback();
  TcpPair pair = connect_pair(GetParam());
  add_to_sockhash(pair.client.get(), pair.client_key);
  add_to_sockhash(pair.server.get(), pair.server_key);
  const std::string first = "redirected;";
  ASSERT_EQ(send(pair.client.get(), first.data(), first.size(), 0),
            static_cast<ssize_t>(first.size()));

  unregister_loopback();
  const std::string second = "over tcp";
  ASSERT_EQ(send(pair.client.get(), second.data(), second.size(), 0),
            static_cast<ssize_t>(second.size()));
  std::string received(first.size() + second.size(), '\0');
  std::size_t got = 0;
  while (got < received.size()) {
    const ssize_t n = recv(pair.server.get(), received.data() + got, received.size() - got, 0);
    ASSERT_GT(n, 0) << std::strerror(errno);
    got += static_cast<std::size_t>(n);
  }
  EXPECT_EQ(received, first + second);
  EXPECT_EQ(counters().redirected_msgs, 1u);
}

// The client's first message went over TCP (the server's socket was not in
// the sockhash yet, as when it sends before the server's end is
// established); unread, it must not be overtaken by later messages once the
// server's socket is there: the connection stays on TCP.
TEST_P(SockmapTest, ASocketThatSentOverTcpStaysThere) {
  register_loopback();
  TcpPair pair = connect_pair(GetParam());
  add_to_sockhash(pair.client.get(), pair.client_key);
  const std::string first(10000, 'f');
  ASSERT_EQ(send(pair.client.get(), first.data(), first.size(), 0),
            static_cast<ssize_t>(first.size()));
  add_to_sockhash(pair.server.get(), pair.server_key);
  const std::string second = "second";
  ASSERT_EQ(send(pair.client.get(), second.data(), second.size(), 0),
            static_cast<ssize_t>(second.size()));
  std::string received(first.size() + second.size(), '\0');
  std::size_t got = 0;
  while (got < received.size()) {
    const ssize_t n = recv(pair.server.get(), received.data() + got, received.size() - got, 0);
    ASSERT_GT(n, 0) << std::strerror(errno);
    got += static_cast<std::size_t>(n);
  }
  EXPECT_EQ(received, first + second);
  EXPECT_EQ(counters().redirected_msgs, 0u);
  EXPECT_EQ(counters().passed_msgs, 2u);
  // The connection as a whole stays on TCP: the reply too.
  send_and_expect(pair.server.get(), pair.client.get(), "reply");
  EXPECT_EQ(counters().redirected_msgs, 0u);
  EXPECT_EQ(counters().passed_msgs, 3u);
}

// Detached and attached again (a new generation) while the connection
// lives: the bytes it sent over TCP in between may still be unread, so its
// sockets must not be redirected again, or later bytes would overtake them.
TEST_P(SockmapTest, SocketsOfAnEarlierAttachmentStayOnTcp) {
  register_loopback(kFirstGeneration);
  TcpPair pair = connect_pair(GetParam());
  add_to_sockhash(pair.client.get(), pair.client_key, kFirstGeneration);
  add_to_sockhash(pair.server.get(), pair.server_key, kFirstGeneration);
  send_and_expect(pair.client.get(), pair.server.get(), "redirected");
  EXPECT_EQ(counters().redirected_msgs, 1u);

  unregister_loopback();
  const std::string over_tcp(10000, 't');
  ASSERT_EQ(send(pair.client.get(), over_tcp.data(), over_tcp.size(), 0),
            static_cast<ssize_t>(over_tcp.size()));
  register_loopback(kFirstGeneration + 1);  // attached again, TCP bytes still unread
  const std::string later = "later";
  ASSERT_EQ(send(pair.client.get(), later.data(), later.size(), 0),
            static_cast<ssize_t>(later.size()));
  std::string received(over_tcp.size() + later.size(), '\0');
  std::size_t got = 0;
  while (got < received.size()) {
    const ssize_t n = recv(pair.server.get(), received.data() + got, received.size() - got, 0);
    ASSERT_GT(n, 0) << std::strerror(errno);
    got += static_cast<std::size_t>(n);
  }
  EXPECT_EQ(received, over_tcp + later);
  EXPECT_EQ(counters().redirected_msgs, 1u);
  EXPECT_EQ(counters().passed_msgs, 1u);  // "later" (unregistered, the first counted nowhere)

  // A connection established under the new attachment is redirected.
  TcpPair fresh = connect_pair(GetParam());
  add_to_sockhash(fresh.client.get(), fresh.client_key, kFirstGeneration + 1);
  add_to_sockhash(fresh.server.get(), fresh.server_key, kFirstGeneration + 1);
  send_and_expect(fresh.client.get(), fresh.server.get(), "fresh");
  EXPECT_EQ(counters().redirected_msgs, 2u);
}

INSTANTIATE_TEST_SUITE_P(Families, SockmapTest, ::testing::Values(AF_INET, AF_INET6),
                         [](const ::testing::TestParamInfo<int>& info) {
                           return info.param == AF_INET ? "IPv4" : "IPv6";
                         });

}  // namespace
}  // namespace netaccel::testing
