"""Sense-Decide-Act: pure controllers, the engine that arbitrates them, and its service."""
