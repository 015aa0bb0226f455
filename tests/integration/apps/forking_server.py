"""socketserver.ForkingTCPServer: the parent accepts and forks a child per
connection, then closes its copy of the connection; the child answers."""
import socketserver
import sys


class Echo(socketserver.StreamRequestHandler):
    def handle(self):
        self.wfile.write(b"child: " + self.rfile.readline())


with socketserver.ForkingTCPServer(("127.0.0.1", int(sys.argv[1])), Echo) as server:
    server.serve_forever()
