"""The core: ring arithmetic, the commit record, lock, file steps, casting, memory maps, the
episode book, the Store and open(). Imports nothing above it.
"""
