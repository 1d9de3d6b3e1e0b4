"""The ``lab`` training recipe on whole batches of tensors, on the device that holds them.

On a GPU the per-image PIL recipe (:mod:`marrowscope.fit.augment` + :func:`transforms.train_transform`)
sets the pace: 16 CPU cores feed 280-560 images/s to a network that trains at over 4,000. Here the
same steps run batched on the GPU, each image with its own random draw: zoom with mirrored fill,
crop, flips and turns in one resampling (``grid_sample``), then HED stain jitter, background tint,
brightness/contrast/saturation/hue, and blur, JPEG (the JPEG codec on the CPU) or, with ``amount``,
sharpening. The ranges are those of the PIL recipe, and ``tests/test_augment_batch.py`` checks that
both give the same distribution of outputs.

Input: uint8 [N, 3, S, S], the whole field at the training scale (see ``CellDataset(raw_size=S)``).
Output: normalised float [N, 3, size, size]. ``plain`` gives validation batches the whole field,
resized and normalised as the eval transform does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from marrowscope.fit.augment import _GRAY, _HED, _HED_INV, colour_matrices, jpeg_round_trip


def _uniform(n: int, lo: float, hi: float, device) -> torch.Tensor:
    return torch.empty(n, device=device).uniform_(lo, hi)


def _chance(n: int, p: float, device) -> torch.Tensor:
    return torch.rand(n, device=device) < p


class BatchLabAugment:
    """Callable: uint8 [N, 3, S, S] -> augmented, normalised float [N, 3, size, size]."""

    def __init__(self, size: int, mean, std, *, zoom=(0.6, 1.25), p_zoom=0.8, area=(0.85, 1.0),
                 ratio=(0.85, 1.18), color=0.25, saturation=0.35, hue=0.06, hed_sigma=0.08, hed_bias=0.05,
                 p_hed=0.8, tint=0.1, p_tint=0.5, blur=(0.3, 1.5), amount=None, quality=(30, 90),
                 p_focus_jpeg=0.4):
        self.size = size
        self.mean, self.std = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
        self.zoom, self.p_zoom, self.area, self.ratio = zoom, p_zoom, area, ratio
        self.color, self.saturation, self.hue = color, saturation, hue
        self.hed_sigma, self.hed_bias, self.p_hed = hed_sigma, hed_bias, p_hed
        self.tint, self.p_tint = tint, p_tint
        self.blur, self.amount, self.quality, self.p_focus_jpeg = blur, amount, quality, p_focus_jpeg

    def __call__(self, raw: torch.Tensor) -> torch.Tensor:
        x = self.geometry(raw.float() / 255.0)
        x = self.stain(x)
        x = self.colour(x)
        x = self.focus_or_jpeg(x)
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    def plain(self, raw: torch.Tensor) -> torch.Tensor:
        """No augmentation: the whole field resized to the input size and normalised (validation)."""
        x = F.interpolate(raw.float() / 255.0, size=(self.size, self.size), mode="bicubic", antialias=True,
                          align_corners=False).clamp(0, 1)
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    def geometry(self, x: torch.Tensor) -> torch.Tensor:
        """Zoom about the centre (log-uniform, mirrored fill when zooming out), a random crop of
        85-100% of the area, a mirror and a quarter turn: one affine map per image, one resampling."""
        n, dev = len(x), x.device
        z = torch.exp(_uniform(n, math.log(self.zoom[0]), math.log(self.zoom[1]), dev))
        z = torch.where(_chance(n, self.p_zoom, dev), z, torch.ones_like(z))
        a = _uniform(n, *self.area, dev)
        r = torch.exp(_uniform(n, math.log(self.ratio[0]), math.log(self.ratio[1]), dev))
        w, h = torch.sqrt(a * r).clamp(max=1), torch.sqrt(a / r).clamp(max=1)  # crop side / field side
        cx, cy = (1 - w) * _uniform(n, -1, 1, dev), (1 - h) * _uniform(n, -1, 1, dev)
        k = torch.randint(0, 4, (n,), device=dev).float() * (math.pi / 2)
        flip = torch.where(_chance(n, 0.5, dev), -1.0, 1.0)
        cos, sin = torch.cos(k), torch.sin(k)
        # output (u, v) in [-1, 1] -> turned and mirrored -> crop window -> divided by the zoom
        theta = torch.zeros(n, 2, 3, device=dev)
        theta[:, 0, 0], theta[:, 0, 1] = w * cos * flip / z, -w * sin / z
        theta[:, 1, 0], theta[:, 1, 1] = h * sin * flip / z, h * cos / z
        theta[:, 0, 2], theta[:, 1, 2] = cx / z, cy / z
        grid = F.affine_grid(theta, [n, 3, self.size, self.size], align_corners=False)
        if x.shape[-1] > 1.5 * self.size:  # avoid aliasing when the field is much larger than the input
            x = F.interpolate(x, size=round(x.shape[-1] * 1.25 * self.size / x.shape[-1]), mode="area")
        out = F.grid_sample(x, grid, mode="bicubic", padding_mode="reflection", align_corners=False)
        return out.clamp(0, 1)

    def stain(self, x: torch.Tensor) -> torch.Tensor:
        """HED jitter (Tellez et al., 2018) and a tint of the bright background, per image."""
        n, dev = len(x), x.device
        hed, hed_inv = (torch.tensor(m, dtype=torch.float32, device=dev) for m in (_HED, _HED_INV))
        od = -torch.log(x.clamp(1 / 255, 1))
        stains = torch.einsum("nchw,cd->ndhw", od, hed_inv)
        on = _chance(n, self.p_hed, dev).view(n, 1, 1, 1)
        alpha = torch.where(on, 1 + _uniform(n * 3, -self.hed_sigma, self.hed_sigma, dev).view(n, 3, 1, 1), 1.0)
        beta = torch.where(on, _uniform(n * 3, -self.hed_bias, self.hed_bias, dev).view(n, 3, 1, 1), 0.0)
        x = torch.exp(-torch.einsum("ndhw,dc->nchw", stains * alpha + beta, hed)).clamp(0, 1)
        bright = ((x.mean(1, keepdim=True) * 255 - 150) / 80).clamp(0, 1)  # 0 on stained cells, 1 on background
        on = _chance(n, self.p_tint, dev).view(n, 1, 1, 1)
        tint = torch.where(on, _uniform(n * 3, -self.tint, self.tint, dev).view(n, 3, 1, 1), 0.0)
        return (x + bright * tint).clamp(0, 1)

    def colour(self, x: torch.Tensor) -> torch.Tensor:
        """Brightness, contrast, saturation and hue drawn per image, as one colour matrix each: the
        per-image recipe's map (:func:`marrowscope.fit.augment.colour_matrices`; drawn on the CPU, 3x3 each)."""
        n, dev = len(x), x.device
        matrix, offset = (torch.as_tensor(a, dtype=x.dtype).to(dev) for a in colour_matrices(
            *(_uniform(n, 1 - f, 1 + f, "cpu") for f in (self.color, self.color, self.saturation)),
            _uniform(n, -self.hue, self.hue, "cpu")))
        gray = torch.einsum("nchw,c->n", x, torch.as_tensor(_GRAY, dtype=x.dtype, device=dev)) / x[0, 0].numel()
        out = torch.einsum("ncd,ndhw->nchw", matrix, x) + (offset * gray).view(n, 1, 1, 1)
        return out.clamp(0, 1)

    def focus_or_jpeg(self, x: torch.Tensor) -> torch.Tensor:
        """Gaussian blur, JPEG re-compression and, with ``amount``, an unsharp mask, in equal shares of
        ``p_focus_jpeg`` of the images (as :class:`marrowscope.fit.augment.FocusOrJpeg`)."""
        n, dev = len(x), x.device
        r = torch.rand(n, device=dev)
        share = self.p_focus_jpeg / (3 if self.amount else 2)
        blur = (r < share).nonzero().flatten()
        sharp = ((r >= share) & (r < 2 * share)).nonzero().flatten() if self.amount else blur[:0]
        jpeg = ((r >= (2 if self.amount else 1) * share) & (r < self.p_focus_jpeg)).nonzero().flatten()
        x = x.clone()
        if len(blur):
            x[blur] = _gaussian_blur(x[blur], _uniform(len(blur), *self.blur, dev))
        if len(sharp):
            s = x[sharp]
            a = _uniform(len(sharp), *self.amount, dev).view(-1, 1, 1, 1)
            x[sharp] = (s + a * (s - _gaussian_blur(s, _uniform(len(sharp), *self.blur, dev)))).clamp(0, 1)
        if len(jpeg):
            x[jpeg] = _jpeg(x[jpeg], torch.randint(self.quality[0], self.quality[1] + 1, (len(jpeg),)).tolist())
        return x


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Each image blurred with its own sigma: a separable kernel per image, as grouped convolutions."""
    n, c, h, w = x.shape
    radius = int(math.ceil(3 * float(sigma.max())))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-(t[None] ** 2) / (2 * sigma[:, None] ** 2))
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # [n*c, K]
    y = F.pad(x.reshape(1, n * c, h, w), (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, k[:, None, None, :], groups=n * c)
    y = F.conv2d(y, k[:, None, :, None], groups=n * c)
    return y.reshape(n, c, h, w)


def _jpeg(x: torch.Tensor, qualities: list[int]) -> torch.Tensor:
    """JPEG round trip per image at its quality, with the PIL codec of the per-image recipe. It runs
    on the CPU whatever the batch's device: only a fifth of the images take it."""
    import numpy as np
    from PIL import Image

    u8 = (x * 255 + 0.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    out = [np.asarray(jpeg_round_trip(Image.fromarray(im), q)) for im, q in zip(u8, qualities)]
    return (torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float() / 255.0).to(x.device)
