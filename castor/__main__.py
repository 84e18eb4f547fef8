"""``python -m castor``: the ``castor`` command."""

import sys

from castor.cli import main

if __name__ == "__main__":
    sys.exit(main())
