"""The allowed values of the grid's enumerated settings, spelled once.

Every module that compares, defaults or lists one of these values imports the constant from here
(``tests/test_structure.py`` counts the modules that spell them). The test-time head of ANIL and MAML
(``--test-head``, column ``test_head``; docs/theory.md §3.5):

* :data:`LEARNED` -- the meta-trained head is kept and adapted on the support (the paper's protocol);
* :data:`RESET` -- the trained body with the head put back at its initialisation ``w0`` before the
  adaptation, the protocol MTL always follows.
"""

from __future__ import annotations

__all__ = ["LEARNED", "RESET", "TEST_HEADS"]

LEARNED = "learned"
RESET = "reset"
#: The test heads, the default first.
TEST_HEADS = (LEARNED, RESET)
