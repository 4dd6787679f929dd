"""What the last drill of this process found (a Chaos Toolkit run is one process)."""
from __future__ import annotations

from typing import Any

LAST: dict[str, Any] | None = None
