"""Score a submission against the answers: macro F1 over the 18 classes, accuracy, and per-task macro F1.

    submission.csv   ImageID,ans                   (eval/info.csv with `ans` filled in: classes 0..17)
    answers.csv      ImageID,ans[,mask,gender,age] (eval_answers.csv of ../shared/tools/make_utkmask.py)

The mask, gender and age-band scores split both sides' 18-class ids (`trainables.data.decompose18`).
Macro F1 averages over the classes present in the answers or the submission, as the competition's scorer
(scikit-learn's `f1_score(average="macro")`, which `_macro_f1` computes) does: a class in neither is left out,
not counted as 0.
Every mistake in the files (missing file or column, ImageIDs missing, extra or repeated, an `ans` that is
not a class 0..17) ends in `UserError`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from trainables.config import UserError
from trainables.data import decompose18

N_CLASSES = 18
TASKS = ("mask", "gender", "age")


def read_labels(path: str | Path, what: str) -> pd.DataFrame:
    """A CSV's ImageID and ans columns (ans as int 0..17), with every ImageID once."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} file not found: {path}")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not a readable CSV file ({str(e).strip().splitlines()[0]})") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in ("ImageID", "ans") if c not in frame.columns]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)} (it has: {', '.join(frame.columns)}); "
                        "expected ImageID,ans")
    if frame.empty:
        raise UserError(f"{path}: no rows")
    frame = frame[["ImageID", "ans"]].apply(lambda column: column.str.strip())
    repeated = frame["ImageID"][frame["ImageID"].duplicated()].unique()
    if len(repeated):
        raise UserError(f"{path}: {len(repeated)} ImageID(s) appear more than once, e.g. {_some(repeated)}")
    numbers = pd.to_numeric(frame["ans"].where(frame["ans"].str.fullmatch(r"[+-]?\d+"), None), errors="coerce")
    bad = numbers.isna() | (numbers < 0) | (numbers >= N_CLASSES)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise UserError(f"{path}: line {row + 2}: ans must be a whole number 0..{N_CLASSES - 1}, got "
                        f"{frame['ans'].iloc[row]!r} for ImageID {frame['ImageID'].iloc[row]!r} "
                        f"({int(bad.sum())} such row(s))")
    return frame.assign(ans=numbers.astype(int))


def score_submission(submission: str | Path, answers: str | Path) -> dict[str, float]:
    """f1 (18 classes), acc, f1_mask, f1_gender, f1_age and the number of images scored."""
    truth = read_labels(answers, "answers")
    sub = read_labels(submission, "submission")
    lacking = truth["ImageID"][~truth["ImageID"].isin(sub["ImageID"])]
    if len(lacking):
        raise UserError(f"{submission}: {len(lacking)} ImageID(s) of the answers have no row, e.g. {_some(lacking)}")
    extra = sub["ImageID"][~sub["ImageID"].isin(truth["ImageID"])]
    if len(extra):
        raise UserError(f"{submission}: {len(extra)} ImageID(s) are not in the answers, e.g. {_some(extra)}")
    pred = sub.set_index("ImageID")["ans"].reindex(truth["ImageID"]).to_numpy()
    return scores(truth["ans"].to_numpy(), pred)


def scores(true: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """The scores of 18-class predictions (also used by `tune evaluate`)."""
    out = {"images": len(true), "f1": _macro_f1(true, pred), "acc": float((true == pred).mean())}
    for task, t, p in zip(TASKS, decompose18(true), decompose18(pred), strict=True):
        out[f"f1_{task}"] = _macro_f1(t, p)
    return out


def _macro_f1(true: np.ndarray, pred: np.ndarray) -> float:
    """scikit-learn's f1_score(true, pred, average="macro", zero_division=0), which tests/test_score.py checks it
    against, without the second scikit-learn takes to import (tune score runs in about one)."""
    classes, true_at = np.unique(np.concatenate([true, pred]), return_inverse=True)
    t, p = true_at[: len(true)], true_at[len(true):]
    hits = np.bincount(t[t == p], minlength=len(classes))
    support, predicted = np.bincount(t, minlength=len(classes)), np.bincount(p, minlength=len(classes))
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(support + predicted > 0, 2 * hits / (support + predicted), 0.0)
    return float(f1.mean())


def _some(values, n: int = 3) -> str:
    values = list(values)
    return ", ".join(map(str, values[:n])) + (", ..." if len(values) > n else "")


def format_score(scores: dict[str, float]) -> str:
    rows = [("images scored", str(scores["images"])), ("macro F1, 18 classes", f"{scores['f1']:.4f}"),
            ("accuracy", f"{scores['acc']:.4f}"), ("macro F1, mask", f"{scores['f1_mask']:.4f}"),
            ("macro F1, gender", f"{scores['f1_gender']:.4f}"), ("macro F1, age band", f"{scores['f1_age']:.4f}")]
    return "\n".join(f"{name:<22}{value}" for name, value in rows)
