"""The allowed values of the grid's enumerated settings, spelled once.

Every module that compares, defaults or lists one of these values imports the constant from here
(``tests/test_structure.py`` counts the modules that spell them; the axes that take them are
:mod:`ntk_bridge.axes`). MTL's training data (``--mtl-data``, column ``mtl_data``):

* :data:`ALL` -- support and query of every training task merged (the paper's MTL);
* :data:`QUERY` -- the queries only, the data of ANIL's and MAML's outer loss.

The test-time head of ANIL and MAML (``--test-head``, column ``test_head``; docs/theory.md §3.5):

* :data:`LEARNED` -- the meta-trained head is kept and adapted on the support (the paper's protocol);
* :data:`RESET` -- the trained body with the head put back at its initialisation ``w0`` before the
  adaptation, the protocol MTL always follows.
"""

from __future__ import annotations

__all__ = ["ALL", "QUERY", "MTL_DATA_VALUES", "LEARNED", "RESET", "TEST_HEADS"]

ALL = "all"
QUERY = "query"
#: MTL's training sets, in the order ``--mtl-data`` lists them (both are the default).
MTL_DATA_VALUES = (ALL, QUERY)

LEARNED = "learned"
RESET = "reset"
#: The test heads, the default first.
TEST_HEADS = (LEARNED, RESET)
