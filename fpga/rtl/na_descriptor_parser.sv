// Unpacks a request descriptor and derives everything the checks need. The
// descriptor comes from a process's shared memory: nothing here trusts it.
module na_descriptor_parser
(
    input logic [na_protocol::DESCRIPTOR_BITS-1:0] descriptor,

    output logic [na_protocol::REQ_OP_BITS-1:0]            op,
    output logic [na_protocol::REQ_REQUEST_ID_BITS-1:0]    request_id,
    output logic [na_protocol::REQ_SOCKET_ID_BITS-1:0]     socket_id,
    output logic [na_protocol::REQ_CONNECTION_ID_BITS-1:0] connection_id,
    output logic [na_protocol::ADDR_BYTES_BITS-1:0]        address_host,
    output logic [na_protocol::ADDR_FAMILY_BITS-1:0]       address_family,
    output logic [na_protocol::ADDR_PORT_BITS-1:0]         port,
    output logic                              v6only,
    output logic                              destination_local,

    // kListen: the bound address.
    output logic listen_malformed,
    output logic address_ipv4_wildcard,
    output logic address_ipv6_wildcard,

    // kConnect: Linux sends a connect to the unspecified address to the loopback.
    output logic                    connect_malformed,
    output logic [na_protocol::ADDRESS_BITS-1:0] destination,  // reserved byte cleared
    output logic                    destination_ipv4_mapped,
    output logic                    destination_loopback,
    // The client's address before its port and family are settled: the bound
    // source, or the destination's host when the source is unspecified.
    output logic [na_protocol::ADDRESS_BITS-1:0] client_base,
    output logic                    client_needs_port,  // no bound port: take an ephemeral one
    // client_base is the destination's host (an attached container's own
    // address takes its place when the connect crosses namespaces)
    output logic                    client_from_destination
);
  logic [na_protocol::REQ_FLAGS_BITS-1:0] flags;
  logic [na_protocol::ADDRESS_BITS-1:0] address;
  logic [na_protocol::ADDRESS_BITS-1:0] source;
  assign op = descriptor[na_protocol::REQ_OP_LSB+:na_protocol::REQ_OP_BITS];
  assign flags = descriptor[na_protocol::REQ_FLAGS_LSB+:na_protocol::REQ_FLAGS_BITS];
  assign request_id = descriptor[na_protocol::REQ_REQUEST_ID_LSB+:na_protocol::REQ_REQUEST_ID_BITS];
  assign socket_id = descriptor[na_protocol::REQ_SOCKET_ID_LSB+:na_protocol::REQ_SOCKET_ID_BITS];
  assign connection_id =
      descriptor[na_protocol::REQ_CONNECTION_ID_LSB+:na_protocol::REQ_CONNECTION_ID_BITS];
  assign address = descriptor[na_protocol::REQ_ADDRESS_LSB+:na_protocol::REQ_ADDRESS_BITS];
  assign source = descriptor[na_protocol::REQ_SOURCE_LSB+:na_protocol::REQ_SOURCE_BITS];
  assign port = address[na_protocol::ADDR_PORT_LSB+:na_protocol::ADDR_PORT_BITS];
  assign address_host = address[na_protocol::ADDR_BYTES_LSB+:na_protocol::ADDR_BYTES_BITS];
  assign address_family = address[na_protocol::ADDR_FAMILY_LSB+:na_protocol::ADDR_FAMILY_BITS];
  assign v6only = (flags & na_protocol::FLAG_V6ONLY) != 0;
  assign destination_local = (flags & na_protocol::FLAG_DESTINATION_LOCAL) != 0;

  logic address_well_formed;
  logic address_mapped;
  logic address_loopback;
  na_address_classify address_class (
      .address(address),
      .ipv4_mapped(address_mapped),
      .ipv6_wildcard(address_ipv6_wildcard),
      .ipv4_wildcard(address_ipv4_wildcard),
      .loopback(address_loopback),
      .well_formed(address_well_formed)
  );

  logic source_well_formed;
  logic source_ipv4_wildcard;
  logic source_ipv6_wildcard;
  logic source_mapped;
  logic source_loopback;
  na_address_classify source_class (
      .address(source),
      .ipv4_mapped(source_mapped),
      .ipv6_wildcard(source_ipv6_wildcard),
      .ipv4_wildcard(source_ipv4_wildcard),
      .loopback(source_loopback),
      .well_formed(source_well_formed)
  );

  logic [na_protocol::ADDR_PORT_BITS-1:0] source_port;
  logic [na_protocol::ADDR_FAMILY_BITS-1:0] source_family;
  logic source_given;
  assign source_port = source[na_protocol::ADDR_PORT_LSB+:na_protocol::ADDR_PORT_BITS];
  assign source_family = source[na_protocol::ADDR_FAMILY_LSB+:na_protocol::ADDR_FAMILY_BITS];
  assign source_given = source_family == na_protocol::FAMILY_INET ||
                        source_family == na_protocol::FAMILY_INET6;

  assign listen_malformed = !address_well_formed || port == 0;
  assign connect_malformed = !address_well_formed || port == 0 ||
                             (source_port != 0 && !source_well_formed);

  always_comb begin
    destination = address;
    destination[na_protocol::ADDR_RESERVED_LSB+:na_protocol::ADDR_RESERVED_BITS] = '0;
    if (address_ipv4_wildcard) begin
      destination[na_protocol::ADDR_BYTES_LSB+96+:8]  = 8'd127;
      destination[na_protocol::ADDR_BYTES_LSB+120+:8] = 8'd1;
    end else if (address_ipv6_wildcard) begin
      destination[na_protocol::ADDR_BYTES_LSB+120+:8] = 8'd1;
    end
  end
  // Unspecified destinations become loopback, so they are mapped exactly when
  // the request's address is, and loopback when it was a wildcard.
  assign destination_ipv4_mapped = address_mapped;
  assign destination_loopback = address_loopback || address_ipv4_wildcard ||
                                address_ipv6_wildcard;

  assign client_needs_port = source_port == 0;
  assign client_from_destination = client_needs_port &&
                                   !(source_given && !source_ipv4_wildcard && !source_ipv6_wildcard);
  assign client_base = client_from_destination ? destination : source;

  // The monitor ignores the backlog (the kernel listener enforces it).
  logic unused;
  assign unused = ^{source_mapped, source_loopback,
                    descriptor[na_protocol::REQ_BACKLOG_LSB+:na_protocol::REQ_BACKLOG_BITS]};
endmodule
