"""Operator adapters: kopf runs the operator (``lifecycle``: login, start-up, peering, cleanup); pinserve's
informer brings every change (``watches``), and every change funnels into Controller.sync (``state``).

Importing this package registers the kopf handlers (``kopf run -m pinserve.handlers``).
"""

from pinserve.handlers import lifecycle, watches

__all__ = ["lifecycle", "watches"]
