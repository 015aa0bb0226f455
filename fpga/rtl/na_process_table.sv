// Registered processes and their network namespaces, and one ephemeral-port
// cursor per namespace. Cursors outlive the processes of their namespace (as
// in the software engine); when the cursor table is full, the oldest
// namespace's cursor is forgotten.
module na_process_table #(
    parameter int PROCESSES = 32,
    parameter int NAMESPACES = 16,
    localparam int ProcessBits = $clog2(PROCESSES),
    localparam int NamespaceBits = $clog2(NAMESPACES)
) (
    input logic clk,
    input logic rst_n,

    input  logic [31:0] process_id,
    output logic        process_hit,
    output logic [63:0] process_netns,
    output logic [31:0] count,

    input logic        add,  // process in namespace add_netns
    input logic [63:0] add_netns,
    input logic        remove,  // process

    // The ephemeral cursor of namespace cursor_netns (0 when it has none yet).
    input  logic [63:0] cursor_netns,
    output logic [15:0] cursor,
    input  logic        set_cursor,
    input  logic [15:0] new_cursor
);
  logic [PROCESSES-1:0] valid_q;
  logic [31:0] process_q[PROCESSES];
  logic [63:0] netns_q[PROCESSES];

  logic [ProcessBits-1:0] hit_index;
  logic free_found;
  logic [ProcessBits-1:0] free_index;
  always_comb begin
    process_hit = 0;
    hit_index = '0;
    free_found = 0;
    free_index = '0;
    for (int i = 0; i < PROCESSES; i++) begin
      if (valid_q[i] && process_q[i] == process_id) begin
        process_hit = 1;
        hit_index = ProcessBits'(i);
      end
      if (!valid_q[i]) begin
        free_found = 1;
        free_index = ProcessBits'(i);
      end
    end
  end
  assign process_netns = netns_q[hit_index];

  always_comb begin
    count = '0;
    for (int i = 0; i < PROCESSES; i++) count = count + 32'(valid_q[i]);
  end

  always_ff @(posedge clk) begin
    if (!rst_n) begin
      valid_q <= '0;
    end else if (add && process_hit) begin
      netns_q[hit_index] <= add_netns;
    end else if (add && free_found) begin
      valid_q[free_index] <= 1;
      process_q[free_index] <= process_id;
      netns_q[free_index] <= add_netns;
    end else if (remove && process_hit) begin
      valid_q[hit_index] <= 0;
    end
  end

  // ---- ephemeral cursors ----
  logic [NAMESPACES-1:0] cursor_valid_q;
  logic [63:0] cursor_netns_q[NAMESPACES];
  logic [15:0] cursor_q[NAMESPACES];
  logic [NamespaceBits-1:0] replace_q;  // next victim when full

  logic cursor_hit;
  logic [NamespaceBits-1:0] cursor_index;
  logic cursor_free_found;
  logic [NamespaceBits-1:0] cursor_free_index;
  always_comb begin
    cursor_hit = 0;
    cursor_index = '0;
    cursor_free_found = 0;
    cursor_free_index = '0;
    for (int i = 0; i < NAMESPACES; i++) begin
      if (cursor_valid_q[i] && cursor_netns_q[i] == cursor_netns) begin
        cursor_hit = 1;
        cursor_index = NamespaceBits'(i);
      end
      if (!cursor_valid_q[i]) begin
        cursor_free_found = 1;
        cursor_free_index = NamespaceBits'(i);
      end
    end
  end
  assign cursor = cursor_hit ? cursor_q[cursor_index] : '0;

  logic [NamespaceBits-1:0] cursor_slot;
  assign cursor_slot = cursor_hit ? cursor_index : cursor_free_found ? cursor_free_index : replace_q;

  always_ff @(posedge clk) begin
    if (!rst_n) begin
      cursor_valid_q <= '0;
      replace_q <= '0;
    end else if (set_cursor) begin
      cursor_valid_q[cursor_slot] <= 1;
      cursor_netns_q[cursor_slot] <= cursor_netns;
      cursor_q[cursor_slot] <= new_cursor;
      if (!cursor_hit && !cursor_free_found) replace_q <= replace_q + 1;
    end
  end
endmodule
