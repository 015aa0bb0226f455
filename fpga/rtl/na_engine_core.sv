// The control-plane state machine: one descriptor at a time, from the front
// end to the output FIFO. It holds the process, listener, connection,
// container address and deny-rule tables, admits connects (a process reaches
// only listeners of its own network namespace, wildcard listeners only for
// local destinations, or those of another attached container whose address
// it connects to, unless a deny rule forbids it) and generates the same
// outputs, in the same order, as the software engine
// (userspace/src/software_engine.cc).
module na_engine_core
#(
    parameter int PROCESSES = 32,
    parameter int NAMESPACES = 16,
    parameter int LISTENERS = 32,
    parameter int CONNECTIONS = 1024,
    parameter int CONTAINER_ADDRESSES = 16,
    parameter int POLICY_RULES = 16,
    localparam int OutputBits = 8 + 32 + 32 + na_protocol::DESCRIPTOR_BITS,
    localparam int ListenerIndexBits = $clog2(LISTENERS),
    localparam int ListenerCountBits = ListenerIndexBits + 1,
    localparam int SlotBits = $clog2(CONNECTIONS)
) (
    input logic clk,
    input logic rst_n,

    // Limits below the table sizes, set by the host (a full table answers -ENOBUFS).
    input logic [31:0] max_listeners,
    input logic [31:0] max_connections,

    input  logic                       in_valid,
    output logic                       in_take,
    input  logic [na_protocol::KIND_BITS-1:0] in_kind,
    input  logic [               31:0] in_process,
    input  logic [na_protocol::DESCRIPTOR_BITS-1:0] in_descriptor,

    // {notice, destination, peer process, event}, an EngineOutput.
    output logic                  out_push,
    output logic [OutputBits-1:0] out_word,
    input  logic                  out_full,

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
  typedef enum logic [4:0] {
    S_IDLE,
    S_DISPATCH,
    S_PORT_LOOKUP,
    S_LISTEN,
    S_UNLISTEN,
    S_CROSS,
    S_CONNECT,
    S_CONNECT_START,
    S_CONNECT_SCAN,
    S_CONNECT_PICKED,
    S_EPHEMERAL_START,
    S_EPHEMERAL_PROBE,
    S_EPHEMERAL,
    S_ALLOCATE,
    S_ALLOCATE_CHECK,
    S_CLOSE,
    S_CLOSE_CHECK,
    S_REMOVE_LISTENERS,
    S_REMOVE_LISTENER,
    S_REMOVE_READ,
    S_REMOVE_CHECK,
    S_REMOVE_NOTICES,
    S_REMOVE_FINISH,
    S_EMIT
  } state_e;

  // What S_EMIT sends.
  typedef enum logic [2:0] {
    EMIT_REPLY,          // type_q/status_q echoing the request
    EMIT_CREATED,        // kConnectionCreated for entry_id_q
    EMIT_CONNECT_REPLY,  // the client's successful connect reply
    EMIT_INCOMING,       // kIncoming to the listener's process
    EMIT_RELEASED,       // kConnectionReleased for entry_id_q
    EMIT_ABANDONED       // kEndpointAbandoned of entry_id_q by the removed process
  } emit_e;

  state_e state_q, then_q;
  emit_e emit_q;

  // ---- the descriptor being processed ----
  logic [na_protocol::KIND_BITS-1:0] kind_q;
  logic [31:0] process_q;
  logic [na_protocol::DESCRIPTOR_BITS-1:0] descriptor_q;
  logic [63:0] netns_q;

  logic [na_protocol::REQ_OP_BITS-1:0] op;
  logic [na_protocol::REQ_REQUEST_ID_BITS-1:0] request_id;
  logic [na_protocol::REQ_SOCKET_ID_BITS-1:0] socket_id;
  logic [na_protocol::REQ_CONNECTION_ID_BITS-1:0] connection_id;
  logic [na_protocol::ADDR_BYTES_BITS-1:0] address_host;
  logic [na_protocol::ADDR_FAMILY_BITS-1:0] address_family;
  logic [na_protocol::ADDR_PORT_BITS-1:0] port;
  logic v6only, destination_local, listen_malformed, address_ipv4_wildcard, address_ipv6_wildcard;
  logic connect_malformed, destination_ipv4_mapped, destination_loopback, client_needs_port;
  logic client_from_destination;
  logic [na_protocol::ADDRESS_BITS-1:0] destination, client_base;
  na_descriptor_parser parser (
      .descriptor(descriptor_q),
      .op(op),
      .request_id(request_id),
      .socket_id(socket_id),
      .connection_id(connection_id),
      .address_host(address_host),
      .address_family(address_family),
      .port(port),
      .v6only(v6only),
      .destination_local(destination_local),
      .listen_malformed(listen_malformed),
      .address_ipv4_wildcard(address_ipv4_wildcard),
      .address_ipv6_wildcard(address_ipv6_wildcard),
      .connect_malformed(connect_malformed),
      .destination(destination),
      .destination_ipv4_mapped(destination_ipv4_mapped),
      .destination_loopback(destination_loopback),
      .client_base(client_base),
      .client_needs_port(client_needs_port),
      .client_from_destination(client_from_destination)
  );

  // ---- process table ----
  logic process_hit, process_add, process_remove, set_ephemeral_cursor;
  logic [63:0] process_netns;
  logic [15:0] ephemeral_cursor, new_ephemeral_cursor;
  na_process_table #(
      .PROCESSES (PROCESSES),
      .NAMESPACES(NAMESPACES)
  ) process_table (
      .clk(clk),
      .rst_n(rst_n),
      .process_id(process_q),
      .process_hit(process_hit),
      .process_netns(process_netns),
      .count(processes),
      .add(process_add),
      .add_netns(socket_id),
      .remove(process_remove),
      .cursor_netns(netns_q),
      .cursor(ephemeral_cursor),
      .set_cursor(set_ephemeral_cursor),
      .new_cursor(new_ephemeral_cursor)
  );

  // ---- listener table ----
  logic owner_hit, process_listens, port_hit, probe_port_used;
  logic [ListenerIndexBits-1:0] owner_index, process_listener_index;
  logic [ListenerCountBits-1:0] port_count, port_cursor, listener_count, new_port_cursor;
  logic [ListenerIndexBits-1:0] read_index;
  logic [31:0] read_process;
  logic [63:0] read_socket, read_netns;
  logic [15:0] read_port, probe_port_q;
  logic [127:0] read_host;
  logic [7:0] read_family;
  logic read_v6only, read_ipv4_wildcard, read_ipv6_wildcard;
  logic listener_insert, listener_remove, set_port_cursor;
  logic [ListenerIndexBits-1:0] remove_index;
  na_listener_table #(
      .ENTRIES(LISTENERS)
  ) listener_table (
      .clk(clk),
      .rst_n(rst_n),
      .owner_process(process_q),
      .owner_socket(socket_id),
      .owner_hit(owner_hit),
      .owner_index(owner_index),
      .process_hit(process_listens),
      .process_index(process_listener_index),
      .port_netns(port_netns_q),
      .port(port),
      .port_hit(port_hit),
      .port_count(port_count),
      .port_cursor(port_cursor),
      .probe_port(probe_port_q),
      .probe_port_used(probe_port_used),
      .read_index(read_index),
      .read_process(read_process),
      .read_socket(read_socket),
      .read_netns(read_netns),
      .read_port(read_port),
      .read_host(read_host),
      .read_family(read_family),
      .read_v6only(read_v6only),
      .read_ipv4_wildcard(read_ipv4_wildcard),
      .read_ipv6_wildcard(read_ipv6_wildcard),
      .count(listener_count),
      .insert(listener_insert),
      .insert_host(address_host),
      .insert_family(address_family),
      .insert_v6only(v6only),
      .insert_ipv4_wildcard(address_ipv4_wildcard),
      .insert_ipv6_wildcard(address_ipv6_wildcard),
      .remove(listener_remove),
      .remove_index(remove_index),
      .set_cursor(set_port_cursor),
      .cursor(new_port_cursor)
  );
  assign listeners = 32'(listener_count);

  // ---- attached containers' addresses and deny rules ----
  // A request looks up its destination's container and, once that is
  // known, its own namespace's address and the rules from it to there; the
  // host's descriptors name a namespace (and a rule) in their own fields.
  localparam int ContainerCountBits = $clog2(CONTAINER_ADDRESSES) + 1;
  localparam int RuleCountBits = $clog2(POLICY_RULES) + 1;
  logic is_request;
  assign is_request = kind_q == na_protocol::KIND_REQUEST;
  logic container_hit, own_hit, container_insert, container_remove;
  logic [63:0] container_netns;
  logic [127:0] own_host;
  logic [ContainerCountBits-1:0] container_count;
  na_container_table #(
      .ENTRIES(CONTAINER_ADDRESSES)
  ) container_table (
      .clk(clk),
      .rst_n(rst_n),
      .host(address_host),
      .host_hit(container_hit),
      .host_netns(container_netns),
      .netns(is_request ? netns_q : socket_id),
      .ipv4_mapped(destination_ipv4_mapped),
      .own_hit(own_hit),
      .own_host(own_host),
      .count(container_count),
      .insert(container_insert),
      .insert_netns(socket_id),
      .remove(container_remove)
  );
  assign container_addresses = 32'(container_count);

  logic [63:0] owner_netns_q;  // the destination's container, if owner_found_q
  logic owner_found_q;
  logic rule_denies, rule_add, rule_remove;
  logic [RuleCountBits-1:0] rule_count;
  na_policy_table #(
      .ENTRIES(POLICY_RULES)
  ) policy_table (
      .clk(clk),
      .rst_n(rst_n),
      .client(is_request ? netns_q : socket_id),
      .server(is_request ? port_netns_q : connection_id),
      .port(port),
      .denies(rule_denies),
      .count(rule_count),
      .add(rule_add),
      .remove(rule_remove)
  );
  assign policy_rules = 32'(rule_count);

  // A destination the requester's namespace does not have may be another
  // attached container's: the connect crosses to that namespace (whose
  // address the client then has, and whose listeners take it as local).
  logic crossing;
  assign crossing = owner_found_q && owner_netns_q != '0 && owner_netns_q != netns_q &&
                    !destination_loopback && !destination_local;
  logic crossing_q, denied_q, own_hit_q, policy_denied_q;
  logic [127:0] own_host_q;
  // The listener table's namespace: the requester's, or for a connect the
  // crossed-to one until its listener is picked.
  logic [63:0] port_netns_q;
  logic [63:0] policy_denials_q;
  assign policy_denials = policy_denials_q;

  // ---- connection table ----
  localparam int ConnectionWordBits = 1 + 64 + 32 + 32 + 2;
  logic table_ready, connection_write;
  logic [SlotBits-1:0] slot_q;
  logic [ConnectionWordBits-1:0] read_word, write_word;
  na_connection_table #(
      .ENTRIES(CONNECTIONS)
  ) connection_table (
      .clk(clk),
      .rst_n(rst_n),
      .ready(table_ready),
      .read_slot(slot_q),
      .read_word(read_word),
      .write(connection_write),
      .write_slot(slot_q),
      .write_word(write_word)
  );
  logic word_valid, word_client_open, word_server_open;
  logic [63:0] word_id;
  logic [31:0] word_client, word_server;
  assign {word_valid, word_id, word_client, word_server, word_client_open, word_server_open} =
      read_word;
  logic client_end_ours, server_end_ours;
  assign client_end_ours = word_valid && word_client == process_q && word_client_open;
  assign server_end_ours = word_valid && word_server == process_q && word_server_open;

  // ---- admission: does the listener being scanned take this destination? ----
  logic listener_is_wildcard, address_matches, listener_accepts, scanned_is_member;
  assign listener_is_wildcard = read_ipv4_wildcard || read_ipv6_wildcard;
  assign address_matches =
      read_ipv4_wildcard ? destination_ipv4_mapped :
      read_ipv6_wildcard ? !(read_v6only && destination_ipv4_mapped) :
      read_host == destination[na_protocol::ADDR_BYTES_LSB+:na_protocol::ADDR_BYTES_BITS];
  // A wildcard listener only proves the port; the destination must also be
  // an address of this netns, or the kernel would have routed it elsewhere.
  assign listener_accepts = address_matches && (!listener_is_wildcard || destination_loopback ||
                                                destination_local || crossing_q);
  assign scanned_is_member = read_netns == port_netns_q && read_port == port;

  // ---- connect state ----
  logic [ListenerCountBits-1:0] members_q, start_q, scan_q, rank_q, chosen_rank_q, fallback_rank_q;
  logic [ListenerIndexBits-1:0] chosen_index_q, fallback_index_q;
  logic fallback_found_q;
  logic [31:0] server_process_q;
  logic [63:0] server_socket_q;
  logic [7:0] server_family_q;
  logic [na_protocol::ADDRESS_BITS-1:0] client_address_q;
  logic [14:0] tries_q;
  logic [63:0] next_connection_id_q, entry_id_q;
  logic [SlotBits:0] displacement_q, max_displacement_q;
  logic [15:0] status_q;
  logic [7:0] type_q;
  // remove_process: notices still to send for the connection at slot_q
  logic abandon_client_q, abandon_server_q, release_q;

  localparam logic [14:0] EphemeralTries =
      15'(na_protocol::EPHEMERAL_LAST - na_protocol::EPHEMERAL_FIRST);
  logic [15:0] next_probe_port;
  assign next_probe_port = probe_port_q == na_protocol::EPHEMERAL_LAST
                           ? na_protocol::EPHEMERAL_FIRST : probe_port_q + 1;

  // Registered a cycle ahead, off the request's path: the counts they
  // compare last changed at least three cycles before a listen or connect.
  logic listener_room_q, connection_room_q;
  logic owner_hit_q;  // the owner lookup, registered in S_DISPATCH
  logic [ListenerIndexBits-1:0] owner_index_q, victim_index_q;
  always_ff @(posedge clk) begin
    listener_room_q <= 32'(listener_count) < max_listeners &&
                       32'(listener_count) < LISTENERS;
    connection_room_q <= connections_open_q < max_connections &&
                         connections_open_q < CONNECTIONS;
  end

  logic [31:0] connections_open_q;
  logic [63:0] connections_total_q, requests_q, rejected_q;
  assign connections_open = connections_open_q;
  assign connections_total = connections_total_q;
  assign requests = requests_q;
  assign rejected_requests = rejected_q;

  // ---- output generation ----
  // The client sees addresses in its socket's family, the server in its
  // listener's: an IPv6 listener sees IPv4 peers as AF_INET6 ::ffff:a.b.c.d.
  logic [na_protocol::ADDRESS_BITS-1:0] client_view, server_view_local, server_view_peer;
  always_comb begin
    client_view = client_base;
    if (crossing_q && client_from_destination) begin
      client_view[na_protocol::ADDR_BYTES_LSB+:na_protocol::ADDR_BYTES_BITS] = own_host_q;
    end
    client_view[na_protocol::ADDR_FAMILY_LSB+:na_protocol::ADDR_FAMILY_BITS] = address_family;
    client_view[na_protocol::ADDR_RESERVED_LSB+:na_protocol::ADDR_RESERVED_BITS] = '0;
    server_view_local = destination;
    server_view_local[na_protocol::ADDR_FAMILY_LSB+:na_protocol::ADDR_FAMILY_BITS] =
        server_family_q;
    server_view_peer = client_address_q;
    server_view_peer[na_protocol::ADDR_FAMILY_LSB+:na_protocol::ADDR_FAMILY_BITS] = server_family_q;
  end

  logic [7:0] out_notice;
  logic [31:0] out_destination, out_peer_process;
  // The event's fields, packed below at the generated offsets.
  logic [7:0] event_type, event_op;
  logic [15:0] event_status;
  logic [31:0] event_request_id;
  logic [63:0] event_socket_id, event_connection_id;
  logic [na_protocol::ADDRESS_BITS-1:0] event_local, event_peer;
  always_comb begin
    out_notice = na_protocol::NOTICE_DELIVER;
    out_destination = process_q;
    out_peer_process = '0;
    event_type = '0;
    event_op = '0;
    event_status = na_protocol::STATUS_OK;
    event_request_id = '0;
    event_socket_id = '0;
    event_connection_id = entry_id_q;  // every output but a plain reply
    event_local = '0;
    event_peer = '0;
    case (emit_q)
      EMIT_REPLY, EMIT_CONNECT_REPLY: begin
        event_type = type_q;
        event_op = op;
        event_status = status_q;
        event_request_id = request_id;
        event_socket_id = socket_id;
        if (emit_q == EMIT_CONNECT_REPLY) begin
          event_local = client_address_q;
          event_peer = destination;
        end else begin
          event_connection_id = connection_id;
          if (policy_denied_q) begin
            event_local[na_protocol::ADDR_RESERVED_LSB+:na_protocol::ADDR_RESERVED_BITS] =
                na_protocol::EVT_FLAG_POLICY_DENIED;
          end
        end
      end
      EMIT_INCOMING: begin
        out_destination = server_process_q;
        event_type = na_protocol::EVT_INCOMING;
        event_op = na_protocol::OP_CONNECT;
        event_socket_id = server_socket_q;
        event_local = server_view_local;
        event_peer = server_view_peer;
      end
      EMIT_CREATED: begin
        out_notice = na_protocol::NOTICE_CONNECTION_CREATED;
        out_peer_process = server_process_q;
      end
      EMIT_RELEASED: begin
        out_notice = na_protocol::NOTICE_CONNECTION_RELEASED;
        out_destination = na_protocol::MONITOR_DESTINATION;
      end
      default: out_notice = na_protocol::NOTICE_ENDPOINT_ABANDONED;  // EMIT_ABANDONED
    endcase
  end

  logic [na_protocol::DESCRIPTOR_BITS-1:0] out_event;
  always_comb begin
    out_event = '0;
    out_event[na_protocol::EVT_TYPE_LSB+:na_protocol::EVT_TYPE_BITS] = event_type;
    out_event[na_protocol::EVT_OP_LSB+:na_protocol::EVT_OP_BITS] = event_op;
    out_event[na_protocol::EVT_STATUS_LSB+:na_protocol::EVT_STATUS_BITS] = event_status;
    out_event[na_protocol::EVT_REQUEST_ID_LSB+:na_protocol::EVT_REQUEST_ID_BITS] =
        event_request_id;
    out_event[na_protocol::EVT_SOCKET_ID_LSB+:na_protocol::EVT_SOCKET_ID_BITS] = event_socket_id;
    out_event[na_protocol::EVT_CONNECTION_ID_LSB+:na_protocol::EVT_CONNECTION_ID_BITS] =
        event_connection_id;
    out_event[na_protocol::EVT_LOCAL_LSB+:na_protocol::EVT_LOCAL_BITS] = event_local;
    out_event[na_protocol::EVT_PEER_LSB+:na_protocol::EVT_PEER_BITS] = event_peer;
  end
  assign out_word = {out_notice, out_destination, out_peer_process, out_event};
  assign out_push = state_q == S_EMIT && !out_full;

  // ---- table commands (combinational, from the current state) ----
  logic listen_ok, unlisten_ok;
  assign listen_ok = !listen_malformed && !owner_hit_q && listener_room_q;
  assign unlisten_ok = owner_hit_q;
  assign in_take = state_q == S_IDLE && table_ready && in_valid;
  assign process_add = state_q == S_DISPATCH && kind_q == na_protocol::KIND_ADD_PROCESS;
  assign process_remove = state_q == S_REMOVE_FINISH;
  assign container_insert = state_q == S_DISPATCH &&
                            kind_q == na_protocol::KIND_ADD_CONTAINER_ADDRESS;
  assign container_remove = state_q == S_DISPATCH &&
                            kind_q == na_protocol::KIND_REMOVE_CONTAINER;
  assign rule_add = state_q == S_DISPATCH && kind_q == na_protocol::KIND_DENY_CONNECTIONS;
  assign rule_remove = state_q == S_DISPATCH && kind_q == na_protocol::KIND_ALLOW_CONNECTIONS;
  assign listener_insert = state_q == S_LISTEN && listen_ok;
  assign listener_remove = (state_q == S_UNLISTEN && unlisten_ok) ||
                           state_q == S_REMOVE_LISTENER;
  assign remove_index = state_q == S_UNLISTEN ? owner_index_q : victim_index_q;
  assign read_index = state_q == S_CONNECT_PICKED ? chosen_index_q
                                                  : scan_q[ListenerIndexBits-1:0];
  assign set_port_cursor = state_q == S_CONNECT_PICKED;
  assign new_port_cursor = chosen_rank_q + 1 == members_q ? '0 : chosen_rank_q + 1;
  assign set_ephemeral_cursor = state_q == S_EPHEMERAL &&
                                (!probe_port_used || tries_q == EphemeralTries);
  assign new_ephemeral_cursor = next_probe_port;

  always_comb begin
    connection_write = 0;
    write_word = '0;
    if (state_q == S_ALLOCATE_CHECK && !word_valid) begin
      connection_write = 1;
      write_word = {1'b1, next_connection_id_q, process_q, server_process_q, 2'b11};
    end else if (state_q == S_CLOSE_CHECK && word_valid && word_id == connection_id &&
                 (client_end_ours || server_end_ours)) begin
      connection_write = 1;
      // A process connected to itself closes its client end first.
      write_word = {word_valid, word_id, word_client, word_server,
                    word_client_open && !client_end_ours,
                    word_server_open && (client_end_ours || !server_end_ours)};
      if (!write_word[1] && !write_word[0]) write_word = '0;
    end else if (state_q == S_REMOVE_CHECK && (client_end_ours || server_end_ours)) begin
      connection_write = 1;
      write_word = {word_valid, word_id, word_client, word_server,
                    word_client_open && !client_end_ours, word_server_open && !server_end_ours};
      if (!write_word[1] && !write_word[0]) write_word = '0;
    end
  end

  // ---- the state machine ----
  task automatic emit(input emit_e what, input state_e then);
    emit_q <= what;
    then_q <= then;
    state_q <= S_EMIT;
  endtask

  task automatic answer(input logic [7:0] reply_type, input logic [15:0] status);
    type_q <= reply_type;
    status_q <= status;
    if (status != na_protocol::STATUS_OK) rejected_q <= rejected_q + 1;
    emit(EMIT_REPLY, S_IDLE);
  endtask

  always_ff @(posedge clk) begin
    if (!rst_n) begin
      state_q <= S_IDLE;
      then_q <= S_IDLE;
      emit_q <= EMIT_REPLY;
      next_connection_id_q <= 1;
      max_displacement_q <= '0;
      connections_open_q <= '0;
      connections_total_q <= '0;
      requests_q <= '0;
      rejected_q <= '0;
      policy_denials_q <= '0;
    end else begin
      case (state_q)
        S_IDLE:
        if (in_take) begin
          kind_q <= in_kind;
          process_q <= in_process;
          descriptor_q <= in_descriptor;
          state_q <= S_DISPATCH;
        end

        S_DISPATCH: begin
          netns_q <= process_netns;
          owner_hit_q <= owner_hit;
          owner_index_q <= owner_index;
          slot_q <= connection_id[SlotBits-1:0];
          displacement_q <= '0;
          port_netns_q <= process_netns;
          owner_found_q <= container_hit;
          owner_netns_q <= container_netns;
          policy_denied_q <= 0;
          if (kind_q == na_protocol::KIND_REMOVE_PROCESS)
            state_q <= process_hit ? S_REMOVE_LISTENERS : S_IDLE;
          else if (kind_q == na_protocol::KIND_REQUEST) begin
            requests_q <= requests_q + 1;
            if (!process_hit) answer(na_protocol::EVT_ERROR, na_protocol::STATUS_ESRCH);
            else
              case (op)
                na_protocol::OP_LISTEN: state_q <= S_PORT_LOOKUP;
                na_protocol::OP_UNLISTEN: state_q <= S_UNLISTEN;
                na_protocol::OP_CONNECT: state_q <= S_CROSS;
                na_protocol::OP_CLOSE: state_q <= S_CLOSE;
                default: answer(na_protocol::EVT_ERROR, na_protocol::STATUS_EINVAL);
              endcase
          end else state_q <= S_IDLE;  // the table commands above are done now
        end

        // The destination's container is known (looked up in S_DISPATCH):
        // does the connect cross to it? The requester's own address is
        // looked up from here on.
        S_CROSS: begin
          crossing_q <= crossing;
          if (crossing) port_netns_q <= owner_netns_q;
          state_q <= S_PORT_LOOKUP;
        end

        // The listener table looks the port up (port_netns_q is set now);
        // for a connect that crosses (then port_netns_q is the server's
        // namespace) the rules and the requester's own address answer too.
        S_PORT_LOOKUP: begin
          denied_q <= rule_denies;
          own_hit_q <= own_hit;
          own_host_q <= own_host;
          state_q <= op == na_protocol::OP_LISTEN ? S_LISTEN : S_CONNECT;
        end

        S_LISTEN:
        if (listen_malformed) answer(na_protocol::EVT_ERROR, na_protocol::STATUS_EINVAL);
        else if (owner_hit_q) answer(na_protocol::EVT_REPLY, na_protocol::STATUS_EADDRINUSE);
        else if (!listen_ok) answer(na_protocol::EVT_REPLY, na_protocol::STATUS_ENOBUFS);
        else answer(na_protocol::EVT_REPLY, na_protocol::STATUS_OK);

        S_UNLISTEN:
        answer(na_protocol::EVT_REPLY,
               unlisten_ok ? na_protocol::STATUS_OK : na_protocol::STATUS_EBADF);

        S_CONNECT:
        if (connect_malformed) answer(na_protocol::EVT_ERROR, na_protocol::STATUS_EINVAL);
        else if (!connection_room_q) answer(na_protocol::EVT_REPLY, na_protocol::STATUS_ENOBUFS);
        else if (crossing_q && denied_q) begin
          policy_denied_q <= 1;
          policy_denials_q <= policy_denials_q + 1;
          answer(na_protocol::EVT_REPLY, na_protocol::STATUS_ECONNREFUSED);
        end else if (crossing_q && !own_hit_q) begin
          // Not attached itself: the engine cannot say what address the
          // kernel would give the client, so the kernel carries it.
          answer(na_protocol::EVT_REPLY, na_protocol::STATUS_ECONNREFUSED);
        end else if (!port_hit) answer(na_protocol::EVT_REPLY, na_protocol::STATUS_ECONNREFUSED);
        else begin
          members_q <= port_count;
          start_q <= port_cursor;
          scan_q <= '0;
          rank_q <= '0;
          fallback_found_q <= 0;
          state_q <= S_CONNECT_START;
        end

        // Round robin: the first accepting listener from the cursor on
        // (cursor mod members, as listeners may have left), else the first.
        S_CONNECT_START:
        if (start_q >= members_q) start_q <= start_q - members_q;
        else state_q <= S_CONNECT_SCAN;

        S_CONNECT_SCAN:
        if (scan_q == listener_count || rank_q == members_q) begin
          if (fallback_found_q) begin
            chosen_index_q <= fallback_index_q;
            chosen_rank_q <= fallback_rank_q;
            state_q <= S_CONNECT_PICKED;
          end else answer(na_protocol::EVT_REPLY, na_protocol::STATUS_ECONNREFUSED);
        end else begin
          scan_q <= scan_q + 1;
          if (scanned_is_member) begin
            rank_q <= rank_q + 1;
            if (listener_accepts && rank_q >= start_q) begin
              chosen_index_q <= scan_q[ListenerIndexBits-1:0];
              chosen_rank_q <= rank_q;
              state_q <= S_CONNECT_PICKED;
            end else if (listener_accepts && !fallback_found_q) begin
              fallback_found_q <= 1;
              fallback_index_q <= scan_q[ListenerIndexBits-1:0];
              fallback_rank_q <= rank_q;
            end
          end
        end

        S_CONNECT_PICKED: begin
          server_process_q <= read_process;
          server_socket_q <= read_socket;
          server_family_q <= read_family;
          client_address_q <= client_view;
          slot_q <= next_connection_id_q[SlotBits-1:0];
          // Ephemeral ports are the client's namespace's (the port lookup's
          // netns compares serve the probes too).
          port_netns_q <= netns_q;
          state_q <= client_needs_port ? S_EPHEMERAL_START : S_ALLOCATE;
        end

        // Rotate through the ephemeral range, skipping ports listened on in the netns.
        S_EPHEMERAL_START: begin
          probe_port_q <= ephemeral_cursor < na_protocol::EPHEMERAL_FIRST ||
                          ephemeral_cursor > na_protocol::EPHEMERAL_LAST
                          ? na_protocol::EPHEMERAL_FIRST : ephemeral_cursor;
          tries_q <= '0;
          state_q <= S_EPHEMERAL_PROBE;
        end

        S_EPHEMERAL_PROBE: state_q <= S_EPHEMERAL;  // the listener table checks probe_port_q

        S_EPHEMERAL:
        if (set_ephemeral_cursor) begin
          client_address_q[na_protocol::ADDR_PORT_LSB+:na_protocol::ADDR_PORT_BITS] <= probe_port_q;
          state_q <= S_ALLOCATE;
        end else begin
          probe_port_q <= next_probe_port;
          tries_q <= tries_q + 1;
          state_q <= S_EPHEMERAL_PROBE;
        end

        S_ALLOCATE: state_q <= S_ALLOCATE_CHECK;  // the table reads slot_q

        S_ALLOCATE_CHECK:
        if (!word_valid) begin
          entry_id_q <= next_connection_id_q;
          next_connection_id_q <= next_connection_id_q + 1;
          connections_open_q <= connections_open_q + 1;
          connections_total_q <= connections_total_q + 1;
          if (displacement_q > max_displacement_q) max_displacement_q <= displacement_q;
          type_q <= na_protocol::EVT_REPLY;
          status_q <= na_protocol::STATUS_OK;
          emit(EMIT_CREATED, S_EMIT);  // then the reply, then incoming (see S_EMIT)
        end else begin
          slot_q <= slot_q + 1;
          displacement_q <= displacement_q + 1;
          state_q <= S_ALLOCATE;
        end

        S_CLOSE: state_q <= S_CLOSE_CHECK;  // the table reads slot_q

        S_CLOSE_CHECK:
        if (word_valid && word_id == connection_id) begin
          entry_id_q <= word_id;
          if (!client_end_ours && !server_end_ours) begin
            answer(na_protocol::EVT_REPLY, na_protocol::STATUS_EBADF);
          end else begin
            type_q <= na_protocol::EVT_REPLY;
            status_q <= na_protocol::STATUS_OK;
            if (connection_write && write_word == '0) begin
              connections_open_q <= connections_open_q - 1;
              emit(EMIT_REPLY, S_EMIT);
            end else emit(EMIT_REPLY, S_IDLE);
          end
        end else if (displacement_q == max_displacement_q) begin
          answer(na_protocol::EVT_REPLY, na_protocol::STATUS_EBADF);
        end else begin
          slot_q <= slot_q + 1;
          displacement_q <= displacement_q + 1;
          state_q <= S_CLOSE;
        end

        // One listener per two cycles: pick it, then remove it.
        S_REMOVE_LISTENERS:
        if (process_listens) begin
          victim_index_q <= process_listener_index;
          state_q <= S_REMOVE_LISTENER;
        end else begin
          slot_q <= '0;
          state_q <= S_REMOVE_READ;
        end

        S_REMOVE_LISTENER: state_q <= S_REMOVE_LISTENERS;

        S_REMOVE_READ: state_q <= S_REMOVE_CHECK;  // the table reads slot_q

        S_REMOVE_CHECK: begin
          entry_id_q <= word_id;
          abandon_client_q <= client_end_ours;
          abandon_server_q <= server_end_ours;
          release_q <= connection_write && write_word == '0;
          if (connection_write && write_word == '0) connections_open_q <= connections_open_q - 1;
          state_q <= S_REMOVE_NOTICES;
        end

        S_REMOVE_NOTICES:
        if (abandon_client_q) begin
          abandon_client_q <= 0;
          emit(EMIT_ABANDONED, S_REMOVE_NOTICES);
        end else if (abandon_server_q) begin
          abandon_server_q <= 0;
          emit(EMIT_ABANDONED, S_REMOVE_NOTICES);
        end else if (release_q) begin
          release_q <= 0;
          emit(EMIT_RELEASED, S_REMOVE_NOTICES);
        end else if (slot_q == SlotBits'(CONNECTIONS - 1)) state_q <= S_REMOVE_FINISH;
        else begin
          slot_q <= slot_q + 1;
          state_q <= S_REMOVE_READ;
        end

        S_REMOVE_FINISH: state_q <= S_IDLE;

        S_EMIT:
        if (!out_full) begin
          state_q <= then_q;
          // Chained outputs: a connect sends created, reply, incoming; a
          // close that frees the connection sends reply, released.
          if (then_q == S_EMIT) begin
            case (emit_q)
              EMIT_CREATED: then_q <= S_EMIT;
              default: then_q <= S_IDLE;
            endcase
            case (emit_q)
              EMIT_CREATED: emit_q <= EMIT_CONNECT_REPLY;
              EMIT_CONNECT_REPLY: emit_q <= EMIT_INCOMING;
              default: emit_q <= EMIT_RELEASED;  // after a close's reply
            endcase
          end
        end

        default: state_q <= S_IDLE;
      endcase
    end
  end

  assign idle = state_q == S_IDLE;
endmodule
