"""Task running: the event bus, the supervisor that runs agents, and the task service."""
