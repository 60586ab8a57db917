"""The shared test kit: what many test files need, written once.

* :mod:`tests.kit.polling` -- :func:`until`, the one bounded wait for a condition;
  :func:`open_fds`, the descriptor count leak checks compare.
* :mod:`tests.kit.netns` -- named network namespaces (unique names, deleted on exit) and
  the ``ip`` helpers tests shell out to.
* :mod:`tests.kit.guests` -- the QEMU test guest attached over vhost-user to a user netdev
  on hub 0, and the host-side HTTP pieces those tests serve and fetch with.
* :mod:`tests.kit.vhost_user` -- a raw vhost-user front end (guest memory, split rings,
  the message sequence) for driver tests.

Fixtures that use these live in ``tests/conftest.py``. Nothing here runs at import time.
"""
