# DPDK packet port (src/dpdk_port.cc): built when libdpdk is installed.
#
# Defines netaccel_stack_dpdk and sets NETACCEL_HAVE_DPDK (ON or OFF), in the
# cache so that other directories (tests/) see it. The af_xdp driver itself
# is one of DPDK's plugins, which the EAL loads at run time from its driver
# directory; rte_vdev_init is in the vdev bus library, which libdpdk.pc
# leaves off the shared link line.
find_package(PkgConfig REQUIRED)
pkg_check_modules(LIBDPDK IMPORTED_TARGET libdpdk)
# GLOBAL: tests/stack/test_dpdk_port.cc uses libxdp too.
pkg_check_modules(NETACCEL_DPDK_LIBXDP IMPORTED_TARGET GLOBAL libxdp)
pkg_check_modules(NETACCEL_DPDK_LIBBPF IMPORTED_TARGET libbpf)
find_library(NETACCEL_RTE_BUS_VDEV rte_bus_vdev HINTS ${LIBDPDK_LIBRARY_DIRS})

if(LIBDPDK_FOUND AND NETACCEL_DPDK_LIBXDP_FOUND AND NETACCEL_DPDK_LIBBPF_FOUND
   AND NETACCEL_RTE_BUS_VDEV)
  set(NETACCEL_HAVE_DPDK ON CACHE INTERNAL "the DPDK packet port is built")
  add_library(netaccel_stack_dpdk STATIC ${CMAKE_CURRENT_LIST_DIR}/src/dpdk_port.cc)
  target_include_directories(netaccel_stack_dpdk PUBLIC ${CMAKE_CURRENT_LIST_DIR}/src)
  # Private: dpdk_port.h names nothing of DPDK, and DPDK's flags (-march,
  # -include rte_config.h) stay in this library.
  target_link_libraries(netaccel_stack_dpdk
    PRIVATE PkgConfig::LIBDPDK ${NETACCEL_RTE_BUS_VDEV} PkgConfig::NETACCEL_DPDK_LIBXDP
           PkgConfig::NETACCEL_DPDK_LIBBPF ${CMAKE_DL_LIBS})
  # dpdk_port.cc defines xsk_socket__create and bpf_xdp_detach so that the
  # af_xdp driver loads and detaches no XDP program of its own: the
  # executable must export them for the driver's calls to reach them.
  target_link_options(netaccel_stack_dpdk INTERFACE
    "LINKER:--export-dynamic-symbol=xsk_socket__create"
    "LINKER:--export-dynamic-symbol=bpf_xdp_detach")
else()
  set(NETACCEL_HAVE_DPDK OFF CACHE INTERNAL "the DPDK packet port is built")
  message(STATUS "netaccel: no DPDK packet port (libdpdk, libxdp, libbpf or rte_bus_vdev missing)")
endif()
