// Addresses of attached containers, each with its network namespace. A
// namespace's first address of a family, in the order added, is its own
// address for the connects it makes to other containers; so beside the
// entries (which stay in their slots: no wide shifting) an order list holds
// the slots in the order they were added, and a removal shifts only that
// list. An address is in the table at most once; the host adds it again to
// move it to another namespace, in place. Lookups are parallel compares; one
// command (insert, remove) per cycle.
module na_container_table #(
    parameter int ENTRIES = 16,
    localparam int IndexBits = $clog2(ENTRIES),
    localparam int CountBits = IndexBits + 1
) (
    input logic clk,
    input logic rst_n,

    // Which namespace has the host address `host`?
    input  logic [127:0] host,
    output logic         host_hit,
    output logic [ 63:0] host_netns,

    // Has namespace `netns` an address (to remove), and which is its first
    // of the family `ipv4_mapped` says (its own address for a connect)? The
    // latter answers the cycle after its key is set: the search through the
    // order list and the wide multiplexers after it are the slowest logic.
    input  logic [ 63:0] netns,
    input  logic         ipv4_mapped,
    output logic         netns_hit,
    output logic         own_hit,
    output logic [127:0] own_host,

    output logic [CountBits-1:0] count,

    // insert: `host` now belongs to insert_netns (moved if known, added with
    // its family `ipv4_mapped` if there is room, else ignored).
    input logic        insert,
    input logic [63:0] insert_netns,
    // remove: the first address of `netns` goes.
    input logic        remove
);
  logic [ENTRIES-1:0] valid_q;
  logic [127:0] host_q[ENTRIES];
  logic [63:0] netns_q[ENTRIES];
  logic [ENTRIES-1:0] mapped_q;
  logic [IndexBits-1:0] order_q[ENTRIES];  // positions below count_q hold slots in use

  logic [CountBits-1:0] count_q;
  assign count = count_q;

  // ---- lookups: by slot, then by position in the order list ----
  logic [ENTRIES-1:0] of_host, of_netns, own, netns_at, own_at;
  always_comb begin
    for (int i = 0; i < ENTRIES; i++) begin
      of_host[i] = valid_q[i] && host_q[i] == host;
      of_netns[i] = valid_q[i] && netns_q[i] == netns;
      own[i] = of_netns[i] && mapped_q[i] == ipv4_mapped;
    end
    for (int p = 0; p < ENTRIES; p++) begin
      netns_at[p] = CountBits'(p) < count_q && of_netns[order_q[p]];
      own_at[p] = CountBits'(p) < count_q && own[order_q[p]];
    end
  end
  logic [ENTRIES-1:0] own_at_q;
  always_ff @(posedge clk) own_at_q <= own_at;
  logic [IndexBits-1:0] host_slot, netns_position, own_position;
  na_first_set #(
      .SLOTS(ENTRIES),
      .AT_MOST_ONE(1)
  ) find_host (
      .bits (of_host),
      .found(host_hit),
      .index(host_slot)
  );
  na_first_set #(
      .SLOTS(ENTRIES)
  ) find_netns (
      .bits (netns_at),
      .found(netns_hit),
      .index(netns_position)
  );
  na_first_set #(
      .SLOTS(ENTRIES)
  ) find_own (
      .bits (own_at_q),
      .found(own_hit),
      .index(own_position)
  );
  assign host_netns = netns_q[host_slot];
  assign own_host = host_q[order_q[own_position]];

  logic free_found;
  logic [IndexBits-1:0] free_slot;
  na_first_set #(
      .SLOTS(ENTRIES)
  ) find_free (
      .bits (~valid_q),
      .found(free_found),
      .index(free_slot)
  );

  // ---- commands ----
  logic move, append, drop;
  assign move = insert && host_hit;
  assign append = insert && !host_hit && free_found;
  assign drop = remove && netns_hit && !insert;
  logic [IndexBits-1:0] dropped_slot;
  assign dropped_slot = order_q[netns_position];

  // Entries are written in place, straight from the inputs.
  always_ff @(posedge clk) begin
    for (int i = 0; i < ENTRIES; i++) begin
      if (append && IndexBits'(i) == free_slot) begin
        host_q[i] <= host;
        mapped_q[i] <= ipv4_mapped;
      end
      if ((append && IndexBits'(i) == free_slot) || (move && IndexBits'(i) == host_slot)) begin
        netns_q[i] <= insert_netns;
      end
    end
  end

  always_ff @(posedge clk) begin
    if (!rst_n) begin
      valid_q <= '0;
      count_q <= '0;
    end else if (append) begin
      for (int i = 0; i < ENTRIES; i++) if (IndexBits'(i) == free_slot) valid_q[i] <= 1;
      order_q[count_q[IndexBits-1:0]] <= free_slot;
      count_q <= count_q + 1;
    end else if (drop) begin
      for (int i = 0; i < ENTRIES; i++) if (IndexBits'(i) == dropped_slot) valid_q[i] <= 0;
      for (int p = 0; p < ENTRIES - 1; p++) begin
        if (IndexBits'(p) >= netns_position) order_q[p] <= order_q[p+1];
      end
      count_q <= count_q - 1;
    end
  end
endmodule
