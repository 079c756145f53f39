"""Routing: queues, skills, capacity and the assignment claim (built on the spine's conversations)."""
