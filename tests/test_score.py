"""tune score: macro F1 of a submission against answers in the format of make_utkmask.py's eval_answers.csv."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import f1_score

from tune.cli import main
from tune.score import score_submission

TRUE = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 0, 4, 9, 13, 17, 2]
PRED = [0, 1, 2, 3, 5, 5, 6, 7, 8, 15, 10, 11, 12, 13, 14, 9, 16, 17, 1, 4, 3, 13, 17, 8]


def ids(n: int) -> list[str]:
    return [f"{i:04d}.jpg" for i in range(n)]


def answers(tmp_path: Path, labels=TRUE) -> Path:
    path = tmp_path / "eval_answers.csv"
    rows = [f"{i},{a},{a // 6},{(a // 3) % 2},{a % 3}" for i, a in zip(ids(len(labels)), labels, strict=True)]
    path.write_text("\n".join(["ImageID,ans,mask,gender,age", *rows]) + "\n")
    return path


def submission(tmp_path: Path, labels=PRED, image_ids=None, header="ImageID,ans") -> Path:
    path = tmp_path / "submission.csv"
    image_ids = ids(len(labels)) if image_ids is None else image_ids
    path.write_text("\n".join([header, *(f"{i},{a}" for i, a in zip(image_ids, labels, strict=True))]) + "\n")
    return path


def test_perfect_submission_scores_one(tmp_path, capsys):
    scores = score_submission(submission(tmp_path, TRUE[::-1], ids(len(TRUE))[::-1]), answers(tmp_path))
    assert scores == {"images": len(TRUE), "f1": 1.0, "acc": 1.0, "f1_mask": 1.0, "f1_gender": 1.0, "f1_age": 1.0}
    assert main(["score", str(tmp_path / "submission.csv"), str(tmp_path / "eval_answers.csv")]) == 0
    assert "macro F1, 18 classes  1.0000" in capsys.readouterr().out


def test_imperfect_submission_matches_sklearn(tmp_path, capsys):
    true, pred = np.array(TRUE), np.array(PRED)
    scores = score_submission(submission(tmp_path), answers(tmp_path))
    assert scores["f1"] == pytest.approx(f1_score(true, pred, average="macro"))
    assert scores["f1"] < 1.0
    assert scores["acc"] == pytest.approx((true == pred).mean())
    parts = {"mask": (true // 6, pred // 6), "gender": ((true // 3) % 2, (pred // 3) % 2), "age": (true % 3, pred % 3)}
    for task, (t, p) in parts.items():
        assert scores[f"f1_{task}"] == pytest.approx(f1_score(t, p, average="macro")), task
    assert main(["score", str(tmp_path / "submission.csv"), str(tmp_path / "eval_answers.csv")]) == 0
    out = capsys.readouterr().out
    assert f"{scores['f1']:.4f}" in out and "macro F1, age band" in out


def test_macro_f1_is_scikit_learns_on_any_labels():
    from tune.score import _macro_f1

    rng = np.random.default_rng(0)
    for n, classes in ((1, 18), (7, 3), (50, 18), (400, 18), (30, 2)):
        true, pred = rng.integers(0, classes, n), rng.integers(0, classes, n)
        pred[: n // 3] = true[: n // 3]  # some right, some classes only on one side
        assert _macro_f1(true, pred) == pytest.approx(f1_score(true, pred, average="macro", zero_division=0))
    assert _macro_f1(np.array([0, 0]), np.array([1, 1])) == 0.0 == f1_score([0, 0], [1, 1], average="macro",
                                                                             zero_division=0)


def fails(capsys, sub: Path, ans: Path) -> str:
    assert main(["score", str(sub), str(ans)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    return lines[0]


def test_user_mistakes_end_in_one_line_and_exit_code_2(tmp_path, capsys):
    ans = answers(tmp_path)
    n = len(TRUE)
    assert "submission file not found" in fails(capsys, tmp_path / "none.csv", ans)
    assert "answers file not found" in fails(capsys, submission(tmp_path), tmp_path / "none.csv")
    assert "missing column(s) ans" in fails(capsys, submission(tmp_path, header="ImageID,answer"), ans)
    assert "missing column(s) ImageID" in fails(capsys, submission(tmp_path, header="id,ans"), ans)
    assert "1 ImageID(s) of the answers have no row" in fails(capsys, submission(tmp_path, PRED[:-1], ids(n - 1)), ans)
    extra = fails(capsys, submission(tmp_path, PRED + [0], ids(n) + ["x.jpg"]), ans)
    assert "not in the answers" in extra and "x.jpg" in extra
    twice = fails(capsys, submission(tmp_path, PRED + [0], ids(n) + [ids(n)[3]]), ans)
    assert "more than once" in twice and ids(n)[3] in twice
    assert "got '18'" in fails(capsys, submission(tmp_path, PRED[:-1] + [18]), ans)
    assert "got '-1'" in fails(capsys, submission(tmp_path, [-1] + PRED[1:]), ans)
    assert "got '2.5'" in fails(capsys, submission(tmp_path, PRED[:-1] + [2.5]), ans)
    assert "got 'cat'" in fails(capsys, submission(tmp_path, PRED[:-1] + ["cat"]), ans)
    assert "got ''" in fails(capsys, submission(tmp_path, PRED[:-1] + [""]), ans)
    (tmp_path / "empty.csv").write_text("")
    assert "not a readable CSV" in fails(capsys, tmp_path / "empty.csv", ans)
