"""minift.report: the banner and table every walkthrough prints."""
import pytest

from minift.report import format_table

pytestmark = pytest.mark.core


def test_table_aligns_columns_first_left_others_right():
    out = format_table(("method", "F1"), [("full", "0.997"), ("LoRA r=4", "0.9")]).splitlines()
    assert out == ["method       F1",
                   "--------  -----",
                   "full      0.997",
                   "LoRA r=4    0.9"]


def test_a_row_of_the_wrong_length_is_refused():
    with pytest.raises(ValueError, match="a row has 1 cells, the headers 2"):
        format_table(("a", "b"), [("x",)])
