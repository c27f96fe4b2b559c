"""The `tune` command: run a study, export its best model, review it in MLflow, make and check data.

Ray installs a `tune` script of its own; this one replaces it and passes Ray's subcommands (ls, lsx,
list-trials, list-experiments, add-note) through to Ray's command line.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from trainables.config import UserError

RAY_COMMANDS = ("ls", "lsx", "list-trials", "list-experiments", "add-note")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in RAY_COMMANDS:
        from tune.search.ray_setup import ray_tune_cli

        return ray_tune_cli(argv)
    args = parser().parse_args(argv)
    if args.func is not cmd_ui:  # MLflow's INFO records (a new store's tables) stay off the terminal; a study's
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # log file still gets them (ray_setup.quiet_logs)
    try:
        return args.func(args) or 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tune", description="Hyperparameter search for the mask/gender/age "
                                "competition: Ray Tune + Optuna + ASHA, tracked in MLflow. Ray's own "
                                f"subcommands work too: {', '.join(RAY_COMMANDS)}.")
    sub = p.add_subparsers(dest="command", required=True)
    study_commands(sub)
    model_commands(sub)
    tool_commands(sub)
    return p


def study_commands(sub) -> None:
    """tune run, export, report: a study, from its search to its best trials."""
    run = sub.add_parser("run", help="run (or --resume) a study")
    run.add_argument("space", help="the study's YAML file, e.g. search_spaces/age.yaml")
    run.add_argument("--data", help="the competition's train/ folder (overrides data.root)")
    run.add_argument("--name", help="the study's name (default: the YAML's name, else its file name)")
    run.add_argument("--num-samples", type=int, help="trials to run (search.num_samples)")
    run.add_argument("--cpus-per-trial", type=float, help="resources.cpus_per_trial")
    run.add_argument("--gpus-per-trial", type=float, help="resources.gpus_per_trial; 0.25 = four trials per GPU")
    run.add_argument("--max-concurrent", type=int, help="trials at once (search.max_concurrent)")
    run.add_argument("--time-budget", metavar="DURATION", help="end the study this long after the command starts, "
                     "e.g. 40m or 1h30m (search.time_budget_s): the trials' length and how many run at once are "
                     "planned from the pace measured here, and every trial's schedule ends before then")
    run.add_argument("--address", help="join this Ray cluster (HEAD:6379) instead of starting a local one")
    run.add_argument("--storage", metavar="URI", help="checkpoints and Ray's experiment state: a folder every node "
                     "mounts or s3://BUCKET/PREFIX, gs://... (YAML storage:; default $TUNE_STORAGE, else mlruns/ray)")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override any key of the YAML by its dotted path, e.g. train.epochs=3 (repeatable)")
    run.add_argument("--resume", action="store_true", help="continue the study of the same name: finish its "
                     "interrupted trials, then add trials up to --num-samples, chosen knowing the earlier ones")
    run.add_argument("--verbose", action="store_true", help="show Ray's own output (else in mlruns/logs/STUDY.log)")
    run.add_argument("--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db)")
    run.set_defaults(func=cmd_run)

    export = sub.add_parser("export", help="export the best trial of a study")
    export.add_argument("study")
    export.add_argument("--out", help="folder to write (default: exports/STUDY)")
    export.add_argument("--metric", default="val_f1", help="the metric the best epoch is chosen by")
    export.add_argument("--mode", default="max", choices=["max", "min"])
    export.add_argument("--ensemble", action="store_true", help="an ensemble of the study's trials chosen greedily "
                        "on the validation persons (Caruana et al.), which tune predict takes as one model")
    export.add_argument("--tracking-uri")
    export.add_argument("--storage", metavar="URI", help="where the study ran (default: as recorded in MLflow)")
    export.set_defaults(func=cmd_export)

    report = sub.add_parser("report", help="the best trials, learning curves and parameter importance of a study, "
                            "printed and logged to its MLflow run")
    report.add_argument("study")
    report.add_argument("--top", type=int, default=10, help="trials in the table of the best (default 10)")
    report.add_argument("--metric", default="val_f1", help="the metric trials are ranked and plotted by")
    report.add_argument("--mode", default="max", choices=["max", "min"])
    report.add_argument("--tracking-uri")
    report.set_defaults(func=cmd_report)


def model_commands(sub) -> None:
    """tune train, predict, evaluate, score: one configuration, and a submission from exports."""
    train = sub.add_parser("train", help="train one configuration without a search (a study's fixed values or an "
                           "export's config.yaml); writes an export")
    train.add_argument("config", help="a study YAML (its space is not searched) or an export's config.yaml")
    train.add_argument("--data", help="the competition's train/ folder (overrides data.root)")
    train.add_argument("--epochs", type=int, help="train.epochs")
    how = train.add_mutually_exclusive_group()
    how.add_argument("--full", action="store_true", help="train on every person, no validation (the final model)")
    how.add_argument("--folds", type=int, metavar="K", help="K models on person-stratified folds; out-of-fold F1")
    train.add_argument("--out", help="the export folder (default: exports/CONFIG-KIND-TIME)")
    train.add_argument("--time-budget", metavar="DURATION", help="train a schedule of as many epochs (up to "
                       "train.epochs) as the pace measured here says end within this wall time, e.g. 20m")
    train.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="CPU threads and loader workers")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key (repeatable)")
    train.add_argument("--experiment", default="train", help="the MLflow experiment (default: train)")
    train.add_argument("--tracking-uri")
    train.set_defaults(func=cmd_train)

    for name, func, text in (
        ("predict", cmd_predict, "predict an eval set (info.csv) with one or more exports; writes ImageID,ans"),
        ("evaluate", cmd_evaluate, "score exports together on labeled persons no model trained on"),
    ):
        command = sub.add_parser(name, help=text)
        command.add_argument("--model", action="append", required=True, metavar="DIR",
                             help="an export folder, or runs:/RUN_ID/export (an export logged to MLflow, downloaded "
                             "through --tracking-uri) (repeatable: one per task, or several to ensemble)")
        command.add_argument("--tracking-uri")
        command.add_argument("--data", required=True,
                             help="the eval/ folder (info.csv, images/)" if name == "predict" else "a train/ folder")
        command.add_argument("--tta", choices=["none", "flip"], default="none", help="average with the mirror image")
        command.add_argument("--vote", choices=["soft", "hard"], default="soft",
                             help="per task: average the probabilities (soft) or count the predicted classes")
        command.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
        command.add_argument("--batch-size", type=int, default=128)
        command.set_defaults(func=func)
        if name == "predict":
            command.add_argument("--out", default="submission.csv")
        else:
            command.add_argument("--persons", choices=["val", "all"], default="val",
                                 help="val: the models' validation persons; all: every person (none may be seen)")

    score = sub.add_parser("score", help="macro F1 of a submission (ImageID,ans) against the answers")
    score.add_argument("submission", help="the submission CSV: ImageID,ans")
    score.add_argument("answers", help="the answers CSV: ImageID,ans[,mask,gender,age] (eval_answers.csv)")
    score.set_defaults(func=cmd_score)


def tool_commands(sub) -> None:
    """tune ui, data, cache: the MLflow UI, data sets, the photo cache."""
    ui = sub.add_parser("ui", help="the MLflow UI over the project's store, on 127.0.0.1")
    ui.add_argument("--study", help="the study whose trials it opens on (default: the newest study)")
    ui.add_argument("--port", type=int, default=5000)
    ui.add_argument("--tracking-uri")
    ui.set_defaults(func=cmd_ui)

    data = sub.add_parser("data", help="make the demo data set, or check a data set")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    demo = data_sub.add_parser("demo", help="write the built-in synthetic demo data set")
    demo.add_argument("dir")
    demo.add_argument("--persons", type=int, default=240)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=cmd_data_demo)
    check = data_sub.add_parser("check", help="validate a data set in the competition layout")
    check.add_argument("dir")
    check.add_argument("--image-size", type=int, default=224, help="the model input the photos are for: photos far "
                       "smaller are named in a warning (default 224)")
    check.set_defaults(func=cmd_data_check)

    photos = sub.add_parser("cache", help="the decoded-photo cache shared by the trials on this machine")
    photos_sub = photos.add_subparsers(dest="cache_command", required=True)
    for name, func, text in (("ls", cmd_cache_ls, "list what it holds"), ("clear", cmd_cache_clear, "empty it")):
        command = photos_sub.add_parser(name, help=text)
        command.add_argument("--dir", help="the cache folder (default: $TUNE_CACHE_DIR, else ~/.cache/tune/images)")
        command.set_defaults(func=func)


def cmd_run(args: argparse.Namespace) -> int:
    import time

    started = time.time()  # the time budget counts the imports (Ray's take seconds), checks and photo cache too

    from tune.config import cli_overrides, load_study, parse_duration
    from tune.search.run import run
    from tune.tracking import tracking_uri

    flags = {"data.root": args.data, "name": args.name, "search.num_samples": args.num_samples,
             "resources.cpus_per_trial": args.cpus_per_trial, "resources.gpus_per_trial": args.gpus_per_trial,
             "search.max_concurrent": args.max_concurrent,
             "search.time_budget_s": parse_duration(args.time_budget) if args.time_budget else None,
             "storage": args.storage}
    study = load_study(args.space, cli_overrides(args.set, flags))
    return run(study, args.space, tracking_uri(args.tracking_uri), args.resume, args.address, args.verbose, started)


def cmd_export(args: argparse.Namespace) -> int:
    from tune.storage import study_storage
    from tune.tracking import tracking_uri

    store = study_storage(args.study, args.storage, tracking_uri(args.tracking_uri))
    out = Path(args.out or Path("exports") / (args.study + ("-ensemble" if args.ensemble else "")))
    if args.ensemble:
        from tune.ensemble import export_ensemble

        manifest = export_ensemble(args.study, out, tracking_uri(args.tracking_uri), args.metric, args.mode,
                                   store=store)
        chosen = ", ".join(f"{m['trial_id']} ({m['weights']}) x{m['weight']:.2f}" for m in manifest["members"])
        print(f"exported an ensemble of {len(manifest['members'])} of {manifest['candidates']} trials of "
              f"{args.study} to {out}: validation F1 {manifest['val_f1']:.4f} (best trial alone "
              f"{manifest['best_member_val_f1']:.4f})\n  {chosen}")
        return 0
    from tune.export import export_study, weights_held

    metrics = export_study(args.study, out, tracking_uri(args.tracking_uri), args.metric, args.mode, store)
    print(f"exported {args.study} ({weights_held(metrics)}, {args.metric} {metrics[args.metric]:.4f}) to {out}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from tune.report import report_study
    from tune.tracking import tracking_uri

    if args.top < 1:
        raise UserError(f"--top must be at least 1, got {args.top}")
    print(report_study(args.study, tracking_uri(args.tracking_uri), args.top, args.metric, args.mode))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from tune.config import cli_overrides, load_study, parse_duration
    from tune.tracking import tracking_uri
    from tune.train import default_out, train

    budget = parse_duration(args.time_budget) if args.time_budget else None
    study = load_study(args.config, cli_overrides(args.set, {"data.root": args.data, "train.epochs": args.epochs}))
    if study.space:
        print(f"note: {args.config} has a search space; tune train trains its fixed values and ignores the space")
    if not study.data.root:
        raise UserError(f"{args.config}: no data folder: set data: in the file or pass --data DIR")
    out = Path(args.out) if args.out else default_out(args.config, args.full, args.folds)
    summary = train(study.trial_defaults(), out, tracking_uri(args.tracking_uri), args.experiment, args.full,
                    args.folds, args.cpus, budget)
    print("\n".join(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}" for k, v in summary.items()))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from tune.export import fetch_export
    from tune.predict import predict_submission
    from tune.tracking import tracking_uri

    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")

    models = [fetch_export(m, tracking_uri(args.tracking_uri)) for m in args.model]
    info = predict_submission(models, args.data, args.out, args.device, args.batch_size, args.tta == "flip",
                              args.vote)
    print(f"wrote {args.out}: {len(info)} predictions")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from tune.export import fetch_export
    from tune.predict import evaluate
    from tune.tracking import tracking_uri

    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")

    models = [fetch_export(m, tracking_uri(args.tracking_uri)) for m in args.model]
    evaluate(models, args.data, args.persons, args.device, args.batch_size, args.tta == "flip", args.vote,
             tracking_uri(args.tracking_uri))
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from tune.score import format_score, score_submission

    print(format_score(score_submission(args.submission, args.answers)))
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    from tune.tracking import tracking_uri
    from tune.ui import serve

    return serve(tracking_uri(args.tracking_uri), args.port, args.study)


def cmd_data_demo(args: argparse.Namespace) -> int:
    from tune.demo_data import write_demo

    try:
        n = write_demo(args.dir, persons=args.persons, seed=args.seed)
    except ValueError as e:
        raise UserError(str(e)) from None
    print(f"wrote {n} synthetic persons ({7 * n} images) to {args.dir}")
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    from tune.data_check import check_data

    return 2 if check_data(args.dir, args.image_size) else 0


def cmd_cache_ls(args: argparse.Namespace) -> int:
    from trainables import cache

    folder = cache.cache_dir(args.dir)
    items = cache.entries(folder)
    for e in items:
        crop = "x".join(map(str, e["center_crop"])) if e["center_crop"] else "none"
        print(f"{e['key']}  {e['images']:>7} photos  {e['size']:>4} px  crop {crop:<8} {e['bytes'] / 2**20:>8.1f} MiB"
              f"  {e['created']}  {e['data']}")
    print(f"{len(items)} entries, {sum(e['bytes'] for e in items) / 2**20:.1f} MiB in {folder}")
    return 0


def cmd_cache_clear(args: argparse.Namespace) -> int:
    from trainables import cache

    folder = cache.cache_dir(args.dir)
    print(f"freed {cache.clear(folder) / 2**20:.1f} MiB in {folder}")
    return 0
