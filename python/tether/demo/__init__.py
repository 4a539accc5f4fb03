"""Demos that ship in the package: ``python -m tether.demo`` (portals through a relay, with the
``tether`` command), ``python -m tether.demo.channel``, ``python -m tether.demo.core``."""
