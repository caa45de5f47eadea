#!/usr/bin/env python3
"""Raw HTTP over one loopback socket, for the requests curl will not send (malformed framing,
headers or bodies trickled a few bytes at a time). Not a test itself: e2e_serve_api.sh uses it.

  rawhttp.py send ADDR REQUEST         send REQUEST (Python escapes: \\r\\n, \\xff) and print
                                       everything the server answers until it closes or 3 s pass
  rawhttp.py bighead ADDR KIB          send a GET /healthz with one header of KIB KiB and print the
                                       answer (the send may break off when the server answers)
  rawhttp.py trickle ADDR HEAD PIECE N DELAY
                                       send HEAD (then print "connected"), then PIECE N times
                                       DELAY seconds apart; print "closed after K" when the
                                       server closed the connection after K pieces, "finished"
                                       when all N went out, then the server's answer (if any)
"""
import socket
import sys
import time


def unescape(s):
    return s.encode().decode("unicode_escape").encode("latin1")


def connect(addr):
    host, port = addr.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=3)


def read_all(s, limit=3.0):
    out = b""
    s.settimeout(limit)
    try:
        while True:
            b = s.recv(65536)
            if not b:
                break
            out += b
    except (socket.timeout, ConnectionResetError):
        pass
    return out


def closed_by_peer(s):
    s.setblocking(False)
    try:
        b = s.recv(65536, socket.MSG_PEEK)
        return b == b""
    except BlockingIOError:
        return False
    except (ConnectionResetError, BrokenPipeError):
        return True
    finally:
        s.setblocking(True)


def main():
    mode, addr = sys.argv[1], sys.argv[2]
    s = connect(addr)
    if mode == "send":
        s.sendall(unescape(sys.argv[3]))
        sys.stdout.write(read_all(s).decode("latin1"))
        return 0
    if mode == "bighead":
        try:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " +
                      b"a" * (int(sys.argv[3]) << 10) + b"\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        sys.stdout.write(read_all(s).decode("latin1"))
        return 0
    if mode == "trickle":
        head, piece = unescape(sys.argv[3]), unescape(sys.argv[4])
        n, delay = int(sys.argv[5]), float(sys.argv[6])
        s.sendall(head)
        print("connected", flush=True)
        for k in range(n):
            time.sleep(delay)
            if closed_by_peer(s):
                print("closed after %d" % k)
                return 0
            try:
                s.sendall(piece)
            except (BrokenPipeError, ConnectionResetError):
                print("closed after %d" % k)
                return 0
        print("finished")
        sys.stdout.write(read_all(s, 1.0).decode("latin1"))
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
