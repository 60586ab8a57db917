"""The IPv4 side of the user netdev: the gateway (ARP, IPv4, UDP/ICMP dispatch, NAT
policy), its host sockets, DHCPv4 and the IPv4 glue of the shared reassembly core. The
IPv6 side (:mod:`drivers.user.v6`) has the same shape; what both use lives in
:mod:`drivers.user`, the header codecs in :mod:`netstack.proto`."""
