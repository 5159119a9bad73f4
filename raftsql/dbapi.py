"""`raftsql.dbapi` is `raftsql.client.dbapi` (PEP 249; docs/client.md), under a short name.

The module replaces itself in sys.modules, so both names are one module object: one
`connect`, one exception tree, one `threadsafety`. The star import is for type checkers.
"""

import sys

from raftsql.client import dbapi as _dbapi
from raftsql.client.dbapi import *  # noqa: F403

sys.modules[__name__] = _dbapi
