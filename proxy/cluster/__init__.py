"""Several wheelfarm processes and hosts on one PostgreSQL and one shared blob store (issue: scale-out)."""
