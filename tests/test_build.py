"""The compiled CPU core is part of the ordinary install: where a compiler exists, it must be there.

CI sets ``OXIDE_REQUIRE_EXTENSION=1`` (see ``.ci/run``), so a build that silently fell back to the
PyTorch reference (the extension is optional, for machines without a compiler) fails CI instead of
skipping every kernel test.
"""

from __future__ import annotations

import os

import pytest

from oxide.ops import cpu


def test_the_compiled_core_is_built_where_required() -> None:
    if not os.environ.get("OXIDE_REQUIRE_EXTENSION"):
        pytest.skip("OXIDE_REQUIRE_EXTENSION is not set: the extension may legitimately be absent here")
    assert cpu.available(), cpu.status()
    assert cpu.extension().isa() == cpu.extension().isas()[0], "the best instruction set is chosen by default"
