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
  // Valid bits as vectors, for the free-slot searches; written through
  // decoders (a variable bit index would cost yosys an adder).
  logic [PROCESSES-1:0] valid_q;
  logic [31:0] process_q[PROCESSES];
  logic [63:0] netns_q[PROCESSES];

  logic [PROCESSES-1:0] of_process;
  always_comb begin
    for (int i = 0; i < PROCESSES; i++) of_process[i] = valid_q[i] && process_q[i] == process_id;
  end
  logic [ProcessBits-1:0] hit_index;
  na_first_set #(
      .SLOTS(PROCESSES),
      .AT_MOST_ONE(1)
  ) find_process (
      .bits (of_process),
      .found(process_hit),
      .index(hit_index)
  );
  logic free_found;
  logic [ProcessBits-1:0] free_index;
  na_first_set #(
      .SLOTS(PROCESSES)
  ) find_free (
      .bits (~valid_q),
      .found(free_found),
      .index(free_index)
  );
  assign process_netns = netns_q[hit_index];

  logic [31:0] count_q;
  assign count = count_q;

  always_ff @(posedge clk) begin
    if (!rst_n) begin
      valid_q <= '0;
      count_q <= '0;
    end else if (add && process_hit) begin
      netns_q[hit_index] <= add_netns;
    end else if (add && free_found) begin
      for (int i = 0; i < PROCESSES; i++) if (ProcessBits'(i) == free_index) valid_q[i] <= 1;
      process_q[free_index] <= process_id;
      netns_q[free_index] <= add_netns;
      count_q <= count_q + 1;
    end else if (remove && process_hit) begin
      for (int i = 0; i < PROCESSES; i++) if (ProcessBits'(i) == hit_index) valid_q[i] <= 0;
      count_q <= count_q - 1;
    end
  end

  // ---- ephemeral cursors ----
  logic [NAMESPACES-1:0] cursor_valid_q;
  logic [63:0] cursor_netns_q[NAMESPACES];
  logic [15:0] cursor_q[NAMESPACES];
  logic [NamespaceBits-1:0] replace_q;  // next victim when full

  logic [NAMESPACES-1:0] cursor_matches;
  always_comb begin
    for (int i = 0; i < NAMESPACES; i++) begin
      cursor_matches[i] = cursor_valid_q[i] && cursor_netns_q[i] == cursor_netns;
    end
  end
  logic cursor_hit;
  logic [NamespaceBits-1:0] cursor_index;
  na_first_set #(
      .SLOTS(NAMESPACES),
      .AT_MOST_ONE(1)
  ) find_cursor (
      .bits (cursor_matches),
      .found(cursor_hit),
      .index(cursor_index)
  );
  logic cursor_free_found;
  logic [NamespaceBits-1:0] cursor_free_index;
  na_first_set #(
      .SLOTS(NAMESPACES)
  ) find_free_cursor (
      .bits (~cursor_valid_q),
      .found(cursor_free_found),
      .index(cursor_free_index)
  );
  assign cursor = cursor_hit ? cursor_q[cursor_index] : '0;

  logic [NamespaceBits-1:0] cursor_slot;
  assign cursor_slot = cursor_hit ? cursor_index
                     : cursor_free_found ? cursor_free_index : replace_q;

  always_ff @(posedge clk) begin
    if (!rst_n) begin
      cursor_valid_q <= '0;
      replace_q <= '0;
    end else if (set_cursor) begin
      for (int i = 0; i < NAMESPACES; i++) begin
        if (NamespaceBits'(i) == cursor_slot) cursor_valid_q[i] <= 1;
      end
      cursor_netns_q[cursor_slot] <= cursor_netns;
      cursor_q[cursor_slot] <= new_cursor;
      if (!cursor_hit && !cursor_free_found) replace_q <= replace_q + 1;
    end
  end
endmodule
