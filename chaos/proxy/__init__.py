"""TCP fault proxy with Toxiproxy's HTTP API, and a client for that API.

- :class:`FaultProxyServer` — proxies + toxics + the HTTP API (``server``)
- :class:`Proxy`, :class:`Toxic`, ``TOXIC_TYPES`` — the model (``tcp_proxy``, ``toxics``)
- :class:`ToxiproxyClient` — async client for our server or a real Toxiproxy (``client``)
- :func:`main` — ``python -m chaos.proxy --host 127.0.0.1 --port 8474 [--config proxies.json]``
"""
from chaos.proxy.cli import main
from chaos.proxy.client import (
    ToxiproxyBadRequest,
    ToxiproxyClient,
    ToxiproxyConflict,
    ToxiproxyError,
    ToxiproxyNotFound,
)
from chaos.proxy.errors import ApiError
from chaos.proxy.server import VERSION, FaultProxyServer
from chaos.proxy.tcp_proxy import Proxy
from chaos.proxy.toxics import DOWNSTREAM, TOXIC_TYPES, UPSTREAM, Toxic

__all__ = [
    "ApiError", "DOWNSTREAM", "FaultProxyServer", "Proxy", "TOXIC_TYPES", "Toxic", "ToxiproxyBadRequest",
    "ToxiproxyClient", "ToxiproxyConflict", "ToxiproxyError", "ToxiproxyNotFound", "UPSTREAM", "VERSION", "main",
]
