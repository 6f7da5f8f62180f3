"""The test suite executes these notebooks (pytest --nbmake) in quick mode: each reads
``NTK_BRIDGE_QUICK`` and runs smaller sizes with the same checks."""
import os

os.environ.setdefault("NTK_BRIDGE_QUICK", "1")
