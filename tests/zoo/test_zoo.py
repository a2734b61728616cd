"""The reference zoo: published parameter counts, and MACs that agree between two independent counts."""

import pytest
import torch

from deploykit.zoo import count_macs, describe_zoo, load_zoo_model
from deploykit_zoo import ZOO

# Published figures for the 1000-class versions (torchvision's model cards; LeNet-5 in its
# common ReLU/max-pool form with 10 classes).
PUBLISHED_PARAMS = {
    "lenet5": 61_706,
    "alexnet": 61_100_840,
    "vgg16": 138_357_544,
    "resnet18": 11_689_512,
    "resnet50": 25_557_032,
    "densenet121": 7_978_856,
    "googlenet": 6_624_904,
    # The networks CPUs run (torchvision's model cards).
    "mobilenet_v2": 3_504_872,
    "mobilenet_v3_large": 5_483_032,
    "efficientnet_b0": 5_288_548,
    "shufflenet_v2": 2_278_604,
    "regnet_y_400mf": 4_344_144,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_parameter_count_matches_publication(name):
    module = load_zoo_model(name).module
    assert sum(p.numel() for p in module.parameters()) == PUBLISHED_PARAMS[name]


def test_every_zoo_entry_is_listed_with_positive_figures():
    rows = {r["name"]: r for r in describe_zoo()}
    assert set(rows) == set(ZOO)
    for name, count in PUBLISHED_PARAMS.items():
        assert rows[name]["params"] == count
    assert all(r["macs"] > 0 for r in rows.values())


def test_known_mac_counts():
    # Widely quoted figures: VGG-16 15.47 GMACs, ResNet-18 1.81 GMACs at 224x224.
    rows = {r["name"]: r for r in describe_zoo()}
    assert rows["vgg16"]["macs"] == 15_470_264_320
    assert round(rows["resnet18"]["macs"] / 1e9, 2) == 1.81


def test_densenet_bc_has_bottlenecks_and_compression():
    net = load_zoo_model("densenet121").module
    first_layer = net.features[4]
    convs = [m for m in first_layer.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs[0].kernel_size == (1, 1) and convs[0].out_channels == 4 * 32  # B: 1x1 to 4k channels
    transitions = [m for m in net.features if isinstance(m, torch.nn.Sequential)]
    conv = [m for m in transitions[0].modules() if isinstance(m, torch.nn.Conv2d)][0]
    assert conv.out_channels * 2 == conv.in_channels  # C: theta = 0.5


def test_count_macs_on_a_single_conv_by_hand():
    conv = torch.nn.Sequential(torch.nn.Conv2d(192, 32, 5, padding=2))
    # The notes' Inception example: 28x28x192 -> 5x5 conv -> 32 channels.
    assert count_macs(conv, (1, 192, 28, 28)) == 28 * 28 * 32 * 5 * 5 * 192 == 120_422_400


def test_trained_digits_weights_load_through_the_user_path(tmp_path):
    zoo_net = load_zoo_model("digits").module
    # The same file:factory + --weights a user would give must yield the same network.
    user_net = load_zoo_model(f"{ZOO['digits'].path}:digits_cnn", weights=str(ZOO["digits"].weights_path)).module
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(zoo_net(x), user_net(x))
