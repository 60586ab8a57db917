"""Developer and test tooling for netstack (not part of the daemon)."""
