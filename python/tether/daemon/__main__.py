"""``python -m tether.daemon --home HOME NAME``: run the node NAME of HOME as a daemon (what
``tether node create|start`` starts; :mod:`tether.daemon.main`)."""

import sys

from tether.daemon.main import main

sys.exit(main())
