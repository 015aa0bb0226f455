// Addresses of attached containers, each with its network namespace. A
// namespace's first address of a family, in the order added, is its own
// address for the connects it makes to other containers. Entries stay in
// their slots; the order is a precedence matrix (added_before_q[t][s]: slot
// t's address was added before slot s's), set when a slot is filled, so the
// first of any set of entries is one AND-OR away and a removal touches no
// order at all. An address is in the table at most once; the host adds it
// again to move it to another namespace, in place (it keeps its rank).
// Lookups are parallel compares; one command (insert, remove) per cycle.
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

    // Namespace `netns`: its first address of the family `ipv4_mapped` says
    // (its own address for a connect) answers the cycle after the key is
    // set, the compares registered on the way.
    input  logic [ 63:0] netns,
    input  logic         ipv4_mapped,
    output logic         own_hit,
    output logic [127:0] own_host,

    output logic [CountBits-1:0] count,

    // insert: `host` now belongs to insert_netns (moved if known, added with
    // its family `ipv4_mapped` if there is room, else ignored).
    input logic        insert,
    input logic [63:0] insert_netns,
    // remove: every address of `netns` goes at once.
    input logic        remove
);
  logic [ENTRIES-1:0] valid_q;
  logic [127:0] host_q[ENTRIES];
  logic [63:0] netns_q[ENTRIES];
  logic [ENTRIES-1:0] mapped_q;
  logic [ENTRIES-1:0] added_before_q[ENTRIES];  // [t][s]: t before s

  logic [ENTRIES-1:0] of_host, of_netns, own;
  always_comb begin
    for (int i = 0; i < ENTRIES; i++) begin
      of_host[i] = valid_q[i] && host_q[i] == host;
      of_netns[i] = valid_q[i] && netns_q[i] == netns;
      own[i] = of_netns[i] && mapped_q[i] == ipv4_mapped;
    end
  end

  // An address is in the table once: the match itself selects its netns.
  logic [IndexBits-1:0] host_slot;
  na_first_set #(
      .SLOTS(ENTRIES),
      .AT_MOST_ONE(1)
  ) find_host (
      .bits (of_host),
      .found(host_hit),
      .index(host_slot)
  );
  always_comb begin
    host_netns = '0;
    for (int i = 0; i < ENTRIES; i++) host_netns = host_netns | ({64{of_host[i]}} & netns_q[i]);
  end

  // The first of the namespace's addresses of the family: the one that no
  // other matching address was added before.
  logic [ENTRIES-1:0] own_q, own_first;
  always_ff @(posedge clk) own_q <= own;
  always_comb begin
    for (int s = 0; s < ENTRIES; s++) begin
      own_first[s] = own_q[s];
      for (int t = 0; t < ENTRIES; t++) begin
        if (t != s && own_q[t] && added_before_q[t][s]) own_first[s] = 0;
      end
    end
    own_host = '0;
    for (int s = 0; s < ENTRIES; s++) own_host = own_host | ({128{own_first[s]}} & host_q[s]);
  end
  assign own_hit = |own_q;

  logic free_found;
  logic [IndexBits-1:0] free_slot;
  na_first_set #(
      .SLOTS(ENTRIES)
  ) find_free (
      .bits (~valid_q),
      .found(free_found),
      .index(free_slot)
  );
  assign count = CountBits'($countones(valid_q));

  // ---- commands ----
  logic move, append;
  assign move = insert && host_hit;
  assign append = insert && !host_hit && free_found;

  // Entries are written in place, straight from the inputs; the new one
  // comes after every address in the table.
  always_ff @(posedge clk) begin
    for (int i = 0; i < ENTRIES; i++) begin
      if (append && IndexBits'(i) == free_slot) begin
        host_q[i] <= host;
        mapped_q[i] <= ipv4_mapped;
        added_before_q[i] <= '0;
      end else if (append) begin
        for (int s = 0; s < ENTRIES; s++) begin
          if (IndexBits'(s) == free_slot) added_before_q[i][s] <= valid_q[i];
        end
      end
      if ((append && IndexBits'(i) == free_slot) || (move && IndexBits'(i) == host_slot)) begin
        netns_q[i] <= insert_netns;
      end
    end
  end

  always_ff @(posedge clk) begin
    if (!rst_n) begin
      valid_q <= '0;
    end else if (append) begin
      for (int i = 0; i < ENTRIES; i++) if (IndexBits'(i) == free_slot) valid_q[i] <= 1;
    end else if (remove && !insert) begin
      valid_q <= valid_q & ~of_netns;
    end
  end
endmodule
