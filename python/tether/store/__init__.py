"""The stores on disk: the local SQLite store of a home (``local``), and the shared state of an
authority (``authority``: SQLite or PostgreSQL)."""
