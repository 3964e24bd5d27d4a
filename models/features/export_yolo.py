"""Export a YOLOv8 detection network to ONNX for the worker's `objects` stage.

ultralytics' normal predict/export path imports torchvision, which cannot be installed beside the
CPU torch here; only the raw network runs. `import ultralytics` merely *reads* torchvision's version
from package metadata at import time, so we answer that one lookup while importing, build the
network from its yaml (random weights: for tests) or load a local checkpoint, and export the raw
head output [batch, 4 + n_classes, anchors] with torch's legacy exporter.

    python -m models.features.export_yolo --out yolov8n.onnx [--weights yolov8n.pt] [--imgsz 640]
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import os
from pathlib import Path

import torch
from torch import nn


def import_detection_model() -> type:
    os.environ.setdefault("YOLO_CONFIG_DIR", str(Path(".cache/ultralytics").resolve()))
    real_version = metadata.version

    def version(name: str) -> str:
        return "0.0.0" if name == "torchvision" else real_version(name)

    metadata.version = version  # only for ultralytics' import-time lookup
    try:
        from ultralytics.nn.tasks import DetectionModel
    except ImportError as e:
        raise SystemExit("YOLO export needs ultralytics: pip install --no-deps ultralytics") from e
    finally:
        metadata.version = real_version
    return DetectionModel


class RawHead(nn.Module):
    """Keeps only the decoded prediction tensor (eval mode also returns per-level feature maps)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        return out[0] if isinstance(out, (list, tuple)) else out


def build(cfg: str = "yolov8n.yaml", nc: int = 80, weights: Path | None = None, seed: int = 0) -> nn.Module:
    detection_model = import_detection_model()
    if weights is not None:
        # An ultralytics checkpoint pickles its own classes; it is a file the user trusts.
        ckpt = torch.load(weights, map_location="cpu", weights_only=False)
        model = (ckpt.get("ema") or ckpt["model"]).float()
    else:
        torch.manual_seed(seed)
        model = detection_model(cfg, nc=nc, verbose=False)
    return model.eval()


def export(model: nn.Module, out: Path, imgsz: int = 640, names: list[str] | None = None) -> Path:
    import onnx

    wrapped = RawHead(model).eval()
    dummy = torch.zeros(1, 3, imgsz, imgsz)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        wrapped,
        (dummy,),
        str(out),
        dynamo=False,
        opset_version=17,
        input_names=["images"],
        output_names=["output0"],
        dynamic_axes={"images": {0: "batch"}, "output0": {0: "batch"}},
    )
    proto = onnx.load(str(out))
    labels = names or [str(n) for n in getattr(model, "names", {}).values()] or None
    if labels:
        # Same metadata key and format ultralytics writes, so the worker reads class names from it.
        entry = proto.metadata_props.add()
        entry.key, entry.value = "names", str(dict(enumerate(labels)))
    onnx.save(proto, str(out))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Export YOLOv8 to ONNX for the objects stage.")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--weights", type=Path, default=None, help="ultralytics .pt (random weights if absent)")
    ap.add_argument("--cfg", default="yolov8n.yaml")
    ap.add_argument("--nc", type=int, default=80)
    ap.add_argument("--imgsz", type=int, default=640)
    args = ap.parse_args(argv)
    model = build(args.cfg, args.nc, args.weights)
    path = export(model, args.out, args.imgsz)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
