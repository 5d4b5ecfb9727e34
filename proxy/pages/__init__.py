"""Project pages: the upstream source, the page cache and its store, the root project list."""
