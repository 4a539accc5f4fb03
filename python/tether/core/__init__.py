"""The Python faces of the Rust core and the wire: AEAD, framing, Noise, routed messages and
their payload envelope, the binary encoding, and the one exception hierarchy."""
