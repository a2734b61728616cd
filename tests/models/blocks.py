"""Small networks built from the blocks real CNNs use, written as a user would write them.

Each factory returns an untrained nn.Module taking a 1x3x32x32-sized input (the two-input model also
takes a 1x4 vector). None of them is special-cased anywhere in deploykit.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F


class SqueezeExcite(nn.Module):
    def __init__(self, channels, reduced):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, reduced, 1)
        self.fc2 = nn.Conv2d(reduced, channels, 1)

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        s = F.hardsigmoid(self.fc2(F.relu(self.fc1(s))))
        return x * s


class InvertedResidual(nn.Module):
    """MobileNetV3's block: 1x1 expand, depthwise 3x3, squeeze-excite, 1x1 project, hardswish."""

    def __init__(self, cin, cout, expand, stride):
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.block = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.Hardswish(),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
            SqueezeExcite(hidden, max(8, hidden // 4)),
            nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = self.block(x)
        return x + y if self.use_res else y


def mobilenet_like():
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish(),
        InvertedResidual(16, 16, 2, 1), InvertedResidual(16, 24, 3, 2), InvertedResidual(24, 24, 3, 1),
        nn.Conv2d(24, 64, 1), nn.Hardswish(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))


class ChannelShuffle(nn.Module):
    def __init__(self, groups):
        super().__init__()
        self.groups = groups

    def forward(self, x):
        n, c, h, w = x.size()
        x = x.view(n, self.groups, c // self.groups, h, w).transpose(1, 2).contiguous()
        return x.view(n, c, h, w)


class ShuffleNet(nn.Module):
    """ShuffleNetV2-style: grouped convs, channel shuffle, and a flatten by the runtime batch size."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 24, 3, 2, 1), nn.BatchNorm2d(24), nn.ReLU())
        self.branch = nn.Sequential(nn.Conv2d(12, 12, 1), nn.BatchNorm2d(12), nn.ReLU(),
                                    nn.Conv2d(12, 12, 3, 1, 1, groups=12), nn.BatchNorm2d(12),
                                    nn.Conv2d(12, 12, 1), nn.ReLU())
        self.shuffle = ChannelShuffle(2)
        self.head = nn.Linear(24 * 4 * 4, 10)

    def forward(self, x):
        x = self.stem(x)
        a, b = x.chunk(2, dim=1)
        x = self.shuffle(torch.cat([a, self.branch(b)], 1))
        x = F.adaptive_avg_pool2d(x, 4)
        return self.head(x.view(x.size(0), -1))


def shufflenet_like():
    return ShuffleNet()


class LayerNorm2d(nn.Module):
    """ConvNeXt's LayerNorm over the channel axis of an NCHW tensor."""

    def __init__(self, channels):
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x):
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = LayerNorm2d(dim)
        self.pw1 = nn.Conv2d(dim, 4 * dim, 1)
        self.pw2 = nn.Conv2d(4 * dim, dim, 1)
        self.gamma = nn.Parameter(torch.full((1, dim, 1, 1), 0.5))

    def forward(self, x):
        y = self.pw2(F.gelu(self.pw1(self.norm(self.dw(x)))))  # exact (erf) GELU
        return x + self.gamma * y


def convnext_like():
    return nn.Sequential(nn.Conv2d(3, 32, 4, 4), LayerNorm2d(32), ConvNeXtBlock(32), ConvNeXtBlock(32),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


class TinyViT(nn.Module):
    """ViT-style: patch embedding (conv, flatten, transpose), class token, one attention block."""

    def __init__(self, dim=48, heads=4):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 8, 8)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, 17, dim) * 0.02)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, 10)

    def forward(self, x):
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(x.shape[0], -1, -1), tokens], 1) + self.pos
        h = self.norm1(tokens)
        tokens = tokens + self.attn(h, h, h, need_weights=False)[0]
        tokens = tokens + self.mlp(self.norm2(tokens))
        return self.head(tokens[:, 0])


def vit_like():
    return TinyViT()


class TwoInputs(nn.Module):
    """An image and a side vector (say, camera metadata) fused before the classifier."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(),
                                      nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.side = nn.Linear(4, 32)
        self.head = nn.Linear(32, 10)

    def forward(self, image, meta):
        return self.head(self.features(image) * torch.sigmoid(self.side(meta)))


def two_inputs():
    return TwoInputs()


class Loud(nn.Module):
    """Activations past float16's range (65504) inside, a normal range outside."""

    def __init__(self):
        super().__init__()
        self.up = nn.Conv2d(3, 8, 3, padding=1)
        self.down = nn.Conv2d(8, 4, 1)
        with torch.no_grad():
            self.up.weight.mul_(3e4)
            self.down.weight.mul_(1e-4)

    def forward(self, x):
        return self.down(F.relu(self.up(x)))


def loud():
    return Loud()


class MBConv(nn.Module):
    """EfficientNet's block: 1x1 expand, depthwise 3x3, squeeze-excite with SiLU and sigmoid, 1x1 project."""

    def __init__(self, cin, cout, expand, stride):
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.expand = nn.Sequential(nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.SiLU())
        self.depthwise = nn.Sequential(nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
                                       nn.BatchNorm2d(hidden), nn.SiLU())
        self.se_reduce = nn.Conv2d(hidden, max(4, cin // 4), 1)
        self.se_expand = nn.Conv2d(max(4, cin // 4), hidden, 1)
        self.project = nn.Sequential(nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = self.depthwise(self.expand(x))
        y = y * torch.sigmoid(self.se_expand(F.silu(self.se_reduce(F.adaptive_avg_pool2d(y, 1)))))
        y = self.project(y)
        return x + y if self.use_res else y


def efficientnet_like():
    """An EfficientNet-style net whose depthwise BatchNorms have a few outlier channels, as trained
    MobileNets and EfficientNets do once BN is folded: per-tensor int8 activations lose the rest."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.SiLU(),
        MBConv(16, 16, 2, 1), MBConv(16, 24, 4, 2), MBConv(24, 24, 4, 1),
        nn.Conv2d(24, 64, 1), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))
    with torch.no_grad():
        for block in net:
            if isinstance(block, MBConv):
                bn = block.depthwise[1]
                bn.weight[0] = 60.0  # one loud channel per block
    return net.eval()



def _settle_batchnorm(net: nn.Module, shape=(64, 3, 32, 32)) -> None:
    """BatchNorm statistics from one pass over N(0, 1) images, as training leaves them (seeded)."""
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # a cumulative average: one batch sets the statistics
            m.reset_running_stats()
    net.train()
    with torch.no_grad():
        net(torch.randn(shape, generator=torch.Generator().manual_seed(1)))
    net.eval()


def mobilenet_v3_like():
    """mobilenet_like (hardswish, ReLU6, hard-sigmoid squeeze-excite) with settled BatchNorms, a normalised
    head, and the loud channels of a trained MobileNetV3 once BN is folded."""
    torch.manual_seed(0)
    body = list(mobilenet_like())
    net = nn.Sequential(*body[:-1], nn.BatchNorm1d(64), body[-1])
    _settle_batchnorm(net)
    with torch.no_grad():
        for block in net:
            if isinstance(block, InvertedResidual):
                block.block[1].weight[0] = 60.0  # the BatchNorm after the 1x1 expansion, before hardswish
    return net.eval()
