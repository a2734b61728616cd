"""The reference CNN zoo: the architectures the CNN literature is built on, in plain torch.nn.

Each entry names a source file and factory, exactly as a user would on the command line
(`path/to/file.py:factory`), so zoo models load through the same code path as users' models.
This module imports nothing heavy: the registry is data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ZOO_DIR = Path(__file__).resolve().parent
WEIGHTS_DIR = ZOO_DIR / "weights"


@dataclass(frozen=True)
class ZooEntry:
    name: str
    file: str
    factory: str
    input_shape: tuple[int, ...]
    description: str
    weights: str | None = None
    # Smallest spatial size the architecture accepts, for cheap tests; None: only input_shape.
    min_spatial: int | None = None

    @property
    def path(self) -> Path:
        return ZOO_DIR / self.file

    @property
    def weights_path(self) -> Path | None:
        return WEIGHTS_DIR / self.weights if self.weights else None


ZOO: dict[str, ZooEntry] = {
    e.name: e
    for e in [
        ZooEntry("lenet5", "lenet.py", "lenet5", (1, 1, 32, 32), "LeNet-5, 10 classes (untrained)"),
        ZooEntry("alexnet", "alexnet.py", "alexnet", (1, 3, 224, 224), "AlexNet, torchvision layout (untrained)"),
        ZooEntry("vgg16", "vgg.py", "vgg16", (1, 3, 224, 224), "VGG-16, configuration D (untrained)"),
        ZooEntry("resnet18", "resnet.py", "resnet18", (1, 3, 224, 224), "ResNet-18 (untrained)", min_spatial=32),
        ZooEntry("resnet50", "resnet.py", "resnet50", (1, 3, 224, 224), "ResNet-50 (untrained)", min_spatial=32),
        ZooEntry("densenet121", "densenet.py", "densenet121", (1, 3, 224, 224), "DenseNet-121 (BC) (untrained)", min_spatial=32),
        ZooEntry("googlenet", "googlenet.py", "googlenet", (1, 3, 224, 224), "GoogLeNet / Inception v1 (untrained)", min_spatial=32),
        ZooEntry("mobilenet_v2", "mobile.py", "mobilenet_v2", (1, 3, 224, 224), "MobileNetV2 (untrained)",
                 min_spatial=32),
        ZooEntry("mobilenet_v3_large", "mobile.py", "mobilenet_v3_large", (1, 3, 224, 224),
                 "MobileNetV3-Large (untrained)", min_spatial=32),
        ZooEntry("efficientnet_b0", "mobile.py", "efficientnet_b0", (1, 3, 224, 224), "EfficientNet-B0 (untrained)",
                 min_spatial=32),
        ZooEntry("shufflenet_v2", "mobile.py", "shufflenet_v2", (1, 3, 224, 224), "ShuffleNetV2 x1.0 (untrained)",
                 min_spatial=32),
        ZooEntry("regnet_y_400mf", "mobile.py", "regnet_y_400mf", (1, 3, 224, 224), "RegNetY-400MF (untrained)",
                 min_spatial=32),
        ZooEntry("digits", "digits.py", "digits_cnn", (1, 1, 8, 8),
                 "small CNN trained on scikit-learn's digits (8x8, pixels/16)", weights="digits.pt"),
    ]
}
