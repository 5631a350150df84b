"""Where the servers a run starts listen: SGLang engines, the router, the trainers' rendezvous."""

from __future__ import annotations

import socket

import ray

LOOPBACK = "127.0.0.1"


def node_address(single_machine: bool) -> str:
    """Loopback when the run started its own Ray on this machine (nothing outside it needs to connect),
    else this node's address on the cluster network."""
    return LOOPBACK if single_machine else ray.util.get_node_ip_address()


def free_port(host: str = "") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]
