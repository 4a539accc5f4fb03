"""``python -m tether.demo``: the product demo (:mod:`tether.demo.portals`)."""

import sys

from tether.demo.portals import main

sys.exit(main())
