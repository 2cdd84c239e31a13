"""API routers; thin: parse, call a service, commit, shape the answer."""
