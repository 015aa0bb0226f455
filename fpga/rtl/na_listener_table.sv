// The listener table and the port table beside it.
//
// Listeners are kept in insertion order (a removal shifts the later ones
// down), because connects rotate among the listeners of a port in the order
// they started listening. Each port (network namespace, port) in use has an
// entry holding its listener count and its round-robin cursor. Lookups are
// parallel compares; one command (insert, remove, set cursor) per cycle.
// Port lookups, the slowest logic here, are registered: they answer the
// cycle after their keys are set.
module na_listener_table #(
    parameter int ENTRIES = 32,
    localparam int IndexBits = $clog2(ENTRIES),
    localparam int CountBits = IndexBits + 1
) (
    input logic clk,
    input logic rst_n,

    // Listener (process, socket): the owner's key.
    input  logic [         31:0] owner_process,
    input  logic [         63:0] owner_socket,
    output logic                 owner_hit,
    output logic [IndexBits-1:0] owner_index,
    // The first listener of owner_process, whatever its socket.
    output logic                 process_hit,
    output logic [IndexBits-1:0] process_index,

    // Port (port_netns, port): its entry, count and cursor.
    input  logic [         63:0] port_netns,
    input  logic [         15:0] port,
    output logic                 port_hit,
    output logic [CountBits-1:0] port_count,
    output logic [CountBits-1:0] port_cursor,
    // Is (port_netns, probe_port) listened on? For ephemeral port choice.
    input  logic [         15:0] probe_port,
    output logic                 probe_port_used,

    // The listener at insertion position read_index.
    input  logic [IndexBits-1:0] read_index,
    output logic [         31:0] read_process,
    output logic [         63:0] read_socket,
    output logic [         63:0] read_netns,
    output logic [         15:0] read_port,
    output logic [        127:0] read_host,
    output logic [          7:0] read_family,
    output logic                 read_v6only,
    output logic                 read_ipv4_wildcard,
    output logic                 read_ipv6_wildcard,

    output logic [CountBits-1:0] count,

    // Commands. insert appends a listener for (owner_process, owner_socket)
    // on (port_netns, port); remove takes out the listener at remove_index.
    input logic           insert,
    input logic [  127:0] insert_host,
    input logic [    7:0] insert_family,
    input logic           insert_v6only,
    input logic           insert_ipv4_wildcard,
    input logic           insert_ipv6_wildcard,
    input logic           remove,
    input logic [IndexBits-1:0] remove_index,
    input logic           set_cursor,  // of the port (port_netns, port)
    input logic [CountBits-1:0] cursor
);
  logic [31:0] process_q[ENTRIES];
  logic [63:0] socket_q[ENTRIES];
  logic [63:0] netns_q[ENTRIES];
  logic [15:0] port_q[ENTRIES];
  logic [127:0] host_q[ENTRIES];
  logic [7:0] family_q[ENTRIES];
  logic v6only_q[ENTRIES];
  logic ipv4_wildcard_q[ENTRIES];
  logic ipv6_wildcard_q[ENTRIES];
  logic [IndexBits-1:0] slot_q[ENTRIES];  // its port entry

  // A vector, for the free-slot search; written through a decoder (a
  // variable bit index would cost yosys an adder on the critical path).
  logic [ENTRIES-1:0] port_valid_q;
  logic [63:0] port_netns_q[ENTRIES];
  logic [15:0] port_port_q[ENTRIES];
  logic [CountBits-1:0] port_count_q[ENTRIES];
  logic [CountBits-1:0] port_cursor_q[ENTRIES];

  logic [CountBits-1:0] count_q;
  assign count = count_q;

  // ---- lookups ----
  logic [ENTRIES-1:0] in_use, of_process, of_owner, of_port, port_probed;
  always_comb begin
    for (int i = 0; i < ENTRIES; i++) begin
      in_use[i] = CountBits'(i) < count_q;
      of_process[i] = in_use[i] && process_q[i] == owner_process;
      of_owner[i] = of_process[i] && socket_q[i] == owner_socket;
      of_port[i] = port_valid_q[i] && port_netns_q[i] == port_netns && port_port_q[i] == port;
      port_probed[i] = port_valid_q[i] && port_netns_q[i] == port_netns &&
                       port_port_q[i] == probe_port;
    end
  end
  logic port_found;
  na_first_set #(
      .SLOTS(ENTRIES),
      .AT_MOST_ONE(1)
  ) find_owner (
      .bits (of_owner),
      .found(owner_hit),
      .index(owner_index)
  );
  // The oldest listener of the process (any would do; this is deterministic).
  na_first_set #(
      .SLOTS(ENTRIES)
  ) find_process (
      .bits (of_process),
      .found(process_hit),
      .index(process_index)
  );
  logic [IndexBits-1:0] port_found_slot;
  na_first_set #(
      .SLOTS(ENTRIES),
      .AT_MOST_ONE(1)
  ) find_port (
      .bits (of_port),
      .found(port_found),
      .index(port_found_slot)
  );
  logic free_port_found;
  logic [IndexBits-1:0] free_port_slot;
  na_first_set #(
      .SLOTS(ENTRIES)
  ) find_free_port (
      .bits (~port_valid_q),
      .found(free_port_found),
      .index(free_port_slot)
  );
  logic [IndexBits-1:0] port_slot;
  always_ff @(posedge clk) begin
    port_hit <= port_found;
    port_slot <= port_found_slot;
    probe_port_used <= |port_probed;
  end
  assign port_count = port_count_q[port_slot];
  assign port_cursor = port_cursor_q[port_slot];

  assign read_process = process_q[read_index];
  assign read_socket = socket_q[read_index];
  assign read_netns = netns_q[read_index];
  assign read_port = port_q[read_index];
  assign read_host = host_q[read_index];
  assign read_family = family_q[read_index];
  assign read_v6only = v6only_q[read_index];
  assign read_ipv4_wildcard = ipv4_wildcard_q[read_index];
  assign read_ipv6_wildcard = ipv6_wildcard_q[read_index];

  // ---- commands ----
  logic [IndexBits-1:0] insert_slot;
  logic [IndexBits-1:0] removed_slot;
  logic [IndexBits-1:0] append_index;
  assign insert_slot = port_hit ? port_slot : free_port_slot;
  assign removed_slot = slot_q[remove_index];
  assign append_index = count_q[IndexBits-1:0];

  always_ff @(posedge clk) begin
    if (!rst_n) begin
      count_q <= '0;
      port_valid_q <= '0;
    end else if (insert && CountBits'(count_q) < CountBits'(ENTRIES) &&
                 (port_hit || free_port_found)) begin
      process_q[append_index] <= owner_process;
      socket_q[append_index] <= owner_socket;
      netns_q[append_index] <= port_netns;
      port_q[append_index] <= port;
      host_q[append_index] <= insert_host;
      family_q[append_index] <= insert_family;
      v6only_q[append_index] <= insert_v6only;
      ipv4_wildcard_q[append_index] <= insert_ipv4_wildcard;
      ipv6_wildcard_q[append_index] <= insert_ipv6_wildcard;
      slot_q[append_index] <= insert_slot;
      count_q <= count_q + 1;
      if (port_hit) begin
        port_count_q[insert_slot] <= port_count_q[insert_slot] + 1;
      end else begin
        for (int i = 0; i < ENTRIES; i++) if (IndexBits'(i) == insert_slot) port_valid_q[i] <= 1;
        port_netns_q[insert_slot] <= port_netns;
        port_port_q[insert_slot] <= port;
        port_count_q[insert_slot] <= 1;
        port_cursor_q[insert_slot] <= '0;
      end
    end else if (remove && CountBits'(remove_index) < count_q) begin
      for (int i = 0; i < ENTRIES - 1; i++) begin
        if (IndexBits'(i) >= remove_index) begin
          process_q[i] <= process_q[i+1];
          socket_q[i] <= socket_q[i+1];
          netns_q[i] <= netns_q[i+1];
          port_q[i] <= port_q[i+1];
          host_q[i] <= host_q[i+1];
          family_q[i] <= family_q[i+1];
          v6only_q[i] <= v6only_q[i+1];
          ipv4_wildcard_q[i] <= ipv4_wildcard_q[i+1];
          ipv6_wildcard_q[i] <= ipv6_wildcard_q[i+1];
          slot_q[i] <= slot_q[i+1];
        end
      end
      count_q <= count_q - 1;
      port_count_q[removed_slot] <= port_count_q[removed_slot] - 1;
      for (int i = 0; i < ENTRIES; i++) begin
        if (IndexBits'(i) == removed_slot && port_count_q[removed_slot] == 1) port_valid_q[i] <= 0;
      end
    end else if (set_cursor) begin
      port_cursor_q[port_slot] <= cursor;
    end
  end
endmodule
