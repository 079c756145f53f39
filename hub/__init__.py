"""The hub: normalised message model, ingest, timeline, outbox, events, web app and CLI."""
