"""The dev broker's ports are reserved (issue 27, "Also"): its KRaft controller port is checked by binding, not
by connecting, and free_port() draws from outside the kernel's ephemeral range, where no outgoing
connection can take a port while a server starts."""

import socket
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from consumer.devinfra.stack import KafkaNode, ephemeral_ports, free_port, port_free
from consumer.kafka.topics import ensure_topics


def _controller_port(props: dict[str, str]) -> int:
    return int(props["listeners"].split("CONTROLLER://127.0.0.1:")[1])


def _written(node: KafkaNode) -> dict[str, str]:
    return dict(line.split("=", 1) for line in node.properties_file.read_text().splitlines() if "=" in line)


def _client_on(local_port: int) -> tuple[socket.socket, socket.socket, socket.socket]:
    """An outgoing connection whose local end is `local_port`, as an ephemeral port of any client would be:
    nothing listens there (a connect test says free), but a server cannot bind it."""
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.socket()
    client.bind(("127.0.0.1", local_port))
    client.connect(server.getsockname())
    accepted, _ = server.accept()
    return server, client, accepted


def test_free_ports_are_distinct_bindable_and_outside_the_ephemeral_range() -> None:
    ports = [free_port() for _ in range(40)]
    assert len(set(ports)) == len(ports)
    ephemeral = ephemeral_ports()
    assert not [p for p in ports if p in ephemeral], (ephemeral, ports)
    assert all(port_free(p) for p in ports)


def test_a_controller_port_held_by_a_client_socket_is_not_taken(tmp_path: Path) -> None:
    port = free_port()
    held = _client_on(port + 1)
    try:
        assert not port_free(port + 1)
        node = KafkaNode(port=port, state_dir=tmp_path)
        assert _controller_port(node.properties()) not in (port, port + 1)
        # The real broker starts, and restarts (on the same controller port), while port + 1 stays held.
        node.start()
        try:
            controller = _controller_port(_written(node))
            assert controller not in (port, port + 1)
            ensure_topics(node.bootstrap, ["kept"], 1)
            node.stop()
            node.start()
            assert _controller_port(_written(node)) == controller
            assert "kept" in AdminClient({"bootstrap.servers": node.bootstrap}).list_topics(timeout=10).topics
        finally:
            node.stop()
    finally:
        for s in held:
            s.close()


def test_the_controller_port_is_port_plus_one_when_free(tmp_path: Path) -> None:
    port = free_port()
    if not port_free(port + 1):
        pytest.skip("another process holds port + 1 right now: the fallback is the test above")
    assert _controller_port(KafkaNode(port=port, state_dir=tmp_path).properties()) == port + 1
