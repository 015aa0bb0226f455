// The classifier on a container's interfaces through libxdp: one program of
// libxdp's dispatcher (xdp_multiprog), so that other XDP programs attached
// with libxdp (xdp-loader, xdp-filter, AF_XDP applications) keep running on
// the same interface, in whichever order they came, and taken out again
// leaving them in place.
//
// libxdp's dispatcher calls its programs as freplace (BPF_PROG_TYPE_EXT)
// extensions. A kernel that refuses those (its BPF policy can, as this
// project's CI kernel does) makes libxdp fall back to attaching the
// classifier alone, as before: the interface then runs no other program.
#include <dirent.h>
#include <fcntl.h>
#include <linux/if_link.h>
#include <net/if.h>
#include <sys/file.h>
#include <unistd.h>
#include <xdp/libxdp.h>
#include <xdp/prog_dispatcher.h>

#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <set>

#include "internal.h"
#include "netaccel/bpf_loader.h"

namespace netaccel::bpf {

namespace {

// The classifier's place in libxdp's dispatcher, which runs its programs by
// increasing priority and goes on to the next one only after the verdicts a
// program names as its chain-call actions.
//
// Priority 15: after packet filters (xdp-filter runs at 10: what an
// administrator's filter drops never reaches the user-space stack either),
// before libxdp's own AF_XDP program (xsk_def_prog, 20) and before programs
// loaded with libxdp's default (50). xsk_def_prog redirects every packet of a
// queue that has a socket in its own map; our stack creates its sockets with
// XSK_LIBXDP_FLAGS__INHIBIT_PROG_LOAD, so it never loads it, and an
// application that does load it on the same interface sees only what the
// classifier passed.
constexpr unsigned kClassifierRunPriority = 15;

// Only XDP_PASS goes on down the chain: what the classifier hands to the
// kernel (flows not steered, steered ports without a socket, frames it cannot
// parse) reaches the next programs as if it were not there. A redirect to the
// stack's AF_XDP socket and a drop by policy are final: a later program's
// verdict would override them, and the port belongs to the stack. The
// classifier never returns XDP_TX or XDP_ABORTED.
bool continues_chain(xdp_action verdict) {
  return verdict == XDP_PASS;
}
constexpr xdp_action kVerdicts[] = {XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX, XDP_REDIRECT};

struct MultiprogDeleter {
  void operator()(xdp_multiprog* dispatcher) const { xdp_multiprog__close(dispatcher); }
};
using Multiprog = std::unique_ptr<xdp_multiprog, MultiprogDeleter>;

// libxdp reports a failure either as NULL with errno set or as an error
// encoded in the pointer; neither may be used or closed. Returns the object,
// or null with `error` set (negative errno).
template <typename Object>
Object* libxdp_object(Object* returned, int& error) {
  const long encoded = libxdp_get_error(returned);
  if (returned != nullptr && encoded == 0) {
    error = 0;
    return returned;
  }
  error = encoded != 0 ? static_cast<int>(encoded) : -ENOENT;
  return nullptr;
}

// libxdp starts its lines with "libxdp: ".
int print_libxdp_log(libxdp_print_level level, const char* format, va_list arguments) {
  if (level != LIBXDP_WARN) return 0;
  return std::vfprintf(stderr, format, arguments);
}

// libbpf's and libxdp's warnings while libxdp attaches, held back: on a
// kernel that refuses freplace programs, libxdp's probe of its dispatcher
// fails loudly before libxdp falls back to attaching the classifier alone.
// They are shown when the attach fails for a reason we do not explain
// ourselves (a verifier log then says why).
class HeldWarnings {
 public:
  HeldWarnings()
      : previous_libbpf_(libbpf_set_print(hold<libbpf_print_level, LIBBPF_WARN>)),
        previous_libxdp_(libxdp_set_print(hold<libxdp_print_level, LIBXDP_WARN>)) {
    held().clear();
  }
  ~HeldWarnings() {
    libbpf_set_print(previous_libbpf_);
    libxdp_set_print(previous_libxdp_);
  }
  HeldWarnings(const HeldWarnings&) = delete;
  HeldWarnings& operator=(const HeldWarnings&) = delete;

  void show() const { std::fputs(held().c_str(), stderr); }

 private:
  static std::string& held() {
    static std::string text;
    return text;
  }
  template <typename Level, Level kWarning>
  static int hold(Level level, const char* format, va_list arguments) {
    if (level != kWarning) return 0;
    va_list measuring;
    va_copy(measuring, arguments);
    const int length = std::vsnprintf(nullptr, 0, format, measuring);
    va_end(measuring);
    if (length <= 0) return length;
    std::string text(static_cast<std::size_t>(length), '\0');
    std::vsnprintf(text.data(), text.size() + 1, format, arguments);
    held() += text;
    return length;
  }

  libbpf_print_fn_t previous_libbpf_;
  libxdp_print_fn_t previous_libxdp_;
};

// Where libxdp pins its dispatchers: the "xdp" directory of the BPF
// filesystem it uses (LIBXDP_BPFFS, else /sys/fs/bpf). The CLI never leaves
// the caller's mount namespace, so that is the host's BPF filesystem, the
// one netaccel's pins are in, and the dispatchers outlive the command.
std::string libxdp_directory() {
  const char* bpffs = secure_getenv(XDP_BPFFS_ENVVAR);
  return std::string(bpffs != nullptr && *bpffs != '\0' ? bpffs : kBpfFsRoot) + "/xdp";
}

// libxdp's lock (flock on its directory), held while the pins of its
// dispatchers are read or removed so that no libxdp user changes them
// meanwhile. libxdp must not be called while it is held: its own flock on
// another open of the directory would wait for ours.
class LibxdpLock {
 public:
  LibxdpLock() : fd_(open(libxdp_directory().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC)) {
    if (fd_ && flock(fd_.get(), LOCK_EX) != 0) fd_.reset();
  }
  // False when libxdp's directory is absent (then there is no dispatcher).
  explicit operator bool() const { return static_cast<bool>(fd_); }

 private:
  UniqueFd fd_;  // closing it releases the lock
};

// A dispatcher's directory: dispatch-<ifindex>-<dispatcher program id>, the
// ifindex being that of the network namespace it was attached in.
struct DispatcherPins {
  std::string directory;
  unsigned ifindex = 0;
  std::uint32_t id = 0;
};

std::vector<DispatcherPins> pinned_dispatchers() {
  std::vector<DispatcherPins> dispatchers;
  const std::string root = libxdp_directory();
  DIR* directory = opendir(root.c_str());
  if (directory == nullptr) return dispatchers;
  while (const dirent* entry = readdir(directory)) {
    unsigned ifindex = 0;
    std::uint32_t id = 0;
    if (std::sscanf(entry->d_name, "dispatch-%u-%u", &ifindex, &id) != 2) continue;
    if (std::string(entry->d_name) !=
        "dispatch-" + std::to_string(ifindex) + "-" + std::to_string(id)) {
      continue;
    }
    dispatchers.push_back({root + "/" + entry->d_name, ifindex, id});
  }
  closedir(directory);
  return dispatchers;
}

std::uint32_t program_id(int fd) {
  bpf_prog_info info{};
  __u32 length = sizeof info;
  return bpf_obj_get_info_by_fd(fd, &info, &length) == 0 ? info.id : 0;
}

// The programs of a dispatcher in run order: its slots prog0, prog1... each
// pinned as prog<N>-prog beside its link prog<N>-link.
std::vector<XdpChainEntry> dispatcher_programs(const DispatcherPins& dispatcher) {
  std::vector<XdpChainEntry> chain;
  for (unsigned slot = 0; slot < MAX_DISPATCHER_ACTIONS; ++slot) {
    const UniqueFd program(
        bpf_obj_get((dispatcher.directory + "/prog" + std::to_string(slot) + "-prog").c_str()));
    if (!program) break;
    bpf_prog_info info{};
    __u32 length = sizeof info;
    if (bpf_obj_get_info_by_fd(program.get(), &info, &length) != 0) break;
    chain.push_back({info.name, info.id, 0, 0, false});
  }
  return chain;
}

// Fills the run priorities and chain-call actions from the dispatcher's
// configuration (its read-only data map, struct xdp_dispatcher_config);
// returns whether it is loaded with frags.
bool read_dispatcher_config(std::uint32_t dispatcher_id, std::vector<XdpChainEntry>& chain) {
  const UniqueFd dispatcher(bpf_prog_get_fd_by_id(dispatcher_id));
  if (!dispatcher) return false;
  __u32 map_id = 0;
  bpf_prog_info info{};
  info.nr_map_ids = 1;
  info.map_ids = reinterpret_cast<__u64>(&map_id);
  __u32 length = sizeof info;
  if (bpf_obj_get_info_by_fd(dispatcher.get(), &info, &length) != 0 || info.nr_map_ids != 1) {
    return false;
  }
  const UniqueFd map(bpf_map_get_fd_by_id(map_id));
  bpf_map_info map_info{};
  length = sizeof map_info;
  if (!map || bpf_obj_get_info_by_fd(map.get(), &map_info, &length) != 0 ||
      map_info.value_size != sizeof(xdp_dispatcher_config)) {
    return false;
  }
  xdp_dispatcher_config config{};
  const __u32 zero = 0;
  if (bpf_map_lookup_elem(map.get(), &zero, &config) != 0 || config.magic != XDP_DISPATCHER_MAGIC) {
    return false;
  }
  for (std::size_t slot = 0; slot < chain.size() && slot < config.num_progs_enabled; ++slot) {
    chain[slot].priority = config.run_prios[slot];
    chain[slot].chain_actions = config.chain_call_actions[slot] & ~(1U << XDP_DISPATCHER_RETVAL);
  }
  return config.is_xdp_frags != 0;
}

bool runs(const std::vector<XdpChainEntry>& chain, std::uint32_t program) {
  for (const XdpChainEntry& entry : chain) {
    if (entry.id == program) return true;
  }
  return false;
}

// Whether libxdp's view of an interface's XDP includes the program: in its
// dispatcher, or attached alone.
bool runs(xdp_multiprog* attached, std::uint32_t program) {
  if (xdp_multiprog__is_legacy(attached)) {
    return xdp_program__id(xdp_multiprog__main_prog(attached)) == program;
  }
  for (xdp_program* entry = xdp_multiprog__next_prog(nullptr, attached); entry != nullptr;
       entry = xdp_multiprog__next_prog(entry, attached)) {
    if (xdp_program__id(entry) == program) return true;
  }
  return false;
}

struct InterfaceXdp {
  std::uint32_t program = 0;  // attached to the interface, 0 for none
  const char* mode = "";      // native, generic or offloaded
};

InterfaceXdp query_xdp(unsigned ifindex) {
  LIBBPF_OPTS(bpf_xdp_query_opts, query);
  if (bpf_xdp_query(static_cast<int>(ifindex), 0, &query) != 0) return {};
  switch (query.attach_mode) {
    case XDP_ATTACHED_DRV:
      return {query.prog_id, "native"};
    case XDP_ATTACHED_SKB:
      return {query.prog_id, "generic"};
    case XDP_ATTACHED_HW:
      return {query.prog_id, "offloaded"};
    case XDP_ATTACHED_MULTI:
      return {query.drv_prog_id != 0 ? query.drv_prog_id : query.skb_prog_id,
              query.drv_prog_id != 0 ? "native" : "generic"};
    default:
      return {};
  }
}

// The mode a new dispatcher must be attached in to replace the one there.
xdp_attach_mode current_mode(unsigned ifindex) {
  LIBBPF_OPTS(bpf_xdp_query_opts, query);
  if (bpf_xdp_query(static_cast<int>(ifindex), 0, &query) != 0) return XDP_MODE_UNSPEC;
  if (query.attach_mode == XDP_ATTACHED_SKB) return XDP_MODE_SKB;
  if (query.attach_mode == XDP_ATTACHED_DRV) return XDP_MODE_NATIVE;
  return XDP_MODE_UNSPEC;
}

// The interfaces of the current network namespace.
std::vector<ContainerInterface> interfaces_here() {
  std::vector<ContainerInterface> interfaces;
  struct if_nameindex* list = if_nameindex();
  if (list == nullptr) return interfaces;
  for (const struct if_nameindex* entry = list; entry->if_index != 0; ++entry) {
    interfaces.push_back({entry->if_name, entry->if_index});
  }
  if_freenameindex(list);
  return interfaces;
}

// Every XDP program attached in the current network namespace.
void collect_attached_programs(std::set<std::uint32_t>& programs) {
  for (const ContainerInterface& interface : interfaces_here()) {
    LIBBPF_OPTS(bpf_xdp_query_opts, query);
    if (bpf_xdp_query(static_cast<int>(interface.ifindex), 0, &query) != 0) continue;
    for (const __u32 id : {query.prog_id, query.drv_prog_id, query.skb_prog_id, query.hw_prog_id}) {
      if (id != 0) programs.insert(id);
    }
  }
}

std::string program_name(std::uint32_t id) {
  const UniqueFd program(bpf_prog_get_fd_by_id(id));
  bpf_prog_info info{};
  __u32 length = sizeof info;
  if (!program || bpf_obj_get_info_by_fd(program.get(), &info, &length) != 0) return "?";
  return info.name;
}

// Why libxdp would not attach: the interface runs a program outside its
// dispatcher (attached by ip-link, a BPF link, or libxdp's own fallback), or
// a dispatcher of another libxdp version, which libxdp leaves alone.
std::string occupied_message(const ContainerInterface& interface, int error) {
  const InterfaceXdp attached = query_xdp(interface.ifindex);
  const std::string prefix = "cannot attach XDP to " + interface.name + ": ";
  if (attached.program == 0) return prefix + error_text(-error);
  const std::string name = program_name(attached.program);
  const std::string which = "'" + name + "' (id " + std::to_string(attached.program) + ")";
  if (name == "xdp_dispatcher") {
    return prefix + "it runs libxdp dispatcher " + which +
           " of another libxdp version, which this one does not change; unload its programs "
           "first";
  }
  return prefix + "it runs XDP program " + which +
         " outside libxdp's dispatcher, and only the dispatcher runs several programs on one "
         "interface (the kernel must also allow freplace programs); detach that program first";
}

// Takes the classifier off every interface of the current network namespace
// that runs it, in a dispatcher (the others stay, in a new dispatcher) or
// alone. Failures are added to `failures`.
void detach_here(xdp_program* classifier, std::vector<std::string>& failures) {
  const std::uint32_t id = xdp_program__id(classifier);
  for (const ContainerInterface& interface : interfaces_here()) {
    const int ifindex = static_cast<int>(interface.ifindex);
    int error = 0;
    const Multiprog attached(libxdp_object(xdp_multiprog__get_from_ifindex(ifindex), error));
    if (!attached || !runs(attached.get(), id)) continue;
    error = xdp_program__detach(classifier, ifindex, xdp_multiprog__attach_mode(attached.get()), 0);
    if (error != 0) {
      failures.push_back("cannot detach XDP program " + std::to_string(id) + " from " +
                         interface.name + ": " + error_text(-error));
    }
  }
}

// Removes a dispatcher's pins: its programs' links and references, then the
// directory. Only for a dispatcher attached nowhere: the pins are what keeps
// its programs in it.
bool remove_dispatcher_pins(const std::string& directory) {
  if (DIR* pins = opendir(directory.c_str())) {
    std::vector<std::string> files;
    while (const dirent* entry = readdir(pins)) {
      if (entry->d_type != DT_DIR) files.push_back(directory + "/" + entry->d_name);
    }
    closedir(pins);
    for (const std::string& file : files) unlink(file.c_str());
  }
  return rmdir(directory.c_str()) == 0 || errno == ENOENT;
}

}  // namespace

void XdpProgramDeleter::operator()(xdp_program* program) const {
  xdp_program__close(program);
}

void route_libxdp_log() {
  libxdp_set_print(print_libxdp_log);
}

XdpProgram classifier_program(bpf_object* classifier, const char* name) {
  DECLARE_LIBXDP_OPTS(xdp_program_opts, options, .obj = classifier, .prog_name = name);
  int error = 0;
  XdpProgram program(libxdp_object(xdp_program__create(&options), error));
  if (!program) throw BpfError("libxdp cannot use the XDP classifier: " + error_text(-error));
  error = xdp_program__set_run_prio(program.get(), kClassifierRunPriority);
  for (const xdp_action verdict : kVerdicts) {
    if (error == 0) {
      error = xdp_program__set_chain_call_enabled(program.get(), verdict, continues_chain(verdict));
    }
  }
  // xdp.frags (multi-buffer) keeps GSO on the veth peer. libbpf sets the
  // load flag from the section name only at load time and only for an XDP
  // program; libxdp asks before loading, to load its dispatcher (the program
  // the interface runs) with frags when all of its programs have them, and it
  // loads the classifier itself as an extension without the flag.
  if (error == 0) error = xdp_program__set_xdp_frags_support(program.get(), true);
  if (error != 0) {
    throw BpfError("cannot set the XDP classifier's place in libxdp's dispatcher: " +
                   error_text(-error));
  }
  return program;
}

bool attach_classifier(xdp_program* classifier, const ContainerInterface& interface) {
  int error = 0;
  {
    const HeldWarnings warnings;
    error = xdp_program__attach(classifier, static_cast<int>(interface.ifindex),
                                current_mode(interface.ifindex), 0);
    // EBUSY and EEXIST: another program holds the interface, which we say better.
    if (error == -EBUSY || error == -EEXIST) throw BpfError(occupied_message(interface, error));
    if (error != 0) warnings.show();
  }
  if (error != 0) {
    throw BpfError("cannot attach XDP to " + interface.name +
                   " through libxdp: " + error_text(-error));
  }
  int lookup_error = 0;
  const Multiprog attached(libxdp_object(
      xdp_multiprog__get_from_ifindex(static_cast<int>(interface.ifindex)), lookup_error));
  return attached && !xdp_multiprog__is_legacy(attached.get());
}

void detach_classifier(const std::string& container, const netaccel_container_record& record) {
  const UniqueFd pinned(open_pin(container_pin(container, kXdpProgramPin)));
  if (!pinned) return;  // never loaded: nothing of it can be attached
  int error = 0;
  const XdpProgram classifier(libxdp_object(xdp_program__from_fd(pinned.get()), error));
  if (!classifier) {
    throw BpfError("cannot read the XDP classifier of '" + container + "': " + error_text(-error));
  }
  const std::uint32_t id = xdp_program__id(classifier.get());
  std::vector<std::string> failures;
  std::set<std::uint32_t> attached;
  collect_attached_programs(attached);
  // A namespace that cannot be found is taken as gone, with its interfaces.
  const std::string netns =
      find_netns_path(record.netns_inode, record.netns_device, record.netns_path);
  if (!netns.empty()) {
    try {
      NetnsScope inside(netns);
      detach_here(classifier.get(), failures);
      collect_attached_programs(attached);
    } catch (const BpfError&) {
      // Gone between finding and entering it.
    }
  }
  // What still runs the classifier now is a dispatcher of an interface that
  // is gone (with its namespace, or deleted): nothing calls it any more, and
  // its pins are all that keeps it and its programs loaded.
  if (const LibxdpLock lock; lock) {
    for (const DispatcherPins& dispatcher : pinned_dispatchers()) {
      if (!runs(dispatcher_programs(dispatcher), id)) continue;
      if (attached.count(dispatcher.id) != 0) {
        failures.push_back("libxdp dispatcher " + std::to_string(dispatcher.id) +
                           " still runs XDP program " + std::to_string(id) + " (" +
                           dispatcher.directory + ")");
      } else if (!remove_dispatcher_pins(dispatcher.directory)) {
        failures.push_back("cannot remove " + dispatcher.directory + ": " + error_text(errno));
      }
    }
  }
  if (!failures.empty()) {
    std::string message = "XDP of container '" + container + "' not fully detached:";
    for (const std::string& failure : failures) message += "\n  " + failure;
    throw BpfError(message);
  }
}

std::vector<XdpInterface> xdp_interfaces(const std::string& container,
                                         const netaccel_container_record& record) {
  std::vector<XdpInterface> interfaces;
  for (__u32 i = 0; i < record.interface_count && i < NETACCEL_MAX_INTERFACES; ++i) {
    XdpInterface interface;
    interface.name = record.ifname[i];
    interface.ifindex = record.ifindex[i];
    interfaces.push_back(interface);
  }
  const UniqueFd pinned(open_pin(container_pin(container, kXdpProgramPin)));
  const std::uint32_t ours = pinned ? program_id(pinned.get()) : 0;
  if (ours == 0) return interfaces;

  struct Dispatcher {
    DispatcherPins pins;
    std::vector<XdpChainEntry> chain;
    bool frags = false;
  };
  std::vector<Dispatcher> dispatchers;
  if (const LibxdpLock lock; lock) {
    for (const DispatcherPins& pins : pinned_dispatchers()) {
      std::vector<XdpChainEntry> chain = dispatcher_programs(pins);
      if (!runs(chain, ours)) continue;
      const bool frags = read_dispatcher_config(pins.id, chain);
      for (XdpChainEntry& entry : chain) entry.netaccel = entry.id == ours;
      dispatchers.push_back({pins, std::move(chain), frags});
    }
  }

  const std::string netns =
      find_netns_path(record.netns_inode, record.netns_device, record.netns_path);
  try {
    if (netns.empty()) throw BpfError("gone");
    NetnsScope inside(netns);
    for (XdpInterface& interface : interfaces) {
      interface.reachable = true;
      const InterfaceXdp attached = query_xdp(interface.ifindex);
      interface.attached_program = attached.program;
      interface.mode = attached.mode;
    }
  } catch (const BpfError&) {
    // The namespace is gone: what is pinned is all there is to show.
  }
  for (XdpInterface& interface : interfaces) {
    if (interface.reachable && interface.attached_program == ours) {
      interface.chain.push_back({program_name(ours), ours, 0, 0, true});
      continue;
    }
    for (const Dispatcher& dispatcher : dispatchers) {
      const bool this_one = interface.reachable ? dispatcher.pins.id == interface.attached_program
                                                : dispatcher.pins.ifindex == interface.ifindex;
      if (!this_one) continue;
      interface.dispatcher_id = dispatcher.pins.id;
      interface.dispatcher_pins = dispatcher.pins.directory;
      interface.frags = dispatcher.frags;
      interface.chain = dispatcher.chain;
    }
  }
  return interfaces;
}

}  // namespace netaccel::bpf
