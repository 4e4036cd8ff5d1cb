"""Cache tiers: bounded, expiring copies in front of a store (see :mod:`tiered_registry.tiered`)."""
