"""Distribution files: the content-addressed store, single-flight downloads, integrity."""
