"""netstack: a userspace virtual-network backend daemon.

The package holds the core (schema, forwarding, control plane); drivers live in the
top-level ``drivers`` package and are joined to the core only by the composition root
(``netstack.cli``).
"""

__version__ = "0.1.0"
