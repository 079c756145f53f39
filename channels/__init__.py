"""Channel adapters: one per channel kind, each behind the small protocol of ``channels.base``."""
