"""`pinserve tune`: the tuning search on bare metal (see pinserve.tuning for the search itself)."""
