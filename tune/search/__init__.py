"""The search: everything that talks to Ray and Optuna, and the only part of `tune` that imports Ray.

    run.py          `tune run`: checks, plan, Ray, rounds of trials, the summary
    checks.py       what a user can get wrong, checked before anything is written
    ray_setup.py    Ray's start on this machine or a cluster, and where its output goes
    searcher.py     Optuna's sampler in Ray's searcher (the prior first, the time budget), and ASHA
    optuna_store.py the study's Optuna study: the trials it knows, orphans
    tracker.py      the Ray callback that writes the study into MLflow
    live.py         the Ray callback that shows the study to the person
    private.py      the private parts of Ray and Optuna it needs, in one place

The commands that turn a study into a submission (`tune export`, `train`, `predict`, `evaluate`, `score`) read
what the study left (checkpoints, MLflow) through `tune.outcomes` and `tune.storage`, and never import it.
"""
