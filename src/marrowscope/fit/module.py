"""A thin LightningModule around a plain timm network: loss, metrics per stage, optimiser."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from timm.loss import SoftTargetCrossEntropy
from timm.optim import param_groups_weight_decay
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score


class CellClassifier(L.LightningModule):
    """Cross-entropy with label smoothing (optionally mixup/cutmix), AdamW, one-cycle cosine LR.

    Logs per epoch ``{train,val}_{loss,acc,f1}`` (accuracy over images, macro-F1 over classes)
    and ``lr``; the checkpoint callback picks the best epoch by ``val_f1``.

    ``distill`` w: batches carry a teacher's probabilities as a third item, and the loss is
    (1 - w) * cross-entropy + w * soft-target cross-entropy. ``device_augment``: batches arrive as
    uint8 fields and are augmented (training) or resized (validation) on the device, after transfer.
    """

    def __init__(self, net: nn.Module, num_classes: int, lr: float = 1e-3, weight_decay: float = 0.05,
                 label_smoothing: float = 0.1, mixup: float = 0.0, channels_last: bool = True,
                 distill: float = 0.0, device_augment=None):
        super().__init__()
        self.save_hyperparameters(ignore=["net", "device_augment"])  # a checkpoint holds data, not objects
        self.device_augment = device_augment
        self.net = net.to(memory_format=torch.channels_last) if channels_last else net
        self.channels_last = channels_last
        # "train" would clash with nn.Module.train, hence the "_stage" suffix
        self.metrics = nn.ModuleDict({
            f"{stage}_stage": MetricCollection({
                "acc": MulticlassAccuracy(num_classes, average="micro"),
                "f1": MulticlassF1Score(num_classes, average="macro"),
            }, prefix=f"{stage}_")
            for stage in ("train", "val")
        })
        self.mixup, self.soft_loss = None, SoftTargetCrossEntropy()
        if mixup > 0:
            from timm.data import Mixup

            self.mixup = Mixup(mixup_alpha=0.2, cutmix_alpha=1.0, prob=mixup, label_smoothing=label_smoothing,
                               num_classes=num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        if self.device_augment is None or batch is None:
            return batch
        x, *rest = batch
        with torch.no_grad():
            x = self.device_augment(x) if self.trainer.training else self.device_augment.plain(x)
        return (x, *rest)

    def _step(self, batch, stage: str) -> torch.Tensor:
        if batch is None:  # no image of this streamed batch could be read: skip the step
            return None
        x, y, *soft = batch
        w = self.hparams.distill
        if stage == "train" and soft and w > 0:
            logits = self(x)
            hard = F.cross_entropy(logits, y, label_smoothing=self.hparams.label_smoothing)
            loss = (1 - w) * hard + w * self.soft_loss(logits, soft[0])
        elif stage == "train" and self.mixup is not None and len(x) % 2 == 0:
            x, soft = self.mixup(x, y)
            logits = self(x)
            loss = self.soft_loss(logits, soft)
        else:
            logits = self(x)
            loss = F.cross_entropy(logits, y, label_smoothing=self.hparams.label_smoothing if stage == "train" else 0.0)
        metrics = self.metrics[f"{stage}_stage"]
        metrics.update(logits.detach(), y)
        self.log(f"{stage}_loss", loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True,
                 batch_size=len(x))
        # Logging the metric objects lets Lightning compute, sync across DDP ranks and reset them
        # at epoch end on every rank alike (a manual compute in a hook deadlocks under DDP).
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def configure_optimizers(self):
        # no weight decay on biases and norm layers (timm's grouping)
        groups = param_groups_weight_decay(self.net, weight_decay=self.hparams.weight_decay)
        opt = torch.optim.AdamW(groups, lr=self.hparams.lr)
        # OneCycleLR needs a few steps per phase; tiny debug runs simply stop early in the schedule
        total = max(20, int(self.trainer.estimated_stepping_batches))
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=self.hparams.lr, total_steps=total,
            pct_start=0.1, anneal_strategy="cos", div_factor=25, final_div_factor=1e3)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
