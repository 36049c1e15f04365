"""Test configuration: a private bid-function cache per test session, never the user's."""

from __future__ import annotations

import os
import tempfile

import matplotlib

matplotlib.use("Agg")

os.environ["VBP_CACHE_DIR"] = tempfile.mkdtemp(prefix="vbp-test-cache-")
