"""Durable stores: the source of truth a :class:`~tiered_registry.TieredBackend` caches."""
