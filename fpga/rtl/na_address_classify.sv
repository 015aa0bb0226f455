// What the engine needs to know about an InetAddress (IPv4 travels
// IPv4-mapped, so one comparison serves both families).
module na_address_classify
(
    input  logic [na_protocol::ADDRESS_BITS-1:0] address,
    output logic                    ipv4_mapped,
    output logic                    ipv6_wildcard,  // `::`
    output logic                    ipv4_wildcard,  // `0.0.0.0` as ::ffff:0.0.0.0
    output logic                    loopback,
    output logic                    well_formed     // a family we speak, AF_INET mapped
);
  logic [na_protocol::ADDR_BYTES_BITS-1:0] bytes;
  logic [na_protocol::ADDR_FAMILY_BITS-1:0] family;
  assign bytes = address[na_protocol::ADDR_BYTES_LSB+:na_protocol::ADDR_BYTES_BITS];
  assign family = address[na_protocol::ADDR_FAMILY_LSB+:na_protocol::ADDR_FAMILY_BITS];

  // Byte i of the address sits at bits [8i+7:8i] (memory order).
  assign ipv4_mapped = bytes[79:0] == '0 && bytes[95:80] == 16'hffff;
  assign ipv6_wildcard = bytes == '0;
  assign ipv4_wildcard = ipv4_mapped && bytes[127:96] == '0;
  assign loopback = ipv4_mapped ? bytes[103:96] == 8'd127
                                : bytes[119:0] == '0 && bytes[127:120] == 8'd1;
  logic unused;  // port and reserved byte say nothing about the host
  assign unused = ^{address[na_protocol::ADDR_PORT_LSB+:na_protocol::ADDR_PORT_BITS],
                    address[na_protocol::ADDR_RESERVED_LSB+:na_protocol::ADDR_RESERVED_BITS]};
  assign well_formed = family == na_protocol::FAMILY_INET6 ||
                       (family == na_protocol::FAMILY_INET && ipv4_mapped);
endmodule
