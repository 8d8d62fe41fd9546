"""The device of the device-independent training and evaluation tests: the CPU, or what
ALEXNET_TEST_DEVICE names (benchmarks/gpu_check.sh runs them with cuda). A module of its own,
not conftest: tests/serve has a conftest too, and ``from conftest import`` would find either."""

import os

TEST_DEVICE = os.environ.get("ALEXNET_TEST_DEVICE", "cpu")
