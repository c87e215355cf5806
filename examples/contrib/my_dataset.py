"""A new dataset in one file: seeded images of one bright square (class 0) or disc (class 1) with masks."""

import torch

from benchmark.data import CamDataset, Sample, register_dataset


@register_dataset("blobs")  # the class is the factory: its arguments are what a suite's `data` sets
class Blobs(CamDataset):
    """``n`` images ``[3, size, size]`` in [0, 1] (not normalised); the mask is the object. ``root`` is
    unused (generated data; accepted because ``--data-root`` passes it to every dataset)."""

    has_masks = True  # the class attributes are the registry metadata (`list datasets` shows them)
    num_classes = 2
    class_names = ["square", "disc"]
    default_model = "blob_cnn"

    def __init__(self, n: int = 8, seed: int = 0, size: int = 32, *, root: str | None = None) -> None:
        super().__init__()
        self.n, self.seed, self.size = n, seed, size

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Sample:
        g = torch.Generator().manual_seed(self.seed * 100_003 + i)  # one image = one seed: order-free
        s, r = self.size, self.size // 6
        cy, cx = (int(v) for v in torch.randint(r, s - r, (2,), generator=g))
        yy, xx = torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")
        label = i % 2
        if label == 0:
            mask = ((yy - cy).abs() <= r) & ((xx - cx).abs() <= r)
        else:
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
        image = 0.3 * torch.rand(3, s, s, generator=g)
        image[:, mask] = 0.9
        return Sample(image=image, target=label, id=f"blob{i:04d}", mask=mask, label=label)
