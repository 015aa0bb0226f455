#!/usr/bin/env python3
"""Sends one malformed request on the user-space stack's control socket and
says what came back, for tests/stack/bad_input.sh.

  control_garbage.py SOCKET CASE      (control_garbage.py --cases lists them)
  control_garbage.py SOCKET connect ADDRESS PORT
                                      a well-formed connect request

The socket is SOCK_SEQPACKET; a request is stack_protocol.h's StackRequest
(magic, version, op, address, port, backlog: native byte order, 20 bytes),
a reply its StackReply (48 bytes; kind and error are words 2 and 3). Prints
one JSON line: {"case", "reply": "failed" | "closed" | "timeout" | "other",
"error": errno name of a failure reply, "kind": the reply's kind}.
"""

import errno
import json
import os
import socket
import struct
import sys

MAGIC = 0x4E415354
VERSION = 1
CONNECT, LISTEN = 1, 2
FAILED = 4
REPLY_BYTES = 48


def request(magic=MAGIC, version=VERSION, op=LISTEN, address=0, port=0, backlog=0):
    return struct.pack("=IIIIHH", magic, version, op, address, port, backlog)


def random_bytes(length):
    # Random, but never by chance a valid request's header.
    data = bytearray(os.urandom(length))
    if struct.unpack_from("=I", data)[0] == MAGIC:
        data[0] ^= 0xFF
    return bytes(data)


CASES = {
    "random": lambda: random_bytes(20),
    "random-long": lambda: random_bytes(4096),
    "short": lambda: request()[:8],
    "one-byte": lambda: b"\x54",
    "empty": lambda: b"",
    "wrong-magic": lambda: request(magic=0xDEADBEEF),
    "wrong-version": lambda: request(version=VERSION + 41),
    "unknown-op": lambda: request(op=99),
    "op-zero": lambda: request(op=0),
    "silent": None,  # connects and says nothing, then hangs up
}


def run(path, case, message):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.settimeout(5)
    sock.connect(path)
    result = {"case": case}
    if message is None:
        sock.close()
        result["reply"] = "closed"
        return result
    sock.send(message)
    try:
        reply = sock.recv(4096)
    except socket.timeout:
        result["reply"] = "timeout"
        return result
    except ConnectionResetError:
        reply = b""
    if not reply:
        result["reply"] = "closed"
        return result
    if len(reply) < 16:
        result["reply"] = "other"
        result["bytes"] = reply.hex()
        return result
    magic, version, kind, error = struct.unpack_from("=IIIi", reply)
    result["kind"] = kind
    if magic == MAGIC and kind == FAILED:
        result["reply"] = "failed"
        result["error"] = errno.errorcode.get(error, str(error))
    else:
        result["reply"] = "other"
    # After its one answer the stack closes the connection.
    try:
        result["then"] = "closed" if sock.recv(4096) == b"" else "more"
    except socket.timeout:
        result["then"] = "open"
    except ConnectionResetError:
        result["then"] = "closed"
    return result


def main():
    if len(sys.argv) == 2 and sys.argv[1] == "--cases":
        print("\n".join(CASES))
        return 0
    if len(sys.argv) == 5 and sys.argv[2] == "connect":
        address = struct.unpack("=I", socket.inet_aton(sys.argv[3]))[0]
        message = request(op=CONNECT, address=address, port=int(sys.argv[4]))
        print(json.dumps(run(sys.argv[1], "connect %s:%s" % (sys.argv[3], sys.argv[4]), message)))
        return 0
    if len(sys.argv) != 3 or sys.argv[2] not in CASES:
        sys.exit("usage: control_garbage.py SOCKET CASE (--cases lists them)")
    make = CASES[sys.argv[2]]
    print(json.dumps(run(sys.argv[1], sys.argv[2], make() if make else None)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
