"""VGG-16 (Simonyan & Zisserman, 2014), configuration D, as tabulated in the cs231n notes.

As in those notes, pool5's 7x7x512 volume feeds the first fully-connected layer directly (no
adaptive pool), so the network is a sliding-window function of its input.
"""

import torch.nn as nn

_CFG_D = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def _features(cfg) -> nn.Sequential:
    layers, channels = [], 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(channels, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            channels = v
    return nn.Sequential(*layers)


class VGG(nn.Module):
    def __init__(self, cfg=_CFG_D, num_classes: int = 1000):
        super().__init__()
        self.features = _features(cfg)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(512 * 7 * 7, 4096), nn.ReLU(inplace=True), nn.Dropout(0.5),
            nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(0.5),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


def vgg16(num_classes: int = 1000) -> VGG:
    return VGG(_CFG_D, num_classes)
