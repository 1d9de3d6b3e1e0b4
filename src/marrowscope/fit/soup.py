"""Average the weights of model folders fine-tuned from the same start (a "model soup", Wortsman et
al. 2022): one network, no extra inference cost, that keeps what each fine-tune gained.

The folders must share architecture and classes (they are checked). The output gets the averaged
weights and the first folder's config (its training scale and marrowscope settings); refit the domain
check (``marrowscope fit-checks``), the temperature and the policy (``marrowscope calibrate``) on it
afterwards. Float weights and BatchNorm statistics are averaged; integer buffers (batch counts) are the
first folder's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from marrowscope.core.artifacts import blend_weights, load_model_folder, save_model_folder
from marrowscope.core.errors import MarrowscopeError


def average_weights(folders: Sequence[str | Path], out: str | Path) -> Path:
    """Write the mean of ``folders``' weights as the model folder ``out``; returns it."""
    folders = [Path(f) for f in folders]
    if len(folders) < 2:
        raise MarrowscopeError("give at least two model folders to average.")
    nets, infos = zip(*(load_model_folder(f) for f in folders))
    for f, info in zip(folders[1:], infos[1:]):
        if (info.architecture, info.classes) != (infos[0].architecture, infos[0].classes):
            raise MarrowscopeError(f"'{f}' is a {info.architecture} over {info.classes}, not a "
                                   f"{infos[0].architecture} over {infos[0].classes}: only like models average.")
    nets[0].load_state_dict(blend_weights([n.state_dict() for n in nets], [1 / len(nets)] * len(nets)))
    settings = {**infos[0].extra, "averaged_from": [f.name for f in folders]}
    return save_model_folder(nets[0], Path(out), infos[0].classes, infos[0].data_config, extra=settings, half=True)
