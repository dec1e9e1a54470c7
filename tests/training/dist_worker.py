"""Run by test_train_distributed.py under torchrun: one subdomain-parallel step, gradients saved by rank 0."""

import sys

import torch
from training.distributed import SubdomainParallel

from napari_ddunet.core.inference.process_group import destroy_process_group
from napari_ddunet.core.network.config import ModelConfig
from napari_ddunet.core.network.model import DDUNet
from training import losses

CASES = (("Y", 0.5), ("N", 0.0))


def step(communicate: str, ce_weight: float) -> dict | None:
    torch.manual_seed(0)
    config = ModelConfig(in_channels=1, num_classes=3, depth=2, base_channels=2, comm_features=4,
                         communicate=communicate == "Y", comm_layers=2, comm_kernel=3, dropout=0.0)
    model = DDUNet(config).double().train()
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 1, 16, 24, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 3, (2, 16, 24), generator=generator)
    grid = (2, 3)
    parallel = SubdomainParallel(model, grid, [torch.device("cpu")])
    logits = parallel.forward(x)
    target = parallel.local_target(y)
    sums = parallel.all_reduce(losses.dice_sums(logits, target))
    loss = losses.dice_from_sums(sums)
    if ce_weight > 0:
        loss = loss + ce_weight * parallel.all_reduce(losses.cross_entropy_sum(logits, target)) / y.numel()
    loss.backward()
    parallel.average_gradients()
    if parallel.rank == 0:
        grads = {name: p.grad for name, p in model.named_parameters()}
        buffers = {name: b for name, b in model.named_buffers()}
        return {"loss": loss.detach(), "grads": grads, "buffers": buffers}
    return None


def main(out: str) -> None:
    torch.set_num_threads(1)
    results = {f"{c}-{w}": step(c, w) for c, w in CASES}
    if results[f"{CASES[0][0]}-{CASES[0][1]}"] is not None:
        torch.save(results, out)
    destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
