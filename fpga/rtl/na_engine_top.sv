// The FPGA control-plane engine as the host sees it: a descriptor ring with
// a doorbell in, engine outputs out, counters readable at any time.
module na_engine_top
#(
    parameter int PROCESSES = 32,
    parameter int NAMESPACES = 16,
    parameter int LISTENERS = 32,
    parameter int CONNECTIONS = 1024,
    parameter int CONTAINER_ADDRESSES = 16,
    parameter int POLICY_RULES = 16,
    parameter int REQUEST_SLOTS = 64,
    parameter int OUTPUT_SLOTS = 16,
    localparam int OutputBits = 8 + 32 + 32 + na_protocol::DESCRIPTOR_BITS,
    localparam int RequestIndexBits = $clog2(REQUEST_SLOTS)
) (
    input logic clk,
    input logic rst_n,

    input logic [31:0] max_listeners,
    input logic [31:0] max_connections,

    input  logic                        host_write,
    input  logic [na_protocol::KIND_BITS-1:0] host_kind,
    input  logic [                31:0] host_process,
    input  logic [ na_protocol::DESCRIPTOR_BITS-1:0] host_descriptor,
    output logic [  RequestIndexBits:0] host_free_slots,
    input  logic                        doorbell,
    input  logic [  RequestIndexBits:0] doorbell_count,

    output logic                  output_valid,
    output logic [OutputBits-1:0] output_word,
    input  logic                  output_pop,

    // Every announced descriptor is processed and its outputs are queued.
    output logic        idle,
    output logic [31:0] processes,
    output logic [31:0] listeners,
    output logic [31:0] connections_open,
    output logic [63:0] connections_total,
    output logic [63:0] requests,
    output logic [63:0] rejected_requests,
    output logic [31:0] container_addresses,
    output logic [31:0] policy_rules,
    output logic [63:0] policy_denials
);
  logic in_valid, in_take, frontend_empty, core_idle;
  logic [na_protocol::KIND_BITS-1:0] in_kind;
  logic [31:0] in_process;
  logic [na_protocol::DESCRIPTOR_BITS-1:0] in_descriptor;
  na_doorbell_frontend #(
      .SLOTS(REQUEST_SLOTS)
  ) frontend (
      .clk(clk),
      .rst_n(rst_n),
      .host_write(host_write),
      .host_kind(host_kind),
      .host_process(host_process),
      .host_descriptor(host_descriptor),
      .host_free_slots(host_free_slots),
      .doorbell(doorbell),
      .doorbell_count(doorbell_count),
      .out_valid(in_valid),
      .out_take(in_take),
      .out_kind(in_kind),
      .out_process(in_process),
      .out_descriptor(in_descriptor),
      .empty(frontend_empty)
  );

  logic push, full;
  logic [OutputBits-1:0] push_word;
  na_engine_core #(
      .PROCESSES(PROCESSES),
      .NAMESPACES(NAMESPACES),
      .LISTENERS(LISTENERS),
      .CONNECTIONS(CONNECTIONS),
      .CONTAINER_ADDRESSES(CONTAINER_ADDRESSES),
      .POLICY_RULES(POLICY_RULES)
  ) core (
      .clk(clk),
      .rst_n(rst_n),
      .max_listeners(max_listeners),
      .max_connections(max_connections),
      .in_valid(in_valid),
      .in_take(in_take),
      .in_kind(in_kind),
      .in_process(in_process),
      .in_descriptor(in_descriptor),
      .out_push(push),
      .out_word(push_word),
      .out_full(full),
      .idle(core_idle),
      .processes(processes),
      .listeners(listeners),
      .connections_open(connections_open),
      .connections_total(connections_total),
      .requests(requests),
      .rejected_requests(rejected_requests),
      .container_addresses(container_addresses),
      .policy_rules(policy_rules),
      .policy_denials(policy_denials)
  );

  na_output_fifo #(
      .SLOTS(OUTPUT_SLOTS),
      .WORD_BITS(OutputBits)
  ) outputs (
      .clk(clk),
      .rst_n(rst_n),
      .push(push),
      .push_word(push_word),
      .full(full),
      .valid(output_valid),
      .word(output_word),
      .pop(output_pop)
  );

  assign idle = frontend_empty && core_idle;
endmodule
