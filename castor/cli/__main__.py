"""``python -m castor.cli``."""

import sys

from castor.cli import main

sys.exit(main())
