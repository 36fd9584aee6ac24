"""Shared test set-up: 8 simulated CPU devices unless the caller chose otherwise."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
