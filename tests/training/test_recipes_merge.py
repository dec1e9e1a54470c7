"""RECIPES.md is shared: exporting the synthetic recipes must keep the Blue Marble block (and vice versa)."""

from __future__ import annotations

from training.reproduce import merge_section


def test_synthetic_block_is_inserted_then_replaced_and_the_rest_kept():
    other = "<!-- bluemarble:begin -->\n# Blue Marble\nkeep me\n<!-- bluemarble:end -->\n"
    first = merge_section(other, "synthetic", "# Synthetic\nold numbers")
    assert first.startswith("<!-- synthetic:begin -->\n# Synthetic\nold numbers\n<!-- synthetic:end -->")
    assert other in first
    second = merge_section(first, "synthetic", "# Synthetic\nnew numbers\n")
    assert "old numbers" not in second and "new numbers" in second and other in second
    assert second.count("<!-- synthetic:begin -->") == 1
    assert merge_section("", "synthetic", "x") == "<!-- synthetic:begin -->\nx\n<!-- synthetic:end -->\n"
