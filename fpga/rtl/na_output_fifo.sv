// Engine outputs waiting for the host (on a board, DMA writes into the
// event queues). The engine stalls while it is full.
module na_output_fifo #(
    parameter int SLOTS = 16,
    parameter int WORD_BITS = 8,
    localparam int IndexBits = $clog2(SLOTS)
) (
    input logic clk,
    input logic rst_n,

    input  logic                 push,
    input  logic [WORD_BITS-1:0] push_word,
    output logic                 full,

    output logic                 valid,
    output logic [WORD_BITS-1:0] word,
    input  logic                 pop
);
  logic [WORD_BITS-1:0] slots[SLOTS];
  logic [IndexBits:0] pushed_q;
  logic [IndexBits:0] popped_q;

  assign full = pushed_q - popped_q == (IndexBits + 1)'(SLOTS);
  assign valid = pushed_q != popped_q;
  assign word = slots[popped_q[IndexBits-1:0]];

  always_ff @(posedge clk) begin
    if (push && !full) slots[pushed_q[IndexBits-1:0]] <= push_word;
  end

  always_ff @(posedge clk) begin
    if (!rst_n) begin
      pushed_q <= '0;
      popped_q <= '0;
    end else begin
      if (push && !full) pushed_q <= pushed_q + 1;
      if (pop && valid) popped_q <= popped_q + 1;
    end
  end
endmodule
