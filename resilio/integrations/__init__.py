"""Integrations: ASGI middleware, an httpx transport, Prometheus metrics."""
