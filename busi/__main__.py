"""``python -m busi`` is ``busi-job``."""

import sys

from busi.cli import main

sys.exit(main())
