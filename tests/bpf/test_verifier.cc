// The kernel's verifier accepts every netaccel program: each object loads,
// and each program reports the instructions the verifier went through.
#include <gtest/gtest.h>

#include "bpf_test_support.h"
#include "sockmap.skel.h"
#include "xdp_classifier.skel.h"

namespace netaccel::testing {
namespace {

class VerifierTest : public BpfTest {
 protected:
  void SetUp() override {
    NETACCEL_SKIP_WITHOUT_BPF_PRIVILEGES();
    BpfTest::SetUp();
  }

  static void expect_verified(bpf_object* object) {
    bpf_program* program = nullptr;
    int programs = 0;
    bpf_object__for_each_program(program, object) {
      SCOPED_TRACE(bpf_program__name(program));
      ++programs;
      bpf_prog_info info{};
      __u32 length = sizeof info;
      ASSERT_EQ(bpf_obj_get_info_by_fd(bpf_program__fd(program), &info, &length), 0);
      EXPECT_GT(info.verified_insns, 0u);
    }
    EXPECT_GT(programs, 0);
  }
};

TEST_F(VerifierTest, AcceptsTheXdpClassifier) {
  xdp_classifier* skeleton = xdp_classifier::open_and_load();
  ASSERT_NE(skeleton, nullptr) << "rejected: " << std::strerror(errno) << " (log above)";
  expect_verified(skeleton->obj);
  xdp_classifier::destroy(skeleton);
}

TEST_F(VerifierTest, AcceptsTheSockmapPrograms) {
  sockmap* skeleton = sockmap::open_and_load();
  ASSERT_NE(skeleton, nullptr) << "rejected: " << std::strerror(errno) << " (log above)";
  expect_verified(skeleton->obj);
  sockmap::destroy(skeleton);
}

}  // namespace
}  // namespace netaccel::testing
