import pytest

# The shared helpers' asserts say what came instead of what was expected:
# pytest rewrites the asserts of test modules and conftest only, unless told
# before the helpers are first imported (which conftest does).
pytest.register_assert_rewrite(
    "tests.support", "tests.cluster_support", "tests.cli_support", "tests.faults",
    "tests.fake_transport",
)
