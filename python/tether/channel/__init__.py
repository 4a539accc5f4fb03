"""Secure channels: the channel ends, the Noise XX handshake that opens them, and the channels a
node's ``/secure/`` routes reuse."""
