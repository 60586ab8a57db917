"""The forwarding core: net clients, peers, queues, hubs, link state, NIC rx filters."""
