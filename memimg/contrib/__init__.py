"""Integrations of memimg with web frameworks (each module needs its framework installed)."""
