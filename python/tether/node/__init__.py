"""The node: workers at addresses, source routing, who may reach what, the policies on its
resources, its transports (TCP) and its data plane. It knows none of the features built on it
(channels, relays, portals, authorities): they register what they need on it."""
