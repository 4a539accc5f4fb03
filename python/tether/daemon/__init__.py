"""A node running as a daemon (``python -m tether.daemon``): its control API, its saved
configuration and the resources restored from it, its log."""
