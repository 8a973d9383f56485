"""Talking to AWS: base credentials and the session, assumed roles, the lean engine,
the retry loop, pacing, bounded answers. Knows nothing of the store."""
