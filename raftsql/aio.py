"""`raftsql.aio` is `raftsql.client.aio` (asyncio over the DB-API; docs/client.md).

The module replaces itself in sys.modules, so both names are one module object. The star
import is for type checkers.
"""

import sys

from raftsql.client import aio as _aio
from raftsql.client.aio import *  # noqa: F403

sys.modules[__name__] = _aio
