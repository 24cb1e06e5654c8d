#!/usr/bin/env python3
"""A sensor that accepts connections, reads the request, and never answers: the
worst kind of slow watcher. Used to prove that timeouts cut it off and that it
holds back no other watcher."""
import socket
import sys
import threading

port = int(sys.argv[sys.argv.index("--port") + 1])
server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", port))
server.listen(128)
held = []


def swallow(conn):
    held.append(conn)
    try:
        while conn.recv(65536):
            pass
    except OSError:
        pass


while True:
    conn, _ = server.accept()
    threading.Thread(target=swallow, args=(conn,), daemon=True).start()
