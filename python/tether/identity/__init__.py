"""Identities and trust: Ed25519 identities with their change history, credentials, the vault,
the registry of a home's identities, who a channel's peer is and whom a side trusts, and the
policy language."""
