"""The README's generated tables match the registry and the quantization table."""

from pathlib import Path

from oxide.readme_tables import tables


def test_readme_tables_up_to_date() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    assert tables() in readme, "README.md is stale: paste the output of `python -m oxide.readme_tables`"
