"""``netstack-capture``: live packet capture from a running netstack daemon (or QEMU).

Usage::

    netstack-capture -s /run/user/1000/netstack/qmp.sock n0 | tshark -r -
    netstack-capture -s SOCK n0 u0 hub:0 -f 'icmp or arp' -w both.pcapng
    netstack-capture -s SOCK n0 | wireshark -k -i -
    netstack-capture -s SOCK -D            # list netdevs and hubs

Design
------
*Transport.* The tool talks QMP to the daemon (``qemu.qmp``'s ``QMPClient``, asyncio) and
asks for one ``filter-dump`` per capture point whose ``file`` is a FIFO in a private
(0700) directory the tool created and reads. Nothing else is needed on the daemon side:
no chardev, no new command. netstack's filter-dump opens a FIFO non-blocking and never
blocks its loop on it (a reader that falls behind costs dropped records, counted and
reported at the end, never a stalled daemon). With netstack the filters use the
beyond-QEMU ``format=pcapng``: one stream per netdev in which the daemon stamps every
frame with its time and direction. Against a daemon without ``format`` - QEMU itself -
the tool falls back to two classic pcap filter-dumps per netdev (``queue=rx`` and
``queue=tx``) and still knows each frame's direction (ordering between the two is by
arrival). See :mod:`tools.capture.session`.

*Hubs.* ``hub:N`` captures on every port of hub N (found in ``info network``) with
``queue=rx``: the frames *entering* the hub, each exactly once, at the port it came in
by; each port is its own interface in the output. Ports added later are not captured.

*Output.* pcapng by default: one Section Header, one Interface Description per capture
point named after the netdev (or hub port), Enhanced Packet Blocks with nanosecond
timestamps and ``epb_flags`` direction (inbound = frames sent *to* the netdev by its
peer, queue ``rx``; outbound = frames the netdev sends, queue ``tx``). ``-F pcap`` writes
classic pcap instead (one link type, no interface or direction). Every packet is handed
to the output as soon as it is read, so ``tshark -r -`` and ``wireshark -k -i -`` follow
live. A slow reader on a pipe pauses the tool's reads, which makes the daemon drop (not
wait).

*Capture filter.* ``-f EXPR`` takes tcpdump syntax, compiled by libpcap
(:mod:`tools.capture.bpf`, ctypes) and run in the tool on each frame. The daemon streams
every frame of the captured netdevs; netdevs that are not captured carry no filter at all
and pay nothing.

*Life.* SIGINT, SIGTERM, the reader of stdout going away, ``-c COUNT`` packets, or the end
of every stream (netdevs deleted, daemon gone) end the capture: the tool deletes the
objects it created (``object-del``), reads what the daemon still flushes (including the
pcapng statistics block with the daemon's drop count), removes its FIFOs and directory,
and prints ``N packets captured`` on stderr (a live counter runs there while stderr is a
terminal). A tool killed with SIGKILL leaves its filters behind, inert after their first
failed write; their ids start with ``netstack-capture-<pid>-`` and ``object-del`` removes
them.
"""
