"""QMP and QGA control plane: JSON framing, sessions, command table, events, server."""
