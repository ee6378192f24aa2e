"""Integrations: the gymnasium recorder and spaces, SB3 buffers, TorchRL storage, the torch feed,
sharded pools on Ray.
"""
