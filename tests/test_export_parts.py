"""The join of torchrun's export parts (``join_parts``), without process groups: the parts are joined
in rank order with the header once, and a missing or duplicated user, or a missing part, is refused
with one clear line; the parts are removed and the target is left untouched whatever happens."""

from __future__ import annotations

from pathlib import Path

import pytest

from purchasepred.errors import PurchasePredError
from purchasepred.export.recommend import COLUMNS, join_parts, part_path

HEADER = ",".join(COLUMNS) + "\n"


def _part(path: Path, users: list[str], k: int = 2) -> Path:
    rows = [f"{u},item{u}{r},{r},0.5,popularity,0.1\n" for u in users for r in range(1, k + 1)]
    path.write_text(HEADER + "".join(rows))
    return path


def _parts(out: Path, shares: list[list[str]]) -> list[Path]:
    return [_part(part_path(out, r, len(shares)), users) for r, users in enumerate(shares)]


def test_part_files_are_hidden_beside_the_target(tmp_path: Path) -> None:
    assert part_path(tmp_path / "recs.csv", 1, 4) == tmp_path / ".recs.csv.part-1-of-4"


def test_parts_are_joined_in_rank_order_with_one_header(tmp_path: Path) -> None:
    out = tmp_path / "recs.csv"
    parts = _parts(out, [["u1", "u2"], ["u3"], []])
    expected = HEADER + "".join(p.read_text()[len(HEADER):] for p in parts)
    join_parts(parts, [2, 1, 0], out, 2)
    assert out.read_text() == expected
    assert out.read_text().count("user_id") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recs.csv"]  # parts and temporary file gone


@pytest.mark.parametrize("shares, counts, needle", [
    ([["u1", "u2"], ["u2"]], [2, 1], r"2 users written of 3, 1 without exactly 2 distinct items"),  # u2 twice
    ([["u1"], ["u3"]], [2, 1], r"1 users written of 2"),  # a user missing from part 0
])
def test_a_missing_or_duplicated_user_is_refused(tmp_path: Path, shares: list[list[str]], counts: list[int],
                                                 needle: str) -> None:
    out = tmp_path / "recs.csv"
    out.write_text("previous\n")
    with pytest.raises(PurchasePredError, match=needle) as err:
        join_parts(_parts(out, shares), counts, out, 2)
    assert "\n" not in str(err.value) and "nothing was written" in str(err.value)
    assert out.read_text() == "previous\n"  # the target is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recs.csv"]


def test_a_part_with_the_wrong_number_of_items_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "recs.csv"
    parts = _parts(out, [["u1"], ["u2"]])
    _part(parts[1], ["u2"], k=3)
    with pytest.raises(PurchasePredError, match=r"\.recs\.csv\.part-1-of-2: 1 users written of 1, 1 without exactly 2"):
        join_parts(parts, [1, 1], out, 2)
    assert list(tmp_path.iterdir()) == []


def test_a_missing_part_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "recs.csv"
    parts = _parts(out, [["u1"], ["u2"]])
    parts[0].unlink()
    with pytest.raises(PurchasePredError, match=r"export part .*\.recs\.csv\.part-0-of-2 is missing; nothing was written"):
        join_parts(parts, [1, 1], out, 2)
    assert list(tmp_path.iterdir()) == []
