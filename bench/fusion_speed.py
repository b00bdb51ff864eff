"""Gradient fusion of one layer (Mix-of-Show's objective): our closed form against MoS's LBFGS.

    python bench/fusion_speed.py [--concepts 2] [--rows 2048] [--threads 1] [--device cpu|cuda] [--cases NAME ...]

Per case, an SD 1.5 layer shape, random data of that shape: W0 ~ N(0, 1/in), each concept a rank-4 LoRA
(MoS's rank) fused in, W_i = W0 + B_i A_i with ||B_i A_i|| about 10% of ||W0||, and activations with a
decaying spectrum (singular values 1 .. 10^-1.5, a random rotation per concept) plus a shared mean, as real
activations have. Rows per concept: MoS's count where it is small (text encoder: 16 layer-bound copies of
"photo of a <c>" and "<c>", 11 tokens; K/V: new tokens + EOS of those two prompts, 6 rows), --rows for
the UNet's other layers (MoS records 20 steps x 4096 tokens at 64x64, x 1024 at 32x32, x 64 at 8x8).
 - closed form: Gram matrices streamed in chunks of 1024 rows (GramAccumulator, float64), then the solve as
   the fusion stage runs it (dreamstudy.multi.fusion.fuse_layer: eigen-directions below the float32
   activations' precision dropped; with fewer rows than features, as K/V, solved in the rows' space);
   timed together;
 - LBFGS: MoS's solver and settings (lbfgs_fusion: float32, history 25, strong Wolfe, lr 1) at MoS's
   iteration counts: 500 for the text encoder and K/V, 50 for the other UNet layers.
Reports both times and the speedup, the max abs difference between the two fused layers' outputs on the
concepts' inputs (next to the outputs' scale), both weights' MoS loss, and memory: on CUDA the peak
allocated by the closed form (torch.cuda.max_memory_allocated); everywhere, the bytes of the tensors the
closed form keeps (Grams, G, D, eigenvectors) against the activations and targets LBFGS must hold.
Writes everything, with machine info, to results/bench/fusion_speed.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from dreamstudy.multi.fusion import (
    MOS_TEXT_ITERS,
    MOS_UNET_ITERS,
    ConceptLayer,
    GramAccumulator,
    fuse_layer,
    fusion_loss,
    lbfgs_fusion,
)

REPO = Path(__file__).resolve().parents[1]
CHUNK = 1024  # rows per streamed activation chunk
LORA_RANK = 4  # MoS's ED-LoRA rank


@dataclass(frozen=True)
class Case:
    name: str
    n_in: int
    n_out: int
    rows: int | None  # rows per concept; None: --rows
    iters: int


CASES = (
    Case("text_encoder.self_attn.q_proj", 768, 768, 16 * 11, MOS_TEXT_ITERS),
    Case("unet.down.attn2.to_k", 768, 320, 6, MOS_TEXT_ITERS),
    Case("unet.up.attn2.to_v", 768, 1280, 6, MOS_TEXT_ITERS),
    Case("unet.down.attn1.to_q", 320, 320, None, MOS_UNET_ITERS),
    Case("unet.up.attn1.to_q", 640, 640, None, MOS_UNET_ITERS),
    Case("unet.mid.attn1.to_q", 1280, 1280, 20 * 64, MOS_UNET_ITERS),
)


def make_layer(case: Case, concepts: int, rows: int, generator: torch.Generator, device: str):
    """W0, per-concept W_i and activations X_i [rows, in], float32 (the precision MoS records them in)."""
    n_in, n_out = case.n_in, case.n_out
    w0 = torch.randn(n_out, n_in, generator=generator) / n_in**0.5
    spectrum = torch.logspace(0, -1.5, n_in)
    mean = torch.randn(n_in, generator=generator) * 0.5
    weights, inputs = [], []
    for _ in range(concepts):
        b = torch.randn(n_out, LORA_RANK, generator=generator)
        a = torch.randn(LORA_RANK, n_in, generator=generator)
        delta = b @ a
        weights.append(w0 + 0.1 * delta * (w0.norm() / delta.norm()))
        rotation, _ = torch.linalg.qr(torch.randn(n_in, n_in, generator=generator))
        inputs.append(torch.randn(rows, n_in, generator=generator) * spectrum @ rotation.T + mean)
    return w0.to(device), [w.to(device) for w in weights], [x.to(device) for x in inputs]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_case(case: Case, concepts: int, rows: int, device: str, seed: int) -> dict:
    rows = case.rows or rows
    w0, weights, inputs = make_layer(case, concepts, rows, torch.Generator().manual_seed(seed), device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base_allocated = torch.cuda.memory_allocated()

    sync(device)
    start = time.perf_counter()
    accumulators = []
    for x in inputs:
        acc = GramAccumulator(case.n_in, device=device)
        for chunk in x.split(CHUNK):
            acc.update(chunk)
        accumulators.append(acc)
    sync(device)
    gram_s = time.perf_counter() - start
    closed = fuse_layer(w0, [ConceptLayer(w, gram=acc) for w, acc in zip(weights, accumulators)])
    grams = [acc.gram for acc in accumulators]
    sync(device)
    closed_s = time.perf_counter() - start
    cuda_peak = torch.cuda.max_memory_allocated() - base_allocated if device.startswith("cuda") else None

    start = time.perf_counter()
    lbfgs = lbfgs_fusion(w0, weights, inputs, iters=case.iters)
    sync(device)
    lbfgs_s = time.perf_counter() - start

    x = torch.cat(inputs).double()
    out_diff = (x @ (closed.double() - lbfgs.double()).T).abs().max().item()
    out_scale = max((xi.double() @ wi.double().T).abs().max().item() for xi, wi in zip(inputs, weights))
    f64 = [w.double() for w in weights], [xi.double() for xi in inputs]
    eig = torch.linalg.eigvalsh(sum(grams))
    seen = eig > case.n_in * torch.finfo(inputs[0].dtype).eps * eig[-1]  # fuse_layer's cutoff
    kept_rows = sum(acc.kept_rows.numel() for acc in accumulators if acc.kept_rows is not None)
    kept_bytes = 8 * (concepts * case.n_in**2 + 2 * case.n_in**2 + case.n_out * case.n_in + kept_rows)
    return {
        "case": case.name, "in": case.n_in, "out": case.n_out, "concepts": concepts, "rows_per_concept": rows,
        "lbfgs_iters": case.iters, "gram_rank": int(seen.sum()),
        "gram_condition": (eig[-1] / eig[seen][0]).item(),
        "closed_form_s": closed_s, "closed_form_gram_s": gram_s, "lbfgs_s": lbfgs_s, "speedup": lbfgs_s / closed_s,
        "max_abs_output_diff": out_diff, "output_scale": out_scale,
        "max_abs_weight_diff": (closed.double() - lbfgs.double()).abs().max().item(),
        "loss_w0": fusion_loss(w0.double(), *f64).item(), "loss_closed_form": fusion_loss(closed.double(), *f64).item(),
        "loss_lbfgs": fusion_loss(lbfgs.double(), *f64).item(),
        "closed_form_kept_bytes": kept_bytes, "closed_form_cuda_peak_bytes": cuda_peak,
        "lbfgs_activation_bytes": 4 * concepts * rows * (case.n_in + case.n_out),
    }


def machine_info(device: str) -> dict:
    return {"device": torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor() or "cpu",
            "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concepts", type=int, default=2)
    parser.add_argument("--rows", type=int, default=2048, help="rows per concept for the UNet's spatial layers")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: the share of a busy 2-core box)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cases", nargs="*", help="case names (default: all)")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "bench" / "fusion_speed.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cases = [c for c in CASES if not args.cases or c.name in args.cases]

    results = []
    print(f"{'case':32} {'in':>5} {'out':>5} {'rows':>5} {'iters':>5} {'closed s':>9} {'lbfgs s':>9} "
          f"{'speedup':>8} {'max|dy|':>9} {'|y|':>7} {'loss cf':>9} {'loss lb':>9} {'kept MB':>8}")
    for case in cases:
        r = run_case(case, args.concepts, args.rows, args.device, args.seed)
        results.append(r)
        print(f"{r['case']:32} {r['in']:5} {r['out']:5} {r['rows_per_concept']:5} {r['lbfgs_iters']:5} "
              f"{r['closed_form_s']:9.3f} {r['lbfgs_s']:9.2f} {r['speedup']:8.1f} {r['max_abs_output_diff']:9.2e} "
              f"{r['output_scale']:7.2f} {r['loss_closed_form']:9.2e} {r['loss_lbfgs']:9.2e} "
              f"{r['closed_form_kept_bytes'] / 2**20:8.1f}")
    report = {"what": __doc__, "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "machine": machine_info(args.device), "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
