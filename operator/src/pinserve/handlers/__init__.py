"""kopf adapters: watches fill indices; every event funnels into Controller.sync.

Importing this package registers the handlers (``kopf run -m pinserve.handlers``).
"""

from pinserve.handlers import lifecycle, watches

__all__ = ["lifecycle", "watches"]
