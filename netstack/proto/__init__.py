"""Hot-path protocol helpers on bytes and memoryviews: checksums, headers, vnet headers."""
