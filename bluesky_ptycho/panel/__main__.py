"""``python -m bluesky_ptycho.panel [DEVICE]``: the same as ``bluesky-ptycho panel``."""

import sys

from . import main

sys.exit(main())
