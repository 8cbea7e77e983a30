"""Legacy ingest, dual mode and migration: carries the legacy EventEmitter service's messages
into the store's topics. (Filled in by the legacy-bridge work; empty on purpose until then.)"""

__all__: list[str] = []
