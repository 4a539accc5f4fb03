"""Transports: how routed messages cross from one node to another (TCP for now)."""
