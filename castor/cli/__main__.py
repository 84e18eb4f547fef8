"""``python -m castor.cli`` (castor-kernel 0.5.1's spelling): the ``castor`` command, as ``python -m castor``."""

import sys

from castor.cli import main

if __name__ == "__main__":
    sys.exit(main())
