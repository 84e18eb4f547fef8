"""Fixtures shared by every test package."""

from tests.redis_support import redis_prefix, redis_url

__all__ = ["redis_prefix", "redis_url"]
