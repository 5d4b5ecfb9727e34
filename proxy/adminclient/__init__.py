"""The operator's command-line client of the admin API (not part of the server)."""
