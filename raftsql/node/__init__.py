"""The asyncio driver that runs the pure Raft core for any state machine."""

from raftsql.node.addresses import Member
from raftsql.node.applier import StateMachine
from raftsql.node.config import NodeConfig
from raftsql.node.node import Node

__all__ = ["Member", "Node", "NodeConfig", "StateMachine"]
