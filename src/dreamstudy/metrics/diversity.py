"""DIV, the DreamBooth paper's diversity: mean pairwise LPIPS distance among the images of one prompt.

LPIPS comes from the `lpips` package (AlexNet trunk, v0.1). Its calibrated linear layers ship inside the
package; we load them ourselves with torch.load(weights_only=True), because lpips 0.1.4 calls torch.load
without it (an unrestricted unpickle). The ImageNet AlexNet trunk comes from torchvision's URL, also
loaded with weights_only=True. Offline (pretrained=False) the trunk keeps seeded random weights.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import lpips
import torch
import torchvision
from PIL import Image
from torchvision.transforms import v2

LPIPS_NET, LPIPS_VERSION = "alex", "0.1"
LINEAR_WEIGHTS = Path(lpips.__file__).parent / "weights" / f"v{LPIPS_VERSION}" / f"{LPIPS_NET}.pth"
MIN_SIDE = 32  # AlexNet's five stages reduce smaller images to nothing
TO_UNIT = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])


def load_lpips(pretrained: bool) -> lpips.LPIPS:
    """LPIPS-alex with the package's calibrated linear layers; the trunk is torchvision's ImageNet AlexNet
    (pretrained) or random from the current torch RNG (seed it for reproducible numbers)."""
    with warnings.catch_warnings():  # lpips passes torchvision's deprecated `pretrained=` argument
        warnings.simplefilter("ignore", UserWarning)
        # pretrained=False: lpips loads nothing itself; pnet_rand: no trunk download inside lpips either.
        model = lpips.LPIPS(net=LPIPS_NET, version=LPIPS_VERSION, pretrained=False, pnet_rand=True, verbose=False)
    linear = torch.load(LINEAR_WEIGHTS, map_location="cpu", weights_only=True)
    expected = [key for key in model.state_dict() if key.startswith(tuple(f"lin{k}." for k in range(model.L)))]
    if sorted(linear) != sorted(expected):
        raise RuntimeError(f"{LINEAR_WEIGHTS}: not the LPIPS-{LPIPS_NET} linear layers "
                           f"(has {sorted(linear)}, expected {sorted(expected)})")
    model.load_state_dict(linear, strict=False)  # the rest: the trunk and a fixed scaling layer
    if pretrained:
        weights = torchvision.models.AlexNet_Weights.IMAGENET1K_V1
        trunk = torchvision.models.alexnet()
        trunk.load_state_dict(weights.get_state_dict(progress=False, check_hash=True, weights_only=True))
        copy_trunk(model, trunk)
    return model.eval()


def copy_trunk(model: lpips.LPIPS, alexnet: torchvision.models.AlexNet) -> None:
    """Put `alexnet`'s feature weights into LPIPS's trunk, whose slices keep torchvision's layer indices."""
    for stage in (model.net.slice1, model.net.slice2, model.net.slice3, model.net.slice4, model.net.slice5):
        for index, layer in stage.named_children():
            layer.load_state_dict(alexnet.features[int(index)].state_dict())


def to_lpips_input(images: Sequence[Image.Image], where: Sequence[str] = ()) -> torch.Tensor:
    """[N, 3, H, W] in [-1, 1], as LPIPS expects; all images of one prompt share one size."""
    sizes = {image.size for image in images}
    names = list(where) or [f"image {i}" for i in range(len(images))]
    if len(sizes) > 1:
        raise ValueError(f"LPIPS needs images of one size; got {sorted(sizes)} among {names}")
    if images and min(next(iter(sizes))) < MIN_SIDE:
        raise ValueError(f"LPIPS-{LPIPS_NET} needs images of at least {MIN_SIDE} px; got {images[0].size} "
                         f"for {names}")
    return torch.stack([TO_UNIT(image.convert("RGB")) for image in images]) * 2 - 1


@torch.no_grad()
def pairwise_lpips(model: lpips.LPIPS, pixels: torch.Tensor) -> torch.Tensor:
    """LPIPS distance of every pair i < j of `pixels` ([N, 3, H, W] in [-1, 1]) -> [N (N - 1) / 2].

    The same arithmetic as LPIPS.forward (v0.1, not spatial), but each image goes through the trunk once
    instead of once per pair: 4 forward passes for DreamBench's 4 images per prompt, not 12."""
    pixels = pixels.to(next(model.parameters()).device)
    features = [lpips.normalize_tensor(f) for f in model.net(model.scaling_layer(pixels))]
    first, second = torch.triu_indices(len(pixels), len(pixels), offset=1, device=pixels.device)
    distance = sum(lpips.spatial_average(linear((f[first] - f[second]) ** 2))
                   for linear, f in zip(model.lins, features))
    return distance.flatten().float().cpu()


def mean_pairwise_lpips(model: lpips.LPIPS, images: Sequence[Image.Image], where: Sequence[str] = ()) -> float:
    """DIV of one prompt's images; NaN with fewer than 2 (no pair to compare)."""
    if len(images) < 2:
        return math.nan
    return pairwise_lpips(model, to_lpips_input(images, where)).mean().item()
