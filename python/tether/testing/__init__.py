"""Test helpers: real servers and fault injection (see the pytest plugin for fixtures)."""
