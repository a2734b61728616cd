"""The networks CPUs run: MobileNetV2, MobileNetV3-Large, EfficientNet-B0, ShuffleNetV2 (x1.0) and RegNetY-400MF.

Plain torch.nn, laid out as their papers and torchvision's reference implementations lay them out, so
their parameter counts equal the published ones (tests/zoo/test_zoo.py). Untrained: they measure speed.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn


def _divisible(value: float, divisor: int = 8, minimum: int | None = None) -> int:
    """The channel count rounded to a multiple of `divisor`, never more than 10% below `value` (MobileNet's rule)."""
    minimum = minimum or divisor
    out = max(minimum, int(value + divisor / 2) // divisor * divisor)
    return out + divisor if out < 0.9 * value else out


def _conv_bn(cin, cout, kernel=3, stride=1, groups=1, act=nn.ReLU, eps=1e-5):
    layers = [nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
              nn.BatchNorm2d(cout, eps=eps)]
    if act is not None:
        layers.append(act(inplace=True) if act in (nn.ReLU, nn.ReLU6, nn.Hardswish, nn.SiLU) else act())
    return nn.Sequential(*layers)


class SqueezeExcitation(nn.Module):
    def __init__(self, channels, squeeze, act=nn.ReLU, gate=nn.Sigmoid):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.act, self.gate = act(inplace=True), gate()

    def forward(self, x):
        s = self.gate(self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True)))))
        return x * s


class PooledClassifier(nn.Module):
    """features, a global average pool, then classifier: the head MobileNetV2/V3 and EfficientNet share."""

    def forward(self, x):
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))


# -- MobileNetV2 ------------------------------------------------------------------------------------
class InvertedResidualV2(nn.Module):
    def __init__(self, cin, cout, stride, expand):
        super().__init__()
        hidden = int(round(cin * expand))
        layers = [] if expand == 1 else [_conv_bn(cin, hidden, 1, act=nn.ReLU6)]
        layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6), _conv_bn(hidden, cout, 1, act=None)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.block(x) if self.residual else self.block(x)


class MobileNetV2(PooledClassifier):
    SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1)]

    def __init__(self, num_classes=1000):
        super().__init__()
        layers, cin = [_conv_bn(3, 32, 3, 2, act=nn.ReLU6)], 32
        for t, c, n, s in self.SETTINGS:
            for i in range(n):
                layers.append(InvertedResidualV2(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(_conv_bn(cin, 1280, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))



def mobilenet_v2():
    return MobileNetV2()


# -- MobileNetV3-Large ------------------------------------------------------------------------------
class InvertedResidualV3(nn.Module):
    def __init__(self, cin, kernel, expanded, cout, se, act, stride):
        super().__init__()
        layers = [] if expanded == cin else [_conv_bn(cin, expanded, 1, act=act)]
        layers.append(_conv_bn(expanded, expanded, kernel, stride, groups=expanded, act=act))
        if se:
            layers.append(SqueezeExcitation(expanded, _divisible(expanded // 4), gate=nn.Hardsigmoid))
        layers.append(_conv_bn(expanded, cout, 1, act=None))
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.block(x) if self.residual else self.block(x)


class MobileNetV3Large(PooledClassifier):
    # (in, kernel, expanded, out, squeeze-excitation, activation, stride)
    SETTINGS = [(16, 3, 16, 16, False, "RE", 1), (16, 3, 64, 24, False, "RE", 2), (24, 3, 72, 24, False, "RE", 1),
                (24, 5, 72, 40, True, "RE", 2), (40, 5, 120, 40, True, "RE", 1), (40, 5, 120, 40, True, "RE", 1),
                (40, 3, 240, 80, False, "HS", 2), (80, 3, 200, 80, False, "HS", 1), (80, 3, 184, 80, False, "HS", 1),
                (80, 3, 184, 80, False, "HS", 1), (80, 3, 480, 112, True, "HS", 1), (112, 3, 672, 112, True, "HS", 1),
                (112, 5, 672, 160, True, "HS", 2), (160, 5, 960, 160, True, "HS", 1), (160, 5, 960, 160, True, "HS", 1)]

    def __init__(self, num_classes=1000):
        super().__init__()
        layers = [_conv_bn(3, 16, 3, 2, act=nn.Hardswish)]
        for cin, k, exp, cout, se, act, s in self.SETTINGS:
            layers.append(InvertedResidualV3(cin, k, exp, cout, se, nn.ReLU if act == "RE" else nn.Hardswish, s))
        layers.append(_conv_bn(160, 960, 1, act=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Linear(960, 1280), nn.Hardswish(inplace=True), nn.Dropout(0.2),
                                        nn.Linear(1280, num_classes))



def mobilenet_v3_large():
    return MobileNetV3Large()


# -- EfficientNet-B0 --------------------------------------------------------------------------------
class MBConv(nn.Module):
    def __init__(self, cin, cout, kernel, stride, expand):
        super().__init__()
        expanded = _divisible(cin * expand)
        layers = [] if expanded == cin else [_conv_bn(cin, expanded, 1, act=nn.SiLU, eps=1e-3)]
        layers += [_conv_bn(expanded, expanded, kernel, stride, groups=expanded, act=nn.SiLU, eps=1e-3),
                   SqueezeExcitation(expanded, max(1, cin // 4), act=nn.SiLU),
                   _conv_bn(expanded, cout, 1, act=None, eps=1e-3)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.block(x) if self.residual else self.block(x)


class EfficientNetB0(PooledClassifier):
    # (expand ratio, kernel, stride, in, out, layers)
    SETTINGS = [(1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
                (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1)]

    def __init__(self, num_classes=1000):
        super().__init__()
        layers = [_conv_bn(3, 32, 3, 2, act=nn.SiLU, eps=1e-3)]
        for t, k, s, cin, cout, n in self.SETTINGS:
            for i in range(n):
                layers.append(MBConv(cin if i == 0 else cout, cout, k, s if i == 0 else 1, t))
        layers.append(_conv_bn(320, 1280, 1, act=nn.SiLU, eps=1e-3))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))



def efficientnet_b0():
    return EfficientNetB0()


# -- ShuffleNetV2 x1.0 ------------------------------------------------------------------------------
def _shuffle(x, groups=2):
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleUnit(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        branch = cout // 2
        self.stride = stride
        if stride > 1:
            self.branch1 = nn.Sequential(_conv_bn(cin, cin, 3, stride, groups=cin, act=None),
                                         _conv_bn(cin, branch, 1))
        self.branch2 = nn.Sequential(_conv_bn(cin if stride > 1 else branch, branch, 1),
                                     _conv_bn(branch, branch, 3, stride, groups=branch, act=None),
                                     _conv_bn(branch, branch, 1))

    def forward(self, x):
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return _shuffle(out)


class ShuffleNetV2(nn.Module):
    def __init__(self, repeats=(4, 8, 4), channels=(24, 116, 232, 464, 1024), num_classes=1000):
        super().__init__()
        self.stem = nn.Sequential(_conv_bn(3, channels[0], 3, 2), nn.MaxPool2d(3, 2, 1))
        stages, cin = [], channels[0]
        for n, cout in zip(repeats, channels[1:4]):
            stages += [ShuffleUnit(cin, cout, 2)] + [ShuffleUnit(cout, cout, 1) for _ in range(n - 1)]
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.conv5 = _conv_bn(cin, channels[4], 1)
        self.fc = nn.Linear(channels[4], num_classes)

    def forward(self, x):
        return self.fc(self.conv5(self.stages(self.stem(x))).mean((2, 3)))


def shufflenet_v2():
    return ShuffleNetV2()


# -- RegNetY-400MF ----------------------------------------------------------------------------------
def regnet_stages(depth=16, w0=48, wa=27.89, wm=2.09, group_width=8, quant=8):
    """(widths, depths, group widths) of a RegNet's stages from its design parameters (Radosavovic et al. 2020)."""
    widths = [w0 + wa * i for i in range(depth)]
    blocks = [int(round(w0 * wm ** round(math.log(w / w0) / math.log(wm)) / quant) * quant) for w in widths]
    stage_widths, depths = [], []
    for w in blocks:
        if stage_widths and stage_widths[-1] == w:
            depths[-1] += 1
        else:
            stage_widths.append(w)
            depths.append(1)
    groups = [min(group_width, w) for w in stage_widths]
    stage_widths = [_divisible(w, g, g) if w % g else w for w, g in zip(stage_widths, groups)]
    return stage_widths, depths, groups


class RegNetYBlock(nn.Module):
    def __init__(self, cin, cout, stride, group_width, se_ratio=0.25):
        super().__init__()
        self.proj = _conv_bn(cin, cout, 1, stride, act=None) if cin != cout or stride != 1 else None
        self.f = nn.Sequential(_conv_bn(cin, cout, 1), _conv_bn(cout, cout, 3, stride, groups=cout // group_width),
                               SqueezeExcitation(cout, int(round(se_ratio * cin))), _conv_bn(cout, cout, 1, act=None))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.act((x if self.proj is None else self.proj(x)) + self.f(x))


class RegNetY400MF(nn.Module):
    def __init__(self, num_classes=1000):
        super().__init__()
        widths, depths, groups = regnet_stages()
        self.stem = _conv_bn(3, 32, 3, 2)
        blocks, cin = [], 32
        for w, d, g in zip(widths, depths, groups):
            for i in range(d):
                blocks.append(RegNetYBlock(cin, w, 2 if i == 0 else 1, g))
                cin = w
        self.trunk = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.fc(self.trunk(self.stem(x)).mean((2, 3)))


def regnet_y_400mf():
    return RegNetY400MF()
