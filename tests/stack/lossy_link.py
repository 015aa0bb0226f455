#!/usr/bin/env python3
"""A lossy, reordering, delaying Ethernet link between two interfaces, in
user space: for kernels without sch_netem. Every frame that arrives on one
interface leaves on the other after DELAY ms, except LOSS of them (dropped)
and REORDER of them (held DELAY ms more, so that later frames overtake
them). The senders must put complete checksums and no GSO super-frames on
the wire (ethtool -K IFACE tx off tso off gso off): a packet socket passes
frames on as they are.

    lossy_link.py IFACE_A IFACE_B --loss 0.01 --reorder 0.05 --delay-ms 1
Prints its counts as JSON on SIGTERM or SIGINT."""
import argparse
import heapq
import json
import random
import select
import signal
import socket
import sys
import time

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("iface_a")
    parser.add_argument("iface_b")
    parser.add_argument("--loss", type=float, default=0.01)
    parser.add_argument("--reorder", type=float, default=0.05)
    parser.add_argument("--delay-ms", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=12)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    delay = args.delay_ms / 1000.0

    sockets = {}
    for name in (args.iface_a, args.iface_b):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        s.bind((name, ETH_P_ALL))
        s.setblocking(False)
        sockets[name] = s
    other = {sockets[args.iface_a]: sockets[args.iface_b], sockets[args.iface_b]: sockets[args.iface_a]}
    counts = {"forwarded": 0, "dropped": 0, "reordered": 0}
    pending = []  # (due, sequence, socket, frame)
    sequence = 0
    running = True

    def stop(*_):
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while running:
        now = time.monotonic()
        while pending and pending[0][0] <= now:
            _, _, out, frame = heapq.heappop(pending)
            try:
                out.send(frame)
                counts["forwarded"] += 1
            except OSError:
                counts["dropped"] += 1
        timeout = max(0.0, pending[0][0] - now) if pending else 0.1
        try:
            ready, _, _ = select.select(list(other), [], [], timeout)
        except InterruptedError:
            continue
        for s in ready:
            while True:
                try:
                    frame, address = s.recvfrom(65536)
                except (BlockingIOError, InterruptedError):
                    break
                if address[2] == PACKET_OUTGOING:
                    continue  # what we sent ourselves
                roll = rng.random()
                if roll < args.loss:
                    counts["dropped"] += 1
                    continue
                due = time.monotonic() + delay
                if roll < args.loss + args.reorder:
                    due += delay
                    counts["reordered"] += 1
                sequence += 1
                heapq.heappush(pending, (due, sequence, other[s], frame))
    print(json.dumps(counts), flush=True)


if __name__ == "__main__":
    sys.exit(main())
