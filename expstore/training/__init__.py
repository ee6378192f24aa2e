"""The reference trainers behind ``python -m expstore.train``: online SAC and offline TD3+BC."""
