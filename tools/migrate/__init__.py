"""Live migration of VMs attached to netstackd over vhost-user: driving QEMU's migration
(:mod:`.qemu`) and, between two daemons, moving the user netdev's guest-facing state
around it (``python -m tools.migrate``, :mod:`.__main__`). Importing it has no side
effects."""
