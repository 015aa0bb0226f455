// The lowest set bit of a slot vector: whether there is one and its index.
// Table lookups compare every slot at once; this turns the match vector into
// a slot index. With AT_MOST_ONE (unique keys) the index is an OR of the
// matching slots' numbers, a shallow tree; otherwise the lowest match is
// isolated first (bits & -bits, a carry chain) rather than through a
// slot-long priority chain.
module na_first_set #(
    parameter int SLOTS = 32,
    parameter bit AT_MOST_ONE = 0,
    localparam int IndexBits = $clog2(SLOTS)
) (
    input  logic [    SLOTS-1:0] bits,
    output logic                 found,
    output logic [IndexBits-1:0] index
);
  logic [SLOTS-1:0] lowest;
  if (AT_MOST_ONE) begin : g_unique
    assign lowest = bits;
  end else begin : g_lowest
    assign lowest = bits & (~bits + 1'b1);
  end

  always_comb begin
    index = '0;
    for (int i = 0; i < SLOTS; i++) index = index | ({IndexBits{lowest[i]}} & IndexBits'(i));
  end
  assign found = |bits;
endmodule
