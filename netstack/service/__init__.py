"""Running netstackd as a system service: systemd readiness and watchdog
(:mod:`.notify`), socket activation (:mod:`.activation`), and the Prometheus metrics
endpoint (:mod:`.metrics`, :mod:`.metrics_http`). Importing this package has no side
effects; ``docs/service.md`` is the operator's guide.
"""
