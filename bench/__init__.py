"""Benchmarks: ``python -m bench`` (or ``make bench``) prints one JSON line per figure on stdout.

* ``ingest``: messages per second through the real ingest path (``Hub.ingest``, group commit),
  next to the database's own batched insert rate for the same rows, measured in the same run.
* ``webchat``: latency from a visitor's web-chat frame to the agent's ``/api/live`` socket, through
  a hub served in its own process, next to a bare aiohttp websocket echo at the same rate.

Progress goes to stderr. A timing never makes a benchmark fail; a broken path does.
"""
