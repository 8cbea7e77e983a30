"""Where the Node side of the bridge lives: the legacy tap and the sample legacy service (``node/``)."""

from pathlib import Path

__all__ = ["NODE_DIR"]

NODE_DIR = Path(__file__).resolve().parent / "node"
"""The Node project (``package.json``, ``src/``, ``bin/``): run its programs with this as the working directory."""
