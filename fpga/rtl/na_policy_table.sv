// Deny rules: connects from namespace `client` to listeners of namespace
// `server` on `port` (0: every port) are refused. Each rule is in the table
// at most once; order does not matter, any match denies. Lookups are
// parallel compares; one command (add, remove) per cycle.
module na_policy_table #(
    parameter int ENTRIES = 16,
    localparam int IndexBits = $clog2(ENTRIES),
    localparam int CountBits = IndexBits + 1
) (
    input logic clk,
    input logic rst_n,

    // The key: a rule to add or remove, or a connect to check.
    input  logic [63:0] client,
    input  logic [63:0] server,
    input  logic [15:0] port,
    output logic        denies,  // a rule covers a connect (client, server, port)

    output logic [CountBits-1:0] count,

    input logic add,     // the key's rule, unless present or the table is full
    input logic remove   // the key's rule, if present
);
  logic [ENTRIES-1:0] valid_q;
  logic [63:0] client_q[ENTRIES];
  logic [63:0] server_q[ENTRIES];
  logic [15:0] port_q[ENTRIES];

  logic [CountBits-1:0] count_q;
  assign count = count_q;

  // The namespace compares serve both questions.
  logic [ENTRIES-1:0] of_pair, exact, covering;
  always_comb begin
    for (int i = 0; i < ENTRIES; i++) begin
      of_pair[i] = valid_q[i] && client_q[i] == client && server_q[i] == server;
      exact[i] = of_pair[i] && port_q[i] == port;
      covering[i] = of_pair[i] && (port_q[i] == port || port_q[i] == '0);
    end
  end
  logic exact_hit;  // the rule (client, server, port) is present
  logic [IndexBits-1:0] exact_index;
  na_first_set #(
      .SLOTS(ENTRIES),
      .AT_MOST_ONE(1)
  ) find_exact (
      .bits (exact),
      .found(exact_hit),
      .index(exact_index)
  );
  assign denies = |covering;
  logic free_found;
  logic [IndexBits-1:0] free_index;
  na_first_set #(
      .SLOTS(ENTRIES)
  ) find_free (
      .bits (~valid_q),
      .found(free_found),
      .index(free_index)
  );

  logic adding;
  assign adding = add && !exact_hit && free_found;

  // Rules are written in place, straight from the key.
  always_ff @(posedge clk) begin
    for (int i = 0; i < ENTRIES; i++) begin
      if (adding && IndexBits'(i) == free_index) begin
        client_q[i] <= client;
        server_q[i] <= server;
        port_q[i] <= port;
      end
    end
  end

  always_ff @(posedge clk) begin
    if (!rst_n) begin
      valid_q <= '0;
      count_q <= '0;
    end else if (adding) begin
      for (int i = 0; i < ENTRIES; i++) if (IndexBits'(i) == free_index) valid_q[i] <= 1;
      count_q <= count_q + 1;
    end else if (remove && exact_hit) begin
      for (int i = 0; i < ENTRIES; i++) if (IndexBits'(i) == exact_index) valid_q[i] <= 0;
      count_q <= count_q - 1;
    end
  end
endmodule
