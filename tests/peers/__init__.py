"""Real protocol peers for the tests, started on loopback and stopped by PID."""
