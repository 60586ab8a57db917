"""``netstack-extcap``: a Wireshark extcap plugin for live capture from netstack daemons.

Wireshark (and ``tshark``, ``dumpcap``) runs every executable in its extcap directory
with ``--extcap-interfaces`` to learn what it can capture from; this plugin lists every
netdev (``netstack:ID``) and every hub (``netstack:hub:N``, all its ports) of each
netstack daemon it can reach, so they appear in Wireshark's interface list and in
``tshark -D``. Choosing one runs the plugin again with ``--capture --fifo PATH``: it
streams the capture into Wireshark's FIFO until Wireshark stops it (SIGTERM), the FIFO's
reader goes away, or the netdev does. Protocol: Wireshark's ``doc/extcap.adoc`` and
``extcap_parser.c`` (the ``extcap {...}``, ``interface {...}``, ``dlt {...}`` and
``arg {...}`` sentences).

Daemons: the QMP sockets in ``$NETSTACK_QMP`` (``:``-separated; the first one's
interfaces are ``netstack:...``, the second's ``netstack2:...``), else those of the
embedded default (``$XDG_RUNTIME_DIR/netstack/qmp.sock``, ``/run/user/UID/netstack`` or
``/tmp/netstack-UID``) and of the system service (``/run/netstack/qmp.sock``) that exist.
A daemon that does not answer within :data:`tools.extcap.__main__.CONNECT_TIMEOUT` is
left out of the list rather than stalling Wireshark's start.

The capture itself is ``netstack-capture``'s (:mod:`tools.capture`): one ``filter-dump``
with ``format=pcapng`` per capture point, written into a FIFO the tool reads, frames
stamped with their direction; the capture filter (Wireshark's capture-filter field,
``--extcap-capture-filter``) is compiled by libpcap and applied in the plugin. Offloaded
frames arrive with their checksums completed; the ``Segment offloaded super-frames``
option (``--segment``) asks for the MTU-sized segments the wire carries instead.

Install: ``netstack-extcap --install DIR`` writes a small executable ``DIR/netstack``
that runs this module with the current Python; DIR is Wireshark's extcap directory
(``tshark -G folders``: ``Extcap path``, or a ``Personal Extcap path`` where the
Wireshark version lists one), or a directory named by ``WIRESHARK_EXTCAP_DIR`` (honoured
for users without special privileges only).
"""
