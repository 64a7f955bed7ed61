"""``python -m kvdm.experiments``: the ``kvdm`` command."""

import sys

from .cli import main

sys.exit(main())
