"""``python -m benchmarks``: see :mod:`benchmarks.suite` (``--help`` lists the options)."""

import sys

from benchmarks.suite import main

sys.exit(main())
