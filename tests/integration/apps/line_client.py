"""Opens COUNT connections to PORT one after another, sends one line on each
and checks that the answer ends with it. Prints how many answers each
responder (the text before ':') gave."""
import collections
import socket
import sys

port, count = int(sys.argv[1]), int(sys.argv[2])
responders = collections.Counter()
for number in range(count):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        line = b"request %d\n" % number
        connection.sendall(line)
        answer = b""
        while chunk := connection.recv(4096):
            answer += chunk
        if not answer.endswith(line):
            sys.exit("connection %d: answer %r does not end with %r" % (number, answer, line))
        responders[answer.split(b":")[0].decode()] += 1
print(" ".join("%s=%d" % item for item in sorted(responders.items())))
