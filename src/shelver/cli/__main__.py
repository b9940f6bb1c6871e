"""``python -m shelver.cli``: the ``shelver`` command."""

from __future__ import annotations

from shelver.cli import main

if __name__ == "__main__":
    main()
