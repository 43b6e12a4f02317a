"""End-to-end tests: a real Nexus server over HTTP (helpers in server.py)."""
