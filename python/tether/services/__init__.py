"""The services built on secure channels: relays, portals (tcp-inlet, tcp-outlet) and their
sessions, the authority, and a node's memberships."""
