// The other XDP program of the coexistence test: what another team loads on
// a container's interface with xdp-loader. Counts the frames it sees and
// passes them all. Plain "xdp" (single buffer), as most programs are, and no
// run configuration: libxdp gives it the default priority (50) and chains
// on XDP_PASS.
// <linux/bpf.h> first: the libbpf header uses its types.
#include <linux/bpf.h>
// clang-format off
#include <bpf/bpf_helpers.h>
// clang-format on

struct {
  __uint(type, BPF_MAP_TYPE_ARRAY);
  __uint(max_entries, 1);
  __type(key, __u32);
  __type(value, __u64);
  __uint(pinning, LIBBPF_PIN_BY_NAME);  // under xdp-loader's --pin-path
} seen_frames SEC(".maps");

SEC("xdp")
int xdp_pass_count(struct xdp_md* ctx) {
  (void)ctx;  // every frame counts, whatever it holds
  const __u32 zero = 0;
  __u64* frames = bpf_map_lookup_elem(&seen_frames, &zero);
  if (frames) __sync_fetch_and_add(frames, 1);
  return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
