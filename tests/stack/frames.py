#!/usr/bin/env python3
"""Hand-built Ethernet/IPv4/TCP frames for tests/stack/bad_input.sh.

Sends frames on a raw AF_PACKET socket, so that nothing in the sender's
kernel fixes them up: each one is exactly the bytes built here, with
correct or deliberately wrong fields. Standard library only.

  frames.py send --interface IF --dst-mac MAC --src-ip A --dst-ip B --port P --kind K [--count N]
  frames.py flood --interface IF --dst-mac MAC --dst-ip B --port P --count N --spoof-from CIDR
                  [--exclude A,B,...]
  frames.py kinds

`send` prints one JSON line: the kind, the frames sent and the ones the
sender's kernel refused (a packet socket will not send a frame shorter than
an Ethernet header). `flood` sends SYNs from random ports of random
addresses in CIDR (less the excluded ones) and prints what it sent and how
fast.
"""

import argparse
import ipaddress
import json
import random
import socket
import struct
import sys
import time

ETH_P_IP = 0x0800
IPPROTO_TCP = 6
FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80
ALL_FLAGS = FIN | SYN | RST | PSH | ACK | URG | ECE | CWR


def fold(total):
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def ones_sum(data):
    if len(data) % 2:
        data += b"\0"
    return fold(sum(struct.unpack("!%dH" % (len(data) // 2), data)))


def checksum(data):
    return ~ones_sum(data) & 0xFFFF


def pseudo_sum(src, dst, tcp_length):
    """The pseudo-header's sum: what a local sender's CHECKSUM_PARTIAL leaves in the field."""
    return ones_sum(src + dst + struct.pack("!BBH", 0, IPPROTO_TCP, tcp_length))


def tcp_segment(src, dst, sport, dport, flags, seq=0, ack=0, doff_words=5, payload=b"",
                options=b"", csum=None):
    """A TCP segment; its checksum is the correct one unless `csum` says otherwise."""
    header = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, doff_words << 4, flags, 65535, 0, 0)
    segment = header + options + payload
    if csum is None:
        csum = checksum(src + dst + struct.pack("!BBH", 0, IPPROTO_TCP, len(segment)) + segment)
    return segment[:16] + struct.pack("!H", csum) + segment[18:]


def ipv4_header(src, dst, payload_length, total_length=None, ihl=5, version=4, csum=None,
                ident=0, frag=0x4000):
    """A 20-byte IPv4 header (ihl only sets the field); checksum correct unless given."""
    if total_length is None:
        total_length = 20 + payload_length
    header = struct.pack("!BBHHHBBH4s4s", (version << 4) | ihl, 0, total_length, ident, frag, 64,
                         IPPROTO_TCP, 0, src, dst)
    if csum is None:
        csum = checksum(header)
    return header[:10] + struct.pack("!H", csum) + header[12:]


def ethernet(dst_mac, src_mac, payload, ether_type=ETH_P_IP):
    return dst_mac + src_mac + struct.pack("!H", ether_type) + payload


# Each kind: what it breaks, and where the test expects it to end up.
KINDS = {
    "empty": "no bytes at all (the sender's kernel refuses it: EINVAL)",
    "ethernet-only": "an Ethernet header saying IPv4 and nothing after it (classifier: malformed)",
    "truncated-ip": "10 bytes of an IPv4 header (classifier: malformed)",
    "truncated-tcp": "a whole IPv4 header and 10 bytes of TCP (classifier: malformed)",
    "ip-length-long": "IPv4 total length 1000 in a 54-byte frame (stack: refused frame)",
    "ip-length-short": "IPv4 total length 30: the TCP header is cut by it (stack: TCP segment dropped)",
    "tcp-options-past-end": "TCP data offset 15 (60 bytes) over a 20-byte segment (stack: TCP segment dropped)",
    "bad-tcp-checksum": "TCP checksum neither valid nor a local partial sum (stack: checksum)",
    "bad-ip-checksum": "IPv4 header checksum wrong, TCP checksum right (stack: checksum)",
    "all-flags": "a TCP segment with all eight flags set, checksums right (stack: ignored, RST in LISTEN)",
}


def build(kind, dst_mac, src_mac, src, dst, sport, dport):
    seq = random.getrandbits(32)
    if kind == "empty":
        return b""
    if kind == "ethernet-only":
        return ethernet(dst_mac, src_mac, b"")
    if kind == "truncated-ip":
        return ethernet(dst_mac, src_mac, ipv4_header(src, dst, 20)[:10])
    if kind == "truncated-tcp":
        segment = tcp_segment(src, dst, sport, dport, SYN, seq)
        return ethernet(dst_mac, src_mac, ipv4_header(src, dst, 10) + segment[:10])
    if kind == "ip-length-long":
        segment = tcp_segment(src, dst, sport, dport, SYN, seq)
        return ethernet(dst_mac, src_mac, ipv4_header(src, dst, 20, total_length=1000) + segment)
    if kind == "ip-length-short":
        segment = tcp_segment(src, dst, sport, dport, SYN, seq)
        return ethernet(dst_mac, src_mac, ipv4_header(src, dst, 20, total_length=30) + segment)
    if kind == "tcp-options-past-end":
        segment = tcp_segment(src, dst, sport, dport, SYN, seq, doff_words=15)
        return ethernet(dst_mac, src_mac, ipv4_header(src, dst, len(segment)) + segment)
    if kind == "bad-tcp-checksum":
        good = tcp_segment(src, dst, sport, dport, SYN, seq)
        right = struct.unpack("!H", good[16:18])[0]
        partial = pseudo_sum(src, dst, len(good))
        wrong = right ^ 0x5A5A
        while wrong in (right, partial, (~partial) & 0xFFFF):
            wrong = (wrong + 1) & 0xFFFF
        segment = tcp_segment(src, dst, sport, dport, SYN, seq, csum=wrong)
        return ethernet(dst_mac, src_mac, ipv4_header(src, dst, len(segment)) + segment)
    if kind == "bad-ip-checksum":
        segment = tcp_segment(src, dst, sport, dport, SYN, seq)
        right = struct.unpack("!H", ipv4_header(src, dst, len(segment))[10:12])[0]
        header = ipv4_header(src, dst, len(segment), csum=right ^ 0x5A5A)
        return ethernet(dst_mac, src_mac, header + segment)
    if kind == "all-flags":
        segment = tcp_segment(src, dst, sport, dport, ALL_FLAGS, seq, ack=random.getrandbits(32))
        return ethernet(dst_mac, src_mac, ipv4_header(src, dst, len(segment)) + segment)
    raise SystemExit("unknown kind %r (frames.py kinds)" % kind)


def mac_bytes(text):
    parts = text.split(":")
    if len(parts) != 6:
        raise SystemExit("not a MAC address: %r" % text)
    return bytes(int(part, 16) for part in parts)


def own_mac(interface):
    with open("/sys/class/net/%s/address" % interface) as address:
        return mac_bytes(address.read().strip())


def open_socket(interface):
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP))
    sock.bind((interface, 0))
    # A big send buffer: the flood must not be paced by the sender's queue.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    return sock


def send(args):
    sock = open_socket(args.interface)
    dst_mac = mac_bytes(args.dst_mac)
    src_mac = own_mac(args.interface)
    src = socket.inet_aton(args.src_ip)
    dst = socket.inet_aton(args.dst_ip)
    sent = refused = 0
    errors = set()
    frame = b""
    for _ in range(args.count):
        frame = build(args.kind, dst_mac, src_mac, src, dst, random.randint(20000, 60000), args.port)
        try:
            sock.send(frame)
            sent += 1
        except OSError as error:
            refused += 1
            errors.add(error.strerror)
    print(json.dumps({"kind": args.kind, "sent": sent, "refused_by_sender": refused,
                      "errors": sorted(errors), "bytes": len(frame)}))


def flood(args):
    sock = open_socket(args.interface)
    dst_mac = mac_bytes(args.dst_mac)
    src_mac = own_mac(args.interface)
    dst = socket.inet_aton(args.dst_ip)
    excluded = {ipaddress.ip_address(a) for a in args.exclude.split(",") if a}
    network = ipaddress.ip_network(args.spoof_from)
    sources = [socket.inet_aton(str(a)) for a in network.hosts() if a not in excluded]
    if not sources:
        raise SystemExit("no address left in %s to send from" % args.spoof_from)
    # Frames are built ahead of time so that the flood runs at the socket's
    # pace rather than at Python's checksum speed.
    frames = []
    for _ in range(args.count):
        src = random.choice(sources)
        segment = tcp_segment(src, dst, random.randint(1024, 65535), args.port, SYN,
                              random.getrandbits(32))
        frames.append(ethernet(dst_mac, src_mac, ipv4_header(src, dst, len(segment)) + segment))
    start = time.monotonic()
    sent = 0
    for frame in frames:
        while True:
            try:
                sock.send(frame)
                break
            except OSError:  # ENOBUFS: the queue is full for a moment
                time.sleep(0.0005)
        sent += 1
    seconds = time.monotonic() - start
    print(json.dumps({"sent": sent, "seconds": round(seconds, 3),
                      "per_second": round(sent / seconds) if seconds > 0 else None,
                      "sources": len(sources)}))


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    one = commands.add_parser("send")
    one.add_argument("--interface", required=True)
    one.add_argument("--dst-mac", required=True)
    one.add_argument("--src-ip", required=True)
    one.add_argument("--dst-ip", required=True)
    one.add_argument("--port", type=int, required=True)
    one.add_argument("--kind", required=True, choices=sorted(KINDS))
    one.add_argument("--count", type=int, default=1)
    many = commands.add_parser("flood")
    many.add_argument("--interface", required=True)
    many.add_argument("--dst-mac", required=True)
    many.add_argument("--dst-ip", required=True)
    many.add_argument("--port", type=int, required=True)
    many.add_argument("--count", type=int, default=100000)
    many.add_argument("--spoof-from", required=True)
    many.add_argument("--exclude", default="")
    commands.add_parser("kinds")
    args = parser.parse_args()
    if args.command == "kinds":
        for kind, what in KINDS.items():
            print("%-22s %s" % (kind, what))
        return 0
    if args.command == "send":
        send(args)
    else:
        flood(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
