"""Average the weights of model folders fine-tuned from the same start (a "model soup", Wortsman et
al. 2022): one network, no extra inference cost, that keeps what each fine-tune gained.

    python scripts/average_weights.py OUT FOLDER_A FOLDER_B [...]

The folders must share architecture and classes (they are checked). OUT gets the averaged weights
and FOLDER_A's config (its training scale, and its marrowscope settings); refit the domain check,
the temperature and the policy on it afterwards (README, "What still throws the model off").
Float weights and BatchNorm statistics are averaged; integer buffers (batch counts) are FOLDER_A's.
"""

import argparse
from pathlib import Path

from marrowscope.artifacts import blend_weights, load_model_folder, save_model_folder
from marrowscope.errors import MarrowscopeError


def average(folders: list[Path], out: Path) -> Path:
    nets, infos = zip(*(load_model_folder(f) for f in folders))
    for f, info in zip(folders[1:], infos[1:]):
        if (info.architecture, info.classes) != (infos[0].architecture, infos[0].classes):
            raise MarrowscopeError(f"'{f}' is a {info.architecture} over {info.classes}, not a "
                                   f"{infos[0].architecture} over {infos[0].classes}: only like models average.")
    nets[0].load_state_dict(blend_weights([n.state_dict() for n in nets], [1 / len(nets)] * len(nets)))
    settings = {**infos[0].extra, "averaged_from": [f.name for f in folders]}
    return save_model_folder(nets[0], out, infos[0].classes, infos[0].data_config, extra=settings, half=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("folders", type=Path, nargs="+")
    a = ap.parse_args()
    if len(a.folders) < 2:
        raise SystemExit("give at least two model folders to average.")
    try:
        print(f"wrote {average(a.folders, a.out)}: the mean of {len(a.folders)} models' weights")
    except MarrowscopeError as exc:
        raise SystemExit(f"average_weights: {exc}") from None


if __name__ == "__main__":
    main()
