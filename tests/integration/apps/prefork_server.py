"""A pre-fork server as nginx and gunicorn are built: the master listens,
forks the workers, and never accepts; the workers accept on the listener
they inherited. Each answers one line per connection, naming itself."""
import os
import signal
import socket
import sys

port, workers = int(sys.argv[1]), int(sys.argv[2])
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", port))
listener.listen(128)
children = []
for number in range(workers):
    pid = os.fork()
    if pid == 0:
        while True:
            connection, _ = listener.accept()
            request = connection.makefile("rb").readline()
            connection.sendall(b"worker %d: " % number + request)
            connection.close()
    children.append(pid)
signal.sigwait([signal.SIGTERM])
for pid in children:
    os.kill(pid, signal.SIGKILL)
