"""Drives tests/integration/monitor_restart.sh: keeps one connection to an
echo server across the monitor's death and restart, and opens new ones in
each phase. Phases advance when the test creates the files it waits for.

    restart_client.py PORT DIR"""
import os
import socket
import sys
import time

port, directory = int(sys.argv[1]), sys.argv[2]


def echo(connection, text):
    line = text.encode() + b"\n"
    connection.sendall(line)
    answer = b""
    while not answer.endswith(b"\n"):
        chunk = connection.recv(4096)
        if not chunk:
            sys.exit("connection closed while waiting for the echo of %r" % text)
        answer += chunk
    if answer != line:
        sys.exit("echo of %r came back as %r" % (text, answer))


def new_connection(text):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        echo(connection, text)


def phase(name):
    open(os.path.join(directory, name), "w").close()


def wait_for(name):
    deadline = time.monotonic() + 60
    while not os.path.exists(os.path.join(directory, name)):
        if time.monotonic() > deadline:
            sys.exit("the test never created " + name)
        time.sleep(0.01)


kept = socket.create_connection(("127.0.0.1", port), timeout=10)
echo(kept, "before")
new_connection("new before")
phase("connected")
wait_for("monitor-killed")
echo(kept, "while the monitor is down")
new_connection("new while the monitor is down")
phase("checked-down")
wait_for("monitor-restarted")
echo(kept, "after the restart")
# Processes look for a monitor again once a second, and a server announces
# its listener when it next waits for connections: for 6 s, a new
# connection every 100 ms; the later ones go through the new monitor.
for number in range(60):
    new_connection("new after the restart %d" % number)
    time.sleep(0.1)
kept.close()
phase("finished")
