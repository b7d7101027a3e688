"""A loopback TCP proxy for fault drills: put it between a host and PostgreSQL, Redis or
a receiver, then :meth:`TcpProxy.cut` (connections refused, open ones dropped, as when
the service dies) and :meth:`TcpProxy.restore` (served again, same port).

Standard library only, threads (two per connection), for tests and ``benchmarks/``:
not a production proxy. ::

    with TcpProxy(("127.0.0.1", 5432)) as pg:
        url = f"postgresql+psycopg://postgres@127.0.0.1:{pg.port}/test"
        ...
        pg.cut()
        pg.restore()
"""

from __future__ import annotations

import contextlib
import socket
import threading

CHUNK = 65536


class TcpProxy:
    def __init__(self, target: tuple[str, int], *, port: int = 0, host: str = "127.0.0.1") -> None:
        self.target = target
        self.host = host
        self.port = port
        self.accepted = 0  # connections taken over the proxy's life
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- control -------------------------------------------------------------------------

    def start(self) -> TcpProxy:
        """Listen (again, on the same port once one was chosen)."""
        if self._listener is not None:
            return self
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        listener.listen(128)
        listener.settimeout(0.05)  # the accept loop looks at the stop event this often
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, args=(listener, self._stop),
                                        name=f"tcp-proxy-{self.port}", daemon=True)
        self._thread.start()
        return self

    def cut(self) -> None:
        """Stop listening (new connections are refused) and drop every open one."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            dropping, self._open = self._open, set()
        for sock in dropping:
            _close(sock)

    def restore(self) -> None:
        self.start()

    @property
    def is_up(self) -> bool:
        return self._listener is not None

    def close(self) -> None:
        self.cut()

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the work ------------------------------------------------------------------------

    def _accept(self, listener: socket.socket, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _close(client)  # the service itself is down: so is the proxy, for this client
                continue
            client.settimeout(None)
            upstream.settimeout(None)
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                if stop.is_set():
                    _close(client)
                    _close(upstream)
                    return
                self._open |= {client, upstream}
                self.accepted += 1
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(CHUNK):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._open.discard(src)
                self._open.discard(dst)
            _close(src)
            _close(dst)


def _close(sock: socket.socket) -> None:
    # shutdown first: it wakes a thread blocked in recv() on this socket (close alone may not).
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
