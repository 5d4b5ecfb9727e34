"""Builds as the web layer sees them: waiting for one, locking clients, building ahead."""
