"""The class activation map from the ONNX file (numpy, no torch) against Grad-CAM (pytorch-grad-cam).

    python bench/cam_agreement.py [--model models/default] [--images 50]

On the first N test images of the model's manifest (bone-marrow-7's test split), both maps of the
predicted class, on the same pixels the network sees, at the network's input size. Prints the Pearson
correlation of the two maps (median, minimum) and each method's time per image: against the app's
Grad-CAM (on the last feature stage, ``gradcam_target_layer``), and against Grad-CAM on the layer the
class activation map reads (the last feature maps, after the head convolution), where the two should
agree up to scale.
"""

import argparse
import time

import numpy as np
from PIL import Image

from marrowscope.core.artifacts import resolve_model_dir
from marrowscope.core.cam import OnnxCam
from marrowscope.core.images import decode_image
from marrowscope.core.manifest import read_manifest
from marrowscope.core.predict import Predictor
from marrowscope.report.explain import Explainer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--images", type=int, default=50)
    a = ap.parse_args()
    model_dir = resolve_model_dir(a.model)
    predictor = Predictor(model_dir, backend="onnx")
    if not OnnxCam.available(predictor):
        raise SystemExit(f"{model_dir}: its model.onnx has no feature maps; run `marrowscope export-onnx` first")
    cam, grad = OnnxCam(predictor), Explainer(model_dir)
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    same_layer = GradCAM(model=grad.net, target_layers=[grad.net.bn2]) if hasattr(grad.net, "bn2") else None
    samples = [s for s in read_manifest(model_dir / "manifest.csv") if s.split == "test"][: a.images]
    corr, corr_same, t_cam, t_grad = [], [], 0.0, 0.0
    for s in samples:
        seen = predictor.preprocess.geometry(decode_image(s.path))
        array = predictor.preprocess.to_array(seen)
        t = time.perf_counter()
        g, k = grad._heatmap(seen, None)
        t_grad += time.perf_counter() - t
        t = time.perf_counter()
        c, _ = cam.heatmap(array, k)
        c = np.asarray(Image.fromarray(c.astype(np.float32), mode="F").resize(seen.size, Image.BILINEAR))
        t_cam += time.perf_counter() - t
        corr.append(float(np.corrcoef(c.ravel(), g.ravel())[0, 1]))
        if same_layer is not None:
            import torch

            x = torch.from_numpy(array)[None]
            g2 = same_layer(input_tensor=x, targets=[ClassifierOutputTarget(k)])[0]
            corr_same.append(float(np.corrcoef(c.ravel(), g2.ravel())[0, 1]))
    n = len(samples)
    print(f"{n} test images of {model_dir.name}: correlation of the ONNX class activation map with Grad-CAM "
          f"median {np.median(corr):.4f}, minimum {min(corr):.4f}; ms per image: CAM {1000 * t_cam / n:.1f} "
          f"(the feature maps' forward pass included), Grad-CAM {1000 * t_grad / n:.1f}")
    if corr_same:
        print(f"against Grad-CAM on the same layer (bn2, the maps the CAM reads): median {np.median(corr_same):.4f}, "
              f"minimum {min(corr_same):.4f}")


if __name__ == "__main__":
    main()
