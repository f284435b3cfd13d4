"""The per-worker training/evaluation loop and its metrics.

``loop.fit`` is runtime-agnostic; ``ray_worker`` runs it under Ray Train and
``local`` in a plain process. Importing this package does not import Ray.
"""
