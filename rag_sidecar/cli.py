"""``rag-sidecar``: the gateway's commands (:mod:`gateway.cli`) plus ``chaos`` (:mod:`chaos.cli`).

This module stands above both packages so that neither imports the other's command line.
"""
from __future__ import annotations

import sys
from collections.abc import Sequence

from gateway.cli import Register
from gateway.cli import main as gateway_main


def _commands() -> tuple[Register, ...]:
    try:
        from chaos.cli import register
    except ImportError:  # an install without the chaos tools still serves
        return ()
    return (register,)


def main(argv: Sequence[str] | None = None) -> int:
    return gateway_main(argv, commands=_commands())


if __name__ == "__main__":
    sys.exit(main())
