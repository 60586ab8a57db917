"""The live web view: a static page that drives netstackd over QMP, and its small server.

``static/`` holds the page (HTML, CSS, plain JavaScript modules; package data, nothing
built, nothing fetched from elsewhere). The page talks QMP over a websocket chardev
(``-chardev socket,websocket=on,...`` + ``-mon ...,mode=control``); :mod:`.server` serves
the files and the page's configuration over HTTP from the daemon's own loop and offers
captures as pcapng downloads (:mod:`.capture`); :mod:`.http` is the HTTP wire format.
Started by ``netstackd -webview tcp:HOST:PORT[,chardev=ID]``; off by default.
"""

from .server import WebView, WebViewSpec, parse_spec

__all__ = ["WebView", "WebViewSpec", "parse_spec"]
