"""The weak-label chain: the store (hashed, checksummed), label noise, and the stream.

A weak label travels one road: the weak model writes it once into a store
(``store``), noise derives noisy stores from the clean one (``noise``), and the
stream (``stream``) reads a store and hands batches to the training step.
"""
