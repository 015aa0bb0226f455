// Addresses of attached containers, each with its network namespace, kept in
// the order they were added (a removal shifts the later ones down): a
// namespace's first address of a family is its own address for the connects
// it makes to other containers. An address is in the table at most once; the
// host adds it again to move it to another namespace, in place. Lookups are
// parallel compares; one command (insert, remove) per cycle.
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

    // The first address of namespace `netns`: of any family (to remove it),
    // and of the family `ipv4_mapped` says (its own address for a connect).
    input  logic [ 63:0] netns,
    input  logic         ipv4_mapped,
    output logic         netns_hit,
    output logic         own_hit,
    output logic [127:0] own_host,

    output logic [CountBits-1:0] count,

    // insert: `host` now belongs to insert_netns (moved if known, appended
    // with its family `ipv4_mapped` if there is room, else ignored).
    input logic        insert,
    input logic [63:0] insert_netns,
    // remove: the first entry of `netns` goes.
    input logic        remove
);
  logic [127:0] host_q[ENTRIES];
  logic [63:0] netns_q[ENTRIES];
  logic [ENTRIES-1:0] mapped_q;

  logic [CountBits-1:0] count_q;
  assign count = count_q;

  logic [ENTRIES-1:0] in_use, of_host, of_netns, own;
  always_comb begin
    for (int i = 0; i < ENTRIES; i++) begin
      in_use[i] = CountBits'(i) < count_q;
      of_host[i] = in_use[i] && host_q[i] == host;
      of_netns[i] = in_use[i] && netns_q[i] == netns;
      own[i] = of_netns[i] && mapped_q[i] == ipv4_mapped;
    end
  end
  logic [IndexBits-1:0] host_index, netns_index, own_index;
  na_first_set #(
      .SLOTS(ENTRIES),
      .AT_MOST_ONE(1)
  ) find_host (
      .bits (of_host),
      .found(host_hit),
      .index(host_index)
  );
  na_first_set #(
      .SLOTS(ENTRIES)
  ) find_netns (
      .bits (of_netns),
      .found(netns_hit),
      .index(netns_index)
  );
  na_first_set #(
      .SLOTS(ENTRIES)
  ) find_own (
      .bits (own),
      .found(own_hit),
      .index(own_index)
  );
  assign host_netns = netns_q[host_index];
  assign own_host = host_q[own_index];

  logic [IndexBits-1:0] append_index;
  assign append_index = count_q[IndexBits-1:0];

  always_ff @(posedge clk) begin
    if (!rst_n) begin
      count_q <= '0;
    end else if (insert && host_hit) begin
      netns_q[host_index] <= insert_netns;
    end else if (insert && count_q < CountBits'(ENTRIES)) begin
      host_q[append_index] <= host;
      netns_q[append_index] <= insert_netns;
      for (int i = 0; i < ENTRIES; i++) if (IndexBits'(i) == append_index) mapped_q[i] <= ipv4_mapped;
      count_q <= count_q + 1;
    end else if (remove && netns_hit) begin
      for (int i = 0; i < ENTRIES - 1; i++) begin
        if (IndexBits'(i) >= netns_index) begin
          host_q[i] <= host_q[i+1];
          netns_q[i] <= netns_q[i+1];
          mapped_q[i] <= mapped_q[i+1];
        end
      end
      count_q <= count_q - 1;
    end
  end
endmodule
