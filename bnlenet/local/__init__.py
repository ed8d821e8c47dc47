"""What runs only on a developer's machine: the ``bnlenet`` command, the local stack launcher,
the Redis server wrapper and the process toolkit they share. The service (API, worker) never
imports from here."""
