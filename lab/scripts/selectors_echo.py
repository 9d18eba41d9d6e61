#!/usr/bin/env python3
"""The `selectors` echo server of the Python notes selreactor grew from, as a benchmark peer.

Same program: one DefaultSelector, an `accept` callback for the listener and a `read` callback
per connection, dispatched from `key.data`. Changed only so it can be measured like the other
servers: the address comes from argv, nothing is printed per message, TCP_NODELAY is set, and
a short write keeps the rest and waits for EVENT_WRITE (the notes' bare `send` would drop it),
exactly the level-triggered step of lab/src/bin/peer_echo.rs.

usage: lab/scripts/selectors_echo.py HOST:PORT
"""
import selectors
import socket
import sys

sel = selectors.DefaultSelector()
pending = {}  # conn -> bytes not yet written


def accept(sock, mask):
    try:
        conn, _ = sock.accept()
    except BlockingIOError:
        return
    conn.setblocking(False)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sel.register(conn, selectors.EVENT_READ, echo)


def close(conn):
    pending.pop(conn, None)
    sel.unregister(conn)
    conn.close()


def echo(conn, mask):
    try:
        rest = pending.get(conn)
        if rest:
            n = conn.send(rest)
            rest = rest[n:]
            if rest:
                pending[conn] = rest
            else:
                del pending[conn]
                sel.modify(conn, selectors.EVENT_READ, echo)
            return
        data = conn.recv(65536)
        if not data:
            close(conn)
            return
        n = conn.send(data)
        if n < len(data):
            pending[conn] = data[n:]
            sel.modify(conn, selectors.EVENT_WRITE, echo)
    except BlockingIOError:
        pass
    except OSError:
        close(conn)


def main():
    host, port = sys.argv[1].rsplit(":", 1)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, int(port)))
    sock.listen(1024)
    sock.setblocking(False)
    sel.register(sock, selectors.EVENT_READ, accept)
    while True:
        for key, mask in sel.select():
            callback = key.data
            callback(key.fileobj, mask)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
