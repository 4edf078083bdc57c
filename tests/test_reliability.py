"""Bad input never loses data or runs code. The catalogue of bad inputs, through the CLI, and
the security checks.

A failing case must end in exit code 1, exactly one ``error:`` line that names the file, row or value
and the next step, no traceback (unless ``--debug``), and nothing left behind: the folders the test
watches hold the same files afterwards. A row-level problem (bad time, price, type, bytes) rejects
that row only: prepare succeeds and ``rejects.parquet`` holds its file, line, reason and raw text.

One world is built per module: a 20k-row synthetic log prepared, a second dataset, a log without
purchases and one whose test window has none, each with a tiny one-epoch run (16-wide, one layer).
"""

from __future__ import annotations

import ast
import csv
import gzip
import hashlib
import json
import os
import shutil
import tempfile
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

import duckdb
import pytest
import torch

from conftest import Payload, runner, invoke, clean_failure, TINY, open_prepared, rows
from purchasepred.cli import app
from purchasepred.config import PrepareConfig, load_config
from purchasepred.data.prepare import prepare
from purchasepred.data.synth import generate
from purchasepred.data.tensors import PreparedData
from purchasepred.train.trainer import Trainer

PACKAGE = Path(__file__).resolve().parents[1] / "purchasepred"
REPO = PACKAGE.parent
TINY_MODEL = ["--set", "model.d_model=16", "--set", "model.n_layers=1", "--set", "train.batch_size=64",
              "--set", "train.device=cpu"]
def snapshot(*roots: Path) -> set[tuple[str, int]]:
    """Every file and folder under ``roots`` (path, size): what a failed command must leave unchanged."""
    out = set()
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames:
                out.add((os.path.join(dirpath, name), -1))
            for name in filenames:
                path = os.path.join(dirpath, name)
                out.add((path, os.path.getsize(path)))
    return out


# ------------------------------------------------------------------------------------------------ the world
class World:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.raw = root / "events.csv"
        self.prepared = root / "prepared"
        self.other = root / "other"
        self.nobuy = root / "nobuy"
        self.notest = root / "notest"

    def dirs(self) -> list[str]:
        return ["--set", f"train.checkpoints_dir={self.root / 'checkpoints'}",
                "--set", f"train.output_dir={self.root / 'output'}"]

    def run_dir(self, name: str) -> Path:
        return self.root / "checkpoints" / name

    def copy_run(self, name: str, new: str) -> Path:
        shutil.copytree(self.run_dir(name), self.run_dir(new))
        return self.run_dir(new)


def _lines(path: Path) -> tuple[str, list[str]]:
    header, *body = path.read_text().splitlines(keepends=True)
    return header, body


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    w = World(tmp_path_factory.mktemp("reliability"))
    generate(w.raw, rows=20_000, days=30, seed=5)
    header, body = _lines(w.raw)
    cfg = PrepareConfig(eval_days=3, max_len=20)
    prepare([str(w.raw)], w.prepared, cfg)
    generate(w.root / "other.csv", rows=8_000, days=20, seed=6)
    prepare([str(w.root / "other.csv")], w.other, cfg)
    # no purchase at all
    (w.root / "nobuy.csv").write_text(header + "".join(line for line in body if ",purchase," not in line))
    prepare([str(w.root / "nobuy.csv")], w.nobuy, cfg)
    # purchases, but none in the last four days: the test window (the last three) has none
    last = max(datetime.strptime(line[:19], "%Y-%m-%d %H:%M:%S") for line in body)
    cut = (last - timedelta(days=4)).strftime("%Y-%m-%d %H:%M:%S")
    (w.root / "notest.csv").write_text(header + "".join(
        line for line in body if not (",purchase," in line and line[:19] >= cut)))
    prepare([str(w.root / "notest.csv")], w.notest, cfg)
    sets = ["model.d_model=16", "model.n_layers=1", "train.batch_size=64", "train.device=cpu", "train.epochs=1",
            f"train.checkpoints_dir={w.root / 'checkpoints'}", f"train.output_dir={w.root / 'output'}",
            "eval.bootstrap=50"]
    for name, data in (("r", w.prepared), ("nt", w.notest), ("nb", w.nobuy)):
        Trainer(load_config(sets=sets), PreparedData(data), name).fit()
    return w


# ------------------------------------------------------------------------------------------------ the catalogue
def _write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    return path


TINY_HEADER = TINY.read_text().splitlines()[0]


def _prep(path: Path | str, tmp: Path, *extra: str) -> list[str]:
    return ["prepare", str(path), "--out", str(tmp / "out"), "--eval-days", "1", "--max-len", "4", *extra]


def _missing_path(w: World, tmp: Path, mp: pytest.MonkeyPatch):
    path = tmp / "in" / "missing.csv"
    return _prep(path, tmp), [path, "no such file", "check the path"]


def _directory(w: World, tmp: Path, mp: pytest.MonkeyPatch):
    (tmp / "in" / "folder").mkdir(parents=True)
    path = tmp / "in" / "folder"
    return _prep(path, tmp), [path, "is a directory", "*.csv"]


def _empty_file(w: World, tmp: Path, mp: pytest.MonkeyPatch):
    path = _write(tmp / "in" / "empty.csv", b"")
    return _prep(path, tmp), [path, "empty", "pass a CSV with a header"]


def _header_only(w: World, tmp: Path, mp: pytest.MonkeyPatch):
    path = _write(tmp / "in" / "header.csv", TINY_HEADER + "\r\n")
    return _prep(path, tmp), [path, "no event rows"]


def _unknown_columns(w: World, tmp: Path, mp: pytest.MonkeyPatch):
    path = _write(tmp / "in" / "odd.csv", "when,what,item,who\n2019-10-01 00:00:00 UTC,view,1,2\n")
    return _prep(path, tmp), [path, "event_time, event_type, product_id (or item_id), user_id", "found when, what",
                              "Expected the REES46 header"]


def _missing_user_id(w: World, tmp: Path, mp: pytest.MonkeyPatch):
    path = _write(tmp / "in" / "no_user.csv", TINY.read_text().replace(",user_id,", ",uid,", 1))
    return _prep(path, tmp), [path, "lacks required column(s) user_id;", "found event_time"]


def _binary_garbage(w: World, tmp: Path, mp: pytest.MonkeyPatch):
    path = _write(tmp / "in" / "garbage.csv", bytes(range(256)) * 64)
    return _prep(path, tmp), [path, "binary", ".parquet"]


def _truncated_gz(w: World, tmp: Path, mp: pytest.MonkeyPatch):
    full = gzip.compress(TINY.read_bytes() * 400)
    path = _write(tmp / "in" / "cut.csv.gz", full[: len(full) // 2])
    return _prep(path, tmp), [path, "end of GZIP stream", "check that it is a complete, uncorrupted file"]


def _no_valid_rows(w: World, tmp: Path, mp: pytest.MonkeyPatch):
    path = _write(tmp / "in" / "bad_rows.csv", TINY_HEADER + "\n" + "2019-10-01 00:00:00 UTC,click,1,5,a,b,1,2,s\n"
                  "soon,view,1,5,a,b,1,2,s\n")
    return _prep(path, tmp), [path, "no valid rows", "unknown event_type 1", "line 2", "fix the input"]


def _glob_matches_nothing(w: World, tmp: Path, mp: pytest.MonkeyPatch):
    pattern = str(tmp / "in" / "nothing-*.csv")
    return _prep(pattern, tmp), [pattern, "matches no file"]


def _prepare_out_under_a_file(w: World, tmp: Path, mp: pytest.MonkeyPatch):
    blocker = _write(tmp / "in" / "a-file", "")
    return ["prepare", str(TINY), "--out", str(blocker / "out"), "--eval-days", "1"], [
        blocker, "is a file, not a folder", "choose another path"]


def _prepare_out_missing_parents(w: World, tmp: Path, mp: pytest.MonkeyPatch):
    """A missing input must not leave the --out folder's freshly made parents behind."""
    return ["prepare", str(tmp / "missing.csv"), "--out", str(tmp / "new" / "deep" / "out")], ["missing.csv", "no such file"]


def _prepare_unknown_key(w: World, tmp: Path, mp: pytest.MonkeyPatch):
    return _prep(TINY, tmp, "--set", "prepare.max_lenn=3"), ["prepare.max_lenn", "did you mean 'prepare.max_len'"]


def _train_before_prepare(w: World, tmp: Path, mp: pytest.MonkeyPatch):
    data = tmp / "prepared"
    return ["train", "--data", data, "--run-name", "x", *TINY_MODEL, *w.dirs()], [
        data, "does not exist", f"purchasepred prepare RAW.csv --out {data}"]


def _train_on_an_unfinished_folder(w: World, tmp: Path, mp: pytest.MonkeyPatch):
    """What a killed prepare could leave: tables, but no manifest.json."""
    data = tmp / "half"
    shutil.copytree(w.prepared, data)
    (data / "manifest.json").unlink()
    return ["train", "--data", data, "--run-name", "x", *TINY_MODEL, *w.dirs()], [data, "no manifest.json", "purchasepred prepare"]


def _train_unknown_key(w: World, tmp: Path, mp: pytest.MonkeyPatch):
    return ["train", "--data", w.prepared, "--set", "train.purchase_wieght=3", *w.dirs()], [
        "train.purchase_wieght", "did you mean 'train.purchase_weight'"]


def _purchase_weight_negative(w: World, tmp: Path, mp: pytest.MonkeyPatch):
    return ["train", "--data", w.prepared, "--purchase-weight", "-1", *w.dirs()], ["train.purchase_weight must be >= 0", "-1"]


def _epochs_zero(w: World, tmp: Path, mp: pytest.MonkeyPatch):
    return ["train", "--data", w.prepared, "--epochs", "0", *w.dirs()], ["train.epochs must be >= 1", "0"]


def _resume_on_another_dataset(w: World, tmp: Path, mp: pytest.MonkeyPatch):
    w.copy_run("r", "r-other")
    return ["train", "--data", w.other, "--run-name", "r-other", "--epochs", "2", "--resume", *TINY_MODEL, *w.dirs()], [
        "r-other", "another dataset", "start a new --run-name"]


def _resume_a_run_that_does_not_exist(w: World, tmp: Path, mp: pytest.MonkeyPatch):
    return ["train", "--data", w.prepared, "--run-name", "ghost", "--epochs", "2", "--resume", *TINY_MODEL, *w.dirs()], [
        "ghost", "does not exist", "purchasepred train"]


def _run_name_outside_the_folders(w: World, tmp: Path, mp: pytest.MonkeyPatch):
    return ["train", "--data", w.prepared, "--run-name", "../escape", *TINY_MODEL, *w.dirs()], [
        "'../escape'", "plain folder name", "--run-name exp1"]


def _evaluate_run_outside_the_folders(w: World, tmp: Path, mp: pytest.MonkeyPatch):
    return ["evaluate", "--run", "../r", *w.dirs()], ["'../r'", "plain folder name"]


def _evaluate_missing_run(w: World, tmp: Path, mp: pytest.MonkeyPatch):
    return ["evaluate", "--run", "nope", *w.dirs()], ["'nope'", "purchasepred train --run-name nope"]


def _export_missing_run(w: World, tmp: Path, mp: pytest.MonkeyPatch):
    return ["export", "--run", "nope", *w.dirs()], ["'nope'", "purchasepred train --run-name nope"]


def _evaluate_on_another_dataset(w: World, tmp: Path, mp: pytest.MonkeyPatch):
    return ["evaluate", "--run", "r", "--data", w.other, *w.dirs()], [
        w.other, "trained on another dataset", f"pass --data with the dataset it was trained on ({w.prepared})"]


def _truncated_checkpoint(w: World, tmp: Path, mp: pytest.MonkeyPatch):
    best = w.copy_run("r", "r-cut") / "best.pt"
    best.write_bytes(best.read_bytes()[:-100])
    return ["evaluate", "--run", "r-cut", *w.dirs()], [best, "sha256 recorded in metadata.json", "train again"]


def _pickled_checkpoint(w: World, tmp: Path, mp: pytest.MonkeyPatch):
    run = w.copy_run("r", "r-evil")
    meta = json.loads((run / "metadata.json").read_text())
    for name in ("best.pt", "last.pt"):
        payload = torch.load(run / name, weights_only=True)
        payload["model"]["evil"] = Payload(tmp / "marker")
        torch.save(payload, run / name)
        meta["checkpoints"][name] = hashlib.sha256((run / name).read_bytes()).hexdigest()
    (run / "metadata.json").write_text(json.dumps(meta))  # hashes match: only the loader can refuse
    return ["export", "--run", "r-evil", "--out", tmp / "recs.csv", *w.dirs()], [run / "best.pt", "refused"]


def _test_window_without_purchases(w: World, tmp: Path, mp: pytest.MonkeyPatch):
    return ["evaluate", "--run", "nt", *w.dirs()], [w.notest, "test window", "has no purchases", "--split valid",
                                                    "--eval-days"]


def _valid_window_without_purchases(w: World, tmp: Path, mp: pytest.MonkeyPatch):
    return ["evaluate", "--run", "nb", *w.dirs()], [w.nobuy, "valid window", "has no purchases", "--eval-days"]


def _export_without_purchases(w: World, tmp: Path, mp: pytest.MonkeyPatch):
    return ["export", "--run", "nb", "--out", tmp / "recs.csv", *w.dirs()], [w.nobuy, "has no purchases"]


def _export_under_a_file(w: World, tmp: Path, mp: pytest.MonkeyPatch):
    blocker = _write(tmp / "a-file", "")
    return ["export", "--run", "r", "--out", blocker / "recs.csv", *w.dirs()], [
        blocker, "is a file, not a folder", "choose a writable --out"]


def _export_not_writable(w: World, tmp: Path, mp: pytest.MonkeyPatch):
    """A read-only folder, as os.access reports it (root ignores permission bits, so it is simulated)."""
    folder = tmp / "read-only"
    folder.mkdir()
    real = os.access

    def access(path: Any, mode: int, *args: Any, **kwargs: Any) -> bool:
        if Path(str(path)) == folder and mode & os.W_OK:
            return False
        return real(path, mode, *args, **kwargs)

    mp.setattr(os, "access", access)
    return ["export", "--run", "r", "--out", folder / "recs.csv", *w.dirs()], [folder, "not writable", "choose another --out"]


def _export_k_larger_than_the_catalog(w: World, tmp: Path, mp: pytest.MonkeyPatch):
    return ["export", "--run", "r", "--k", "100000", "--out", tmp / "new" / "recs.csv", *w.dirs()], [
        "--k 100000", "larger than the catalog", "lower --k"]


def _evaluate_into_an_unwritable_output(w: World, tmp: Path, mp: pytest.MonkeyPatch):
    blocker = _write(tmp / "a-file", "")
    return ["evaluate", "--run", "r", "--set", f"train.output_dir={blocker}",
            "--set", f"train.checkpoints_dir={w.root / 'checkpoints'}"], [blocker, "train.output_dir"]


def _synth_under_a_file(w: World, tmp: Path, mp: pytest.MonkeyPatch):
    blocker = _write(tmp / "a-file", "")
    return ["synth", blocker / "x.csv", "--rows", "100"], [blocker, "is a file, not a folder"]


FAILURES: dict[str, Callable[[World, Path, pytest.MonkeyPatch], tuple[list[Any], list[Any]]]] = {
    f.__name__.lstrip("_"): f for f in (
        _missing_path, _directory, _empty_file, _header_only, _unknown_columns, _missing_user_id, _binary_garbage,
        _truncated_gz, _no_valid_rows, _glob_matches_nothing, _prepare_out_under_a_file, _prepare_out_missing_parents,
        _prepare_unknown_key, _train_before_prepare, _train_on_an_unfinished_folder, _train_unknown_key,
        _purchase_weight_negative, _epochs_zero, _resume_on_another_dataset, _resume_a_run_that_does_not_exist,
        _run_name_outside_the_folders, _evaluate_run_outside_the_folders, _evaluate_missing_run, _export_missing_run,
        _evaluate_on_another_dataset, _truncated_checkpoint, _pickled_checkpoint, _test_window_without_purchases,
        _valid_window_without_purchases, _export_without_purchases, _export_under_a_file, _export_not_writable,
        _export_k_larger_than_the_catalog, _evaluate_into_an_unwritable_output, _synth_under_a_file,
    )
}
# evaluate and export cache the run's fit on the valid window (output/RUN/ranker.json) before they
# evaluate or write: a cache, not a partial result, so it may appear even when the command then fails
ALLOWED_NEW = {"ranker.json"}


@pytest.mark.parametrize("case", list(FAILURES))
def test_bad_input_fails_with_one_clear_line_and_leaves_nothing(
    case: str, world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # anything written to the working directory shows up in the snapshot
    args, needles = FAILURES[case](world, tmp_path, monkeypatch)
    before = snapshot(tmp_path, world.root)
    clean_failure(invoke(*args), *needles)
    after = snapshot(tmp_path, world.root)
    assert {p for p, _ in after - before if Path(p).name not in ALLOWED_NEW} == set()
    assert before - after == set()
    assert not (tmp_path / "marker").exists(), "code inside a checkpoint ran"


def test_debug_shows_the_traceback(world: World, tmp_path: Path) -> None:
    result = runner.invoke(app, ["--debug", "evaluate", "--run", "nope", *world.dirs()])
    assert result.exit_code == 1
    assert "Traceback" in result.stderr and "CheckpointError" in result.stderr


def test_the_catalogue_has_at_least_25_cases() -> None:
    assert len(FAILURES) + len(ROW_CASES) + len(FILE_CASES) >= 25


# ------------------------------------------------------------------------------------------------ row-level
def _row(t: str = "2019-10-03 10:00:00 UTC", type_: str = "view", product: str = "777", category: str = "5",
         code: str = "a.b", brand: str = "acme", price: str = "1.50", user: str = "555", session: str = "s") -> str:
    return ",".join((t, type_, product, category, code, brand, price, user, session)) + "\n"


BASE = "".join(_row(t=f"2019-10-0{1 + i % 5} 1{i % 10}:00:00 UTC", type_=("view", "view", "cart", "purchase")[i % 4],
                    product=str(i % 3 + 1), user=str(i % 4 + 1)) for i in range(40))
ODD_LINE = 42  # the header, 40 base rows, then the row under test
FUTURE = (datetime.now(timezone.utc) + timedelta(days=3)).strftime("%Y-%m-%d %H:%M:%S UTC")

# name -> (the row's text, its reject reason or the event_at it is accepted as)
ROW_CASES: dict[str, tuple[bytes, str | datetime]] = {
    "time with UTC": (_row(t="2019-10-03 10:00:00 UTC").encode(), datetime(2019, 10, 3, 10)),
    "time without UTC": (_row(t="2019-10-03 10:00:00").encode(), datetime(2019, 10, 3, 10)),
    "time in ISO form": (_row(t="2019-10-03T10:00:00Z").encode(), datetime(2019, 10, 3, 10)),
    "time with an offset": (_row(t="2019-10-03T12:00:00+02:00").encode(), datetime(2019, 10, 3, 10)),
    "unparseable time": (_row(t="the third of October").encode(), "unparseable event_time"),
    "time before 2000": (_row(t="1999-12-31 23:59:59 UTC").encode(), "event_time out of range"),
    "time after now": (_row(t=FUTURE).encode(), "event_time out of range"),
    "negative price": (_row(price="-1.5").encode(), "negative price"),
    "NaN price": (_row(price="NaN").encode(), "non-finite price"),
    "infinite price": (_row(price="inf").encode(), "non-finite price"),
    "unparseable price": (_row(price="cheap").encode(), "unparseable price"),
    "unknown event type": (_row(type_="click").encode(), "unknown event_type"),
    "empty user_id": (_row(user="").encode(), "missing user_id"),
    "empty product_id": (_row(product="").encode(), "missing item id"),
    "non-UTF-8 bytes in brand": (_row(brand="caf\xe9 \xff").encode("latin-1"), "invalid utf-8"),
    "too few fields": (_row().encode().replace(b",s\n", b"\n"), "wrong field count"),
}


def _prepared_row(tmp: Path, line: bytes) -> tuple[Any, dict[str, Any], Path]:
    raw = _write(tmp / "in" / "rows.csv", (TINY_HEADER + "\n" + BASE).encode() + line)
    result = invoke("prepare", raw, "--out", tmp / "out", "--eval-days", "1", "--max-len", "4")
    assert result.exit_code == 0, result.output
    m = json.loads((tmp / "out" / "manifest.json").read_text())
    # nothing on stderr but the manifest's warnings (the row is 1 of 41: a fixable reason names its key)
    assert "Traceback" not in result.output
    assert result.stderr.strip().splitlines() == [f"warning: {w}" for w in m["warnings"]]
    return result, m, raw


ROW_CASES["empty event_type"] = (_row(type_="").encode(), "unknown event_type")


@pytest.mark.parametrize("case", list(ROW_CASES))
def test_a_bad_row_is_rejected_alone_with_file_line_and_reason(case: str, tmp_path: Path) -> None:
    line, expected = ROW_CASES[case]
    result, m, raw = _prepared_row(tmp_path, line)
    assert m["rows_read"] == 41 == m["rows_kept"] + m["rows_rejected"] + m["rows_duplicate"]
    con = open_prepared(tmp_path / "out")
    if isinstance(expected, datetime):
        assert m["rows_rejected"] == 0 and m["rejects_by_reason"] == {}
        assert rows(con, "select event_at from events join items using (item_code) where product_id = '777'") == [(expected,)]
        return
    assert m["rejects_by_reason"] == {expected: 1}
    assert rows(con, "select file_path, line, reason from rejects") == [(str(raw), ODD_LINE, expected)]
    (raw_text,) = rows(con, "select raw from rejects")[0]
    assert raw_text.startswith(line.decode("utf-8", "replace").split(",")[0])
    assert rows(con, "select count(*) from events join items using (item_code) where product_id = '777'") == [(0,)]
    assert f"rejected: {expected}" in result.stdout  # the summary names the reason and its count
    # the warnings: the Latin-1 hint for bytes that are not UTF-8, the key that fixes a fixable reason
    # (and the null_values that read a price written as NaN as no price)
    hints = {"invalid utf-8": "pass --set input.encoding=latin-1", "unknown event_type": "'click' are not in the mapping",
             "unparseable event_time": "event times such as 'the third of October': set input.time_format to",
             "NaN price": "'NaN' is how the export writes no value, --set 'input.null_values=[\"NaN\"]'"}
    hint = hints.get(case, hints.get(expected)) if case not in ("empty event_type", "infinite price") else None
    assert [w for w in m["warnings"] if "rejected" in w] == ([] if hint is None else [w for w in m["warnings"] if hint in w])
    assert len([w for w in m["warnings"] if "rejected" in w]) == (hint is not None)


# ------------------------------------------------------------------------------------------------ file-level, accepted
def _bom(tmp: Path) -> bytes:
    return b"\xef\xbb\xbf" + (TINY_HEADER + "\n" + BASE).encode()


def _crlf(tmp: Path) -> bytes:
    return (TINY_HEADER + "\n" + BASE).replace("\n", "\r\n").encode()


def _extra_columns(tmp: Path) -> bytes:
    return ("rank," + TINY_HEADER + ",note\n" + "".join(f"{i},{line},n{i}\n" for i, line in enumerate(BASE.splitlines()))).encode()


def _quoted_commas(tmp: Path) -> bytes:
    return (TINY_HEADER + "\n" + BASE.replace(",acme,", ',"acme, ""the"" best",').replace(",a.b,", ',"a,b",')).encode()


def _columns_in_another_order(tmp: Path) -> bytes:
    with_rows = list(csv.reader((TINY_HEADER + "\n" + BASE).splitlines()))
    order = list(reversed(range(len(with_rows[0]))))
    return "".join(",".join(r[i] for i in order) + "\n" for r in with_rows).upper().encode()


FILE_CASES: dict[str, Callable[[Path], bytes]] = {
    "UTF-8 BOM": _bom, "CRLF": _crlf, "extra columns": _extra_columns, "quoted fields with commas": _quoted_commas,
    "columns in another order, upper case": _columns_in_another_order,
}


@pytest.mark.parametrize("case", list(FILE_CASES))
def test_accepted_file_variants_prepare_like_the_plain_file(case: str, tmp_path: Path) -> None:
    plain = _write(tmp_path / "plain.csv", TINY_HEADER + "\n" + BASE)
    assert invoke("prepare", plain, "--out", tmp_path / "a", "--eval-days", "1", "--max-len", "4").exit_code == 0
    variant = _write(tmp_path / "variant.csv", FILE_CASES[case](tmp_path))
    result = invoke("prepare", variant, "--out", tmp_path / "b", "--eval-days", "1", "--max-len", "4")
    assert result.exit_code == 0, result.output
    a, b = (json.loads((tmp_path / x / "manifest.json").read_text()) for x in "ab")
    assert (b["rows_read"], b["rows_rejected"], b["rows_kept"]) == (a["rows_read"], 0, a["rows_kept"]) == (40, 0, 40)
    con = open_prepared(tmp_path / "b")
    brands = {r[0] for r in rows(con, "select brand from brands")}
    codes = {r[0] for r in rows(con, "select category_code from categories")}
    if case == "quoted fields with commas":
        assert (brands, codes) == ({'acme, "the" best'}, {"a,b"})
    elif case.startswith("columns"):
        assert (brands, codes) == ({"ACME"}, {"A.B"})
    else:
        assert (brands, codes) == ({"acme"}, {"a.b"})
    assert rows(con, "select count(*), min(event_at), max(event_at) from events") == rows(
        open_prepared(tmp_path / "a"), "select count(*), min(event_at), max(event_at) from events")


def test_nineteen_digit_ids_are_kept_exactly(tmp_path: Path) -> None:
    user, product, category = "9876543210987654321", "1234567890123456789", "2053013555631882655"
    assert float(user) != int(user) and float(product) != int(product)  # a float round trip would change them
    lines = BASE + _row(user=user, product=product, category=category) * 2 + _row(
        user=user, product=product, category=category, type_="purchase", t="2019-10-05 19:00:00 UTC")
    raw = _write(tmp_path / "ids.csv", TINY_HEADER + "\n" + lines)
    assert invoke("prepare", raw, "--out", tmp_path / "out", "--eval-days", "1", "--max-len", "4").exit_code == 0
    con = open_prepared(tmp_path / "out")
    assert rows(con, "select user_id from users where user_id = ?", [user]) == [(user,)]
    assert rows(con, "select product_id from items where product_id = ?", [product]) == [(product,)]
    assert rows(con, "select category from categories where category = ?", [category]) == [(category,)]
    # the exact duplicate view is removed, the purchase kept
    assert rows(con, "select count(*) from events e join users u using (user_idx) join items i using (item_code) "
                     "where u.user_id = ? and i.product_id = ?", [user, product]) == [(2,)]


def _tiny_train(world: World, data: Path, name: str, *extra: str):
    return invoke("train", "--data", data, "--run-name", name, "--epochs", "1", *TINY_MODEL, *world.dirs(), *extra)


def test_a_log_without_purchases_prepares_and_train_says_what_it_can_and_cannot_do(world: World) -> None:
    m = json.loads((world.nobuy / "manifest.json").read_text())
    assert "purchase" not in m["events_by_type"] and m["views_per_purchase"] is None
    result = _tiny_train(world, world.nobuy, "nb-cli")
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())  # rich wraps long lines; notes are warnings on stderr
    assert "warning: " in result.stderr and "has no purchase events at all" in " ".join(result.stderr.split())
    assert "has no purchase events at all" in text and "only the view head" in text
    assert "evaluate/export cannot fit anything" in text and "prepare a log that contains purchases" in text
    assert "n/a (no valid purchases)" in text
    meta = json.loads((world.run_dir("nb-cli") / "metadata.json").read_text())
    assert any("no purchase events at all" in n for n in meta["notes"])
    assert meta["epochs_done"] == 1 and meta["best_valid_ndcg@10"] is None


def test_a_single_user_log_prepares_and_trains(world: World, tmp_path: Path) -> None:
    header, body = _lines(world.raw)
    user = Counter(line.split(",")[7] for line in body).most_common(1)[0][0]
    raw = _write(tmp_path / "one.csv", header + "".join(line for line in body if line.split(",")[7] == user))
    result = invoke("prepare", raw, "--out", tmp_path / "one", "--eval-days", "3", "--max-len", "20")
    assert result.exit_code == 0, result.output
    m = json.loads((tmp_path / "one" / "manifest.json").read_text())
    assert m["n_users"] == 1 and m["rows_rejected"] == 0
    result = runner.invoke(app, ["--quiet", "train", "--data", str(tmp_path / "one"), "--run-name", "one", "--epochs", "1",
                                 *TINY_MODEL, *world.dirs()], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert result.stdout == ""  # --quiet: no tables, no per-epoch lines
    # only the warning a user must see: one sequence gives one gradient step
    assert " ".join(result.stderr.split()).startswith("warning: ") and "too few gradient steps" in result.stderr
    assert json.loads((world.run_dir("one") / "metadata.json").read_text())["epochs_done"] == 1


# ------------------------------------------------------------------------------------------------ security
HOSTILE = "we'ird; drop table x;--"


def test_paths_with_quotes_and_semicolons_are_values_not_sql(tmp_path: Path) -> None:
    raw = tmp_path / f"{HOSTILE}.csv"
    shutil.copy(TINY, raw)
    out = tmp_path / "out'); drop table events; --"
    result = invoke("prepare", raw, "--out", out, "--eval-days", "1", "--max-len", "4")
    assert result.exit_code == 0, result.output
    m = json.loads((out / "manifest.json").read_text())
    assert m["inputs"][0]["path"] == str(raw) and m["rows_read"] == 24
    data = PreparedData(out)  # every table reads back through the path, as a bound value
    assert len(data.users["user_id"]) == 4 and len(data.split("test").user_idx) > 0
    assert rows(open_prepared(out), "select distinct file_path from rejects") == [(str(raw),)]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([raw.name, out.name])


def test_a_file_name_with_glob_characters_reads_that_file(tmp_path: Path) -> None:
    shutil.copy(TINY, tmp_path / "a[1].csv")
    _write(tmp_path / "a1.csv", TINY.read_text() + TINY.read_text().split("\n", 1)[1])  # a decoy: 48 rows
    m = prepare([str(tmp_path / "a[1].csv")], tmp_path / "out", PrepareConfig(eval_days=1, max_len=4)).manifest
    assert m["rows_read"] == 24


def test_a_prepared_folder_with_glob_characters_reads_its_own_tables(tmp_path: Path) -> None:
    prepare([str(TINY)], tmp_path / "data[1]", PrepareConfig(eval_days=1, max_len=4))
    shutil.copytree(tmp_path / "data[1]", tmp_path / "data1")
    (tmp_path / "data1" / "users.parquet").unlink()
    duckdb.sql("select 99 as user_idx, 'decoy' as user_id").write_parquet(str(tmp_path / "data1" / "users.parquet"))
    assert "decoy" not in list(PreparedData(tmp_path / "data[1]").users["user_id"])


def test_export_to_a_path_with_glob_characters_checks_its_own_file(world: World, tmp_path: Path) -> None:
    """The written CSV is checked through DuckDB before the rename: it must read that file, not a look-alike."""
    out = tmp_path / "recs[1].csv"
    _write(tmp_path / f".recs1.csv.tmp-{os.getpid()}", "user_id,item_id\nx,1\n")  # what '[1]' would also match
    result = invoke("export", "--run", "r", "--out", out, "--k", "3", *world.dirs())
    assert result.exit_code == 0, result.output
    with open(out, newline="") as fh:
        got = list(csv.DictReader(fh))
    assert len(got) == 3 * len(PreparedData(world.prepared).users["user_id"])


def _calls(tree: ast.AST) -> list[ast.Call]:
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call)]


def _package_sources() -> dict[Path, ast.AST]:
    return {path: ast.parse(path.read_text(), str(path)) for path in sorted(PACKAGE.rglob("*.py"))}


def test_every_checkpoint_load_is_weights_only() -> None:
    loads = []
    for path, tree in _package_sources().items():
        for call in _calls(tree):
            f = call.func
            if isinstance(f, ast.Attribute) and f.attr == "load" and isinstance(f.value, ast.Name) and f.value.id == "torch":
                kw = {k.arg: k.value for k in call.keywords}
                assert isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True, \
                    f"{path}:{call.lineno} torch.load without weights_only=True"
                loads.append((path.name, call.lineno))
            if isinstance(f, ast.Attribute) and f.attr == "load" and isinstance(f.value, ast.Name) and f.value.id == "np":
                kw = {k.arg: k.value for k in call.keywords}
                assert not (isinstance(kw.get("allow_pickle"), ast.Constant) and kw["allow_pickle"].value), f"{path}:{call.lineno}"
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
                assert not {"pickle", "dill", "marshal", "joblib", "cloudpickle"} & {n.split(".")[0] for n in names}, \
                    f"{path}:{node.lineno} imports an unpickler"
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("eval", "exec"):
                pytest.fail(f"{path}:{node.lineno} calls {node.func.id}")
    assert loads, "no torch.load found: the test looks in the wrong place"
    assert "torch.load(weights_only=True)" in (PACKAGE / "checkpoint.py").read_text()


SQL_METHODS = {"execute", "executemany", "sql", "query"}


def test_no_sql_text_is_built_from_values() -> None:
    """Every query run is a literal, a query read from sql/, or an f-string whose only holes are variable
    names written in this package (``set variable {name} = ?``); every value is bound."""
    name_holes = []
    for path, tree in _package_sources().items():
        for call in _calls(tree):
            f = call.func
            if not (isinstance(f, ast.Attribute) and f.attr in SQL_METHODS and call.args):
                continue
            query = call.args[0]
            where = f"{path.relative_to(REPO)}:{call.lineno}"
            if isinstance(query, ast.JoinedStr):
                holes = [v.value for v in query.values if isinstance(v, ast.FormattedValue)]
                assert all(isinstance(h, ast.Name) and h.id == "name" for h in holes), f"{where}: SQL built from values"
                text = "".join(v.value for v in query.values if isinstance(v, ast.Constant))
                assert text.startswith("set variable ") and text.endswith(" = ?"), where
                name_holes.append(where)
            else:
                assert not isinstance(query, ast.BinOp), f"{where}: SQL concatenated or %-formatted"
                assert not (isinstance(query, ast.Call) and isinstance(query.func, ast.Attribute)
                            and query.func.attr in ("format", "join", "replace")), f"{where}: SQL from .format()"
    assert name_holes, "no `set variable {name} = ?` found: the test looks in the wrong place"
    # those names come from this package's source: literal arguments of _set and keyword names of _fetch
    for path, tree in _package_sources().items():
        for call in _calls(tree):
            if isinstance(call.func, ast.Name) and call.func.id == "_set":
                assert isinstance(call.args[1], ast.Constant) and call.args[1].value.isidentifier(), \
                    f"{path}:{call.lineno}: _set with a variable name that is not a literal identifier"
            if isinstance(call.func, ast.Attribute) and call.func.attr == "_fetch":
                assert not any(k.arg is None for k in call.keywords), f"{path}:{call.lineno}: **kwargs into SQL names"


def _files(root: Path, skip: tuple[str, ...] = ()) -> dict[str, int]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in skip]
        for name in filenames:
            path = Path(dirpath) / name
            out[str(path.relative_to(root))] = path.stat().st_mtime_ns
    return out


def test_run_writes_only_inside_its_output_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # matplotlib (the report's figures) builds its per-user font cache in the home folder the first
    # time a process imports it: that is matplotlib's, not a file of the run, so it is built here
    # first (the test passed or failed by whether an earlier test had imported matplotlib)
    import matplotlib.font_manager  # noqa: F401
    work, home, temp = tmp_path / "work", tmp_path / "home", tmp_path / "temp"
    for folder in (work, home, temp):
        folder.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("TMPDIR", str(temp))
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    package_before = {d.name: _files(d, skip=("__pycache__",)) for d in (PACKAGE, REPO / "sql", REPO / "configs")}
    result = invoke("run", "--rows", "20000", "--epochs", "1", "--run-name", "safe", *TINY_MODEL,
                    "--set", "eval.bootstrap=50", "--set", "prepare.eval_days=3")
    assert result.exit_code == 0, result.output
    written = _files(work)
    assert written, "run wrote nothing"
    outside = [p for p in written if not (p.startswith("output/safe/") or p.startswith("checkpoints/safe/"))]
    assert outside == []
    assert {"output/safe/recommendations.csv", "output/safe/metrics.json", "checkpoints/safe/last.pt"} <= set(written)
    assert not [p for p in written if "/." in p or p.startswith(".")], "temporary files left behind"
    assert _files(home) == {} and _files(temp) == {}
    assert {d.name: _files(d, skip=("__pycache__",)) for d in (PACKAGE, REPO / "sql", REPO / "configs")} == package_before
