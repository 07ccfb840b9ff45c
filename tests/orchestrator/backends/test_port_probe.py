"""port_answers: a listener answers; nothing listening does not; and a probe that connected to
itself (a port in the ephemeral range can be its own source port) is no answer."""

from __future__ import annotations

import socket

from orchestrator.backends.common import connected_to_itself, port_answers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_listening_port_answers_and_a_closed_one_does_not() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = int(listener.getsockname()[1])
        assert port_answers(port)
    assert not port_answers(port)


def test_a_socket_connected_to_itself_is_not_an_answer() -> None:
    port = free_port()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", port))
        probe.connect(("127.0.0.1", port))  # TCP simultaneous open: connected, nobody listens
        assert connected_to_itself(probe)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        with socket.create_connection(listener.getsockname(), timeout=1) as client:
            assert not connected_to_itself(client)
