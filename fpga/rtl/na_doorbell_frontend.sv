// The host side of the NIC: the host writes descriptors into the request
// ring (on a board, the DMA engine fetches them over PCIe), and nothing it
// wrote is seen until it rings the doorbell with how many it added. One
// doorbell thus hands the engine a whole batch. Descriptors leave in order,
// one per cycle at most.
module na_doorbell_frontend
#(
    parameter int SLOTS = 64,
    localparam int IndexBits = $clog2(SLOTS),
    // {kind, process, descriptor}
    localparam int WordBits = na_protocol::KIND_BITS + 32 + na_protocol::DESCRIPTOR_BITS
) (
    input logic clk,
    input logic rst_n,

    input  logic                       host_write,
    input  logic [na_protocol::KIND_BITS-1:0] host_kind,
    input  logic [               31:0] host_process,
    input  logic [na_protocol::DESCRIPTOR_BITS-1:0] host_descriptor,
    output logic [    IndexBits:0]     host_free_slots,
    input  logic                       doorbell,
    input  logic [    IndexBits:0]     doorbell_count,

    output logic                       out_valid,
    input  logic                       out_take,
    output logic [na_protocol::KIND_BITS-1:0] out_kind,
    output logic [               31:0] out_process,
    output logic [na_protocol::DESCRIPTOR_BITS-1:0] out_descriptor,
    output logic                       empty  // nothing announced is left
);
  logic [WordBits-1:0] ring[SLOTS];
  // Free-running, one bit wider than an index: written by the host,
  // announced by doorbells, fetched by us.
  logic [IndexBits:0] written_q;
  logic [IndexBits:0] announced_q;
  logic [IndexBits:0] fetched_q;
  logic out_valid_q;
  logic [WordBits-1:0] out_q;

  assign host_free_slots = (IndexBits + 1)'(SLOTS) - (written_q - fetched_q);
  logic fetch;
  assign fetch = announced_q != fetched_q && (!out_valid_q || out_take);

  always_ff @(posedge clk) begin
    if (host_write) ring[written_q[IndexBits-1:0]] <= {host_kind, host_process, host_descriptor};
    if (fetch) out_q <= ring[fetched_q[IndexBits-1:0]];
  end

  always_ff @(posedge clk) begin
    if (!rst_n) begin
      written_q <= '0;
      announced_q <= '0;
      fetched_q <= '0;
      out_valid_q <= 0;
    end else begin
      if (host_write) written_q <= written_q + 1;
      if (doorbell) announced_q <= announced_q + doorbell_count;
      if (fetch) fetched_q <= fetched_q + 1;
      if (fetch) out_valid_q <= 1;
      else if (out_take) out_valid_q <= 0;
    end
  end

  assign out_valid = out_valid_q;
  assign {out_kind, out_process, out_descriptor} = out_q;
  assign empty = announced_q == fetched_q && !out_valid_q;
endmodule
