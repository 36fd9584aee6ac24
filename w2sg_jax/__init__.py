"""w2sg-jax: weak-to-strong generalization experiments with f-divergence losses."""

__version__ = "0.1.0"
