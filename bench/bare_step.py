"""The floor for one training step: UNet forward, MSE, backward and AdamW step on one fixed batch.

    python bench/bare_step.py MODEL_FOLDER METHOD --resolution 64 --steps 120 --warmup 20 --mixed-precision fp32

Nothing else (no data loading, noise schedule, clipping, logging, progress bar): a training loop's step
can approach this time but not beat it, with the same optimizer. Measured with torch's default AdamW (what
diffusers' scripts use) and with fused AdamW; prints the per-step wall and CPU times after warm-up as JSON.
"""

import argparse
import json
import time

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from peft import LoraConfig

from dreamstudy.methods.lora import UNET_TARGETS
from dreamstudy.methods.trainer import DTYPES

TEXT_LENGTH = 77  # CLIP's context length


def trainable_unet(folder: str, method: str, dtype: torch.dtype) -> tuple[UNet2DConditionModel, list]:
    """The UNet with what `method` trains unfrozen, as diffusers' train_dreambooth(_lora).py set it up: frozen
    weights in the mixed-precision dtype, trained ones float32."""
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", use_safetensors=True)
    if method == "lora":
        unet.requires_grad_(False).to(dtype)
        unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=list(UNET_TARGETS)))
        for p in unet.parameters():
            if p.requires_grad:
                p.data = p.data.float()
    elif method != "dreambooth":
        raise ValueError(f"method {method!r}: the bare step knows lora and dreambooth")
    return unet.train(), [p for p in unet.parameters() if p.requires_grad]


def step_times(folder: str, method: str, resolution: int, steps: int, warmup: int, fused: bool,
               mixed_precision: str) -> dict:
    torch.manual_seed(0)
    dtype = DTYPES[mixed_precision]
    unet, params = trainable_unet(folder, method, dtype)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    unet.to(device)
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-2, fused=fused)
    side = resolution // 8  # SD's VAE downsamples by 8
    latents = torch.randn(1, unet.config.in_channels, side, side, device=device)
    text = torch.randn(1, TEXT_LENGTH, unet.config.cross_attention_dim, device=device, dtype=dtype)
    wall, cpu = [], []
    for step in range(warmup + steps):
        t_wall, t_cpu = time.perf_counter(), time.process_time()
        noise = torch.randn_like(latents)
        timestep = torch.randint(0, 1000, (1,), device=device)
        with torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32):
            prediction = unet(latents + noise, timestep, text).sample
        loss = F.mse_loss(prediction.float(), noise)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= warmup:
            wall.append(time.perf_counter() - t_wall)
            cpu.append(time.process_time() - t_cpu)
    return {"wall": wall, "cpu": cpu, "torch_threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_folder")
    parser.add_argument("method", choices=["lora", "dreambooth"])
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--mixed-precision", default="fp32", choices=list(DTYPES))
    args = parser.parse_args()
    print(json.dumps({name: step_times(args.model_folder, args.method, args.resolution, args.steps, args.warmup, fused,
                                       args.mixed_precision)
                      for name, fused in (("adamw", False), ("adamw_fused", True))}))


if __name__ == "__main__":
    main()
