"""GoogLeNet / Inception v1 (Szegedy et al., 2014) in torchvision's layout, without auxiliary heads.

Every Inception module reduces its input with 1x1 convolutions before the expensive 3x3 and
"5x5" branches. Like torchvision (whose published parameter count, 6,624,904, we match), the
"5x5" branch uses a 3x3 kernel, and every convolution is followed by BatchNorm (eps 1e-3).
"""

import torch
import torch.nn as nn


def _conv(cin, cout, k, stride=1, padding=0):
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel_size=k, stride=stride, padding=padding, bias=False),
        nn.BatchNorm2d(cout, eps=0.001), nn.ReLU(inplace=True),
    )


class Inception(nn.Module):
    def __init__(self, cin, c1, c3r, c3, c5r, c5, pool_proj):
        super().__init__()
        self.branch1 = _conv(cin, c1, 1)
        self.branch2 = nn.Sequential(_conv(cin, c3r, 1), _conv(c3r, c3, 3, padding=1))
        self.branch3 = nn.Sequential(_conv(cin, c5r, 1), _conv(c5r, c5, 3, padding=1))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1, ceil_mode=True), _conv(cin, pool_proj, 1))

    def forward(self, x):
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class GoogLeNet(nn.Module):
    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.features = nn.Sequential(
            _conv(3, 64, 7, stride=2, padding=3), nn.MaxPool2d(3, stride=2, ceil_mode=True),
            _conv(64, 64, 1), _conv(64, 192, 3, padding=1), nn.MaxPool2d(3, stride=2, ceil_mode=True),
            Inception(192, 64, 96, 128, 16, 32, 32),
            Inception(256, 128, 128, 192, 32, 96, 64),
            nn.MaxPool2d(3, stride=2, ceil_mode=True),
            Inception(480, 192, 96, 208, 16, 48, 64),
            Inception(512, 160, 112, 224, 24, 64, 64),
            Inception(512, 128, 128, 256, 24, 64, 64),
            Inception(512, 112, 144, 288, 32, 64, 64),
            Inception(528, 256, 160, 320, 32, 128, 128),
            nn.MaxPool2d(2, stride=2, ceil_mode=True),
            Inception(832, 256, 160, 320, 32, 128, 128),
            Inception(832, 384, 192, 384, 48, 128, 128),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(1024, num_classes)

    def forward(self, x):
        return self.fc(self.dropout(torch.flatten(self.pool(self.features(x)), 1)))


def googlenet(num_classes: int = 1000) -> GoogLeNet:
    return GoogLeNet(num_classes)
