// The connection table: one memory word per connection, found by its id
// (slot = id mod ENTRIES, then linear probing). Ids are handed out in
// sequence, so probes are rare. One synchronous read and one write per
// cycle, as a block RAM offers; after reset it clears itself, one word per
// cycle, and says ready when done.
module na_connection_table #(
    parameter int ENTRIES = 1024,
    localparam int IndexBits = $clog2(ENTRIES),
    // {valid, id, client process, server process, client open, server open}
    localparam int WordBits = 1 + 64 + 32 + 32 + 2
) (
    input logic clk,
    input logic rst_n,
    output logic ready,

    input  logic [IndexBits-1:0] read_slot,
    output logic [ WordBits-1:0] read_word,  // the cycle after

    input logic                 write,
    input logic [IndexBits-1:0] write_slot,
    input logic [ WordBits-1:0] write_word
);
  logic [WordBits-1:0] memory[ENTRIES];
  logic [IndexBits-1:0] clear_slot_q;
  logic clearing_q;
  assign ready = !clearing_q;

  always_ff @(posedge clk) begin
    if (!rst_n) begin
      clearing_q <= 1;
      clear_slot_q <= '0;
    end else if (clearing_q) begin
      clear_slot_q <= clear_slot_q + 1;
      if (clear_slot_q == IndexBits'(ENTRIES - 1)) clearing_q <= 0;
    end
  end

  always_ff @(posedge clk) begin
    if (clearing_q) memory[clear_slot_q] <= '0;
    else if (write) memory[write_slot] <= write_word;
    read_word <= memory[read_slot];
  end
endmodule
