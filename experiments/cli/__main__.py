"""``python -m kvdm.experiments.cli``: the ``kvdm`` command."""

import sys

from . import main

sys.exit(main())
