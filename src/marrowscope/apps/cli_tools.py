"""The ``marrowscope`` subcommands that maintain a model folder: refit its checks, choose its second
reading, average like folders. Each parses flags and makes one library call."""

from __future__ import annotations

from pathlib import Path

from marrowscope.apps.cli_args import model_flag
from marrowscope.core.samples import default_data_dir


def add_fit_checks(sub) -> None:
    from marrowscope.core.config import FITS

    s = sub.add_parser("fit-checks", help="refit what training fits after the weights (training scale, focus, "
                       "domain check) on a model folder made without them",
                       description="Fits, in this order, the training scale (red cells), the focus settings and the "
                       "domain check on the non-test images of the model folder's manifest (or --data). Each later "
                       "one is measured on images prepared with the earlier ones: after refitting the scale or the "
                       "focus, refit the domain check too (the default fits all three).")
    model_flag(s)
    s.add_argument("--only", nargs="+", choices=FITS, default=list(FITS))
    s.add_argument("--data", default=None, help="manifest or class folders (default: the model folder's manifest.csv)")
    s.add_argument("--data-root", default=None, help="folder that now holds a manifest's class folders")
    s.set_defaults(func=cmd_fit_checks)


def cmd_fit_checks(a) -> None:
    from marrowscope.core.artifacts import resolve_model_dir
    from marrowscope.core.data import load_samples
    from marrowscope.fit.checks import fit_checks

    model_dir = resolve_model_dir(a.model)
    data = Path(a.data) if a.data else model_dir / "manifest.csv"
    samples, _ = load_samples(data, None, data_root=a.data_root)
    for name, fitted in fit_checks(model_dir, samples, data, a.data_root, a.only).items():
        print(f"{name}: {fitted if fitted else 'nothing to measure it on (left as it was)'}")


def add_choose_second_zoom(sub) -> None:
    s = sub.add_parser("choose-second-zoom", help="choose how much smaller unusual images are read a second time, "
                       "on another lab's labelled images")
    model_flag(s)
    s.add_argument("other", nargs="?", default=None,
                   help="class folders of another lab's images (default: ../shared/data/other-lab-pbc)")
    s.add_argument("--zooms", type=float, nargs="+", default=[0.9, 0.8, 0.7, 0.6])
    s.add_argument("--data-root", default=None, help="folder that now holds the model manifest's class folders")
    s.add_argument("--write", action="store_true", help="store the chosen zoom in the model folder")
    s.set_defaults(func=cmd_choose_second_zoom)


def cmd_choose_second_zoom(a) -> None:
    from marrowscope.core.errors import MarrowscopeError
    from marrowscope.fit.second_zoom import choose_second_zoom

    other = a.other or (default_data_dir().parent / "other-lab-pbc" if default_data_dir() else None)
    if other is None:
        raise MarrowscopeError("name the other lab's class folders (../shared/data/other-lab-pbc is not present).")
    r = choose_second_zoom(a.model, other, a.zooms, a.data_root, a.write, report=lambda line: print(line, flush=True))
    print(f"chosen: {r['zoom']}: {r['how']}")
    if a.write:
        print(f"wrote {r['model_dir'] / 'config.json'}")


def add_average_weights(sub) -> None:
    s = sub.add_parser("average-weights", help="average the weights of like model folders (a model soup)")
    s.add_argument("out", help="the new model folder")
    s.add_argument("folders", nargs="+", help="two or more model folders of one architecture and class list")
    s.set_defaults(func=cmd_average_weights)


def cmd_average_weights(a) -> None:
    from marrowscope.fit.soup import average_weights

    print(f"wrote {average_weights(a.folders, a.out)}: the mean of {len(a.folders)} models' weights; refit its "
          "checks (`marrowscope fit-checks`) and calibration (`marrowscope calibrate`) before use")
