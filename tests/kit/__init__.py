"""The shared test kit: what many test files need, written once.

* :mod:`tests.kit.polling` -- :func:`~tests.kit.polling.until`, the one bounded wait for a
  condition; :func:`~tests.kit.polling.open_fds` for leak checks.
* :mod:`tests.kit.clock` -- manual clocks: ``ManualClock`` (``time``/``call_at``) for
  sans-IO code, and ``ManualLoop``, a real event loop whose time moves only when the test
  calls ``advance`` (``@pytest.mark.manual_clock`` runs a test and its async fixtures on
  one; ``run_manual`` runs a body on one), so adapter tests of intervals, back-offs and
  "nothing more happens" do not sleep.
* :mod:`tests.kit.netns` -- named network namespaces (unique names, deleted on exit),
  ``ip`` and running a command inside a namespace.
* :mod:`tests.kit.daemon` -- an in-process daemon with every driver, and adding
  ``-netdev`` lines to it as the command line does.
* :mod:`tests.kit.guests` -- the QEMU test guest on a vhost-user port joined to a user
  netdev on hub 0 (both halves), and the host-side HTTP server and client.
* :mod:`tests.kit.qemu` -- a bare QEMU (no machine) over QMP, for comparing error texts.
* :mod:`tests.kit.vhost_user` -- a raw vhost-user front end (guest memory, split rings,
  the message sequence) for driver tests.

The fixtures built on these (``ns``, ``image``, ``table``) are in ``tests/conftest.py``.
Nothing here runs at import time.
"""
