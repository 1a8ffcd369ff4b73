"""``python -m llmbrick_gateway``: the same as the ``llmbrick`` command."""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
