"""Behaviour-cloning training speed on a CUDA GPU: the small and ResNet-18 encoder presets.

Records ``--demos`` scripted ``lift`` demonstrations, then for each encoder preset and batch
size trains ``bc`` with ``--device cuda`` (the dataset as uint8 tensors on the GPU, bf16
autocast) and reports: samples per second (median over the logged windows after the first),
the share of time the GPU is busy while training runs (NVML utilisation: the fraction of each
sample period in which a kernel was executing, averaged over the training loop), peak GPU
memory (allocated by PyTorch, dataset included), and the data-pipeline overhead on the GPU.
Optionally evaluates each trained policy in closed loop (``--episodes``).

Writes ``benchmarks/results/bc_gpu.{md,json}``; the final line is one JSON object.
Needs CUDA: on a machine without it the script says so and exits.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from benchmarks.bc import data_overhead
from benchmarks.common import machine, machine_line, write_results
from robolearn.evaluate import EvalConfig
from robolearn.evaluate import run as evaluate
from robolearn.policies.bc import BCConfig
from robolearn.record import RecordConfig
from robolearn.record import run as record
from robolearn.train import TrainConfig
from robolearn.train import run as train


class BusySampler:
    """Samples the GPU's utilisation (NVML) on a thread: (seconds since start, percent busy)."""

    def __init__(self, enabled: bool, period: float = 0.05) -> None:
        self._period = period
        self._stop = threading.Event()
        self.samples: list[tuple[float, float]] = []
        self.start = time.perf_counter()
        self._thread = threading.Thread(target=self._run, daemon=True)
        if enabled:
            self._thread.start()

    def _run(self) -> None:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
        while not self._stop.wait(self._period):
            busy = pynvml.nvmlDeviceGetUtilizationRates(handle).gpu
            self.samples.append((time.perf_counter() - self.start, float(busy)))

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def mean_between(self, begin: float, end: float) -> float | None:
        inside = [busy for moment, busy in self.samples if begin <= moment <= end]
        return statistics.mean(inside) / 100 if inside else None


def train_and_measure(dataset: Path, out: Path, encoder: str, batch_size: int, args) -> dict:
    bc = BCConfig(history=args.history, encoder=encoder)
    cuda = args.device == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    sampler = BusySampler(cuda)  # its clock starts with the training call
    train(
        TrainConfig(
            dataset=dataset,
            out=out,
            steps=args.steps,
            batch_size=batch_size,
            device=args.device,
            seed=0,
            eval_every=-1,
            log_every=args.log_every,
            save_every=args.steps,
            bc=bc,
        )
    )
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - sampler.start
    sampler.stop()
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    windows = [entry for entry in log if "samples_per_s" in entry][1:]  # the first window holds compilation/warm-up
    # The log's times count from the first training step, the sampler's from the call; the loop's
    # start is placed by what the call took beyond the last log (setup, and the final save).
    loop_begin = seconds - log[-1]["time"]
    busy = sampler.mean_between(loop_begin + log[0]["time"], loop_begin + log[-1]["time"])
    run = {
        "encoder": encoder,
        "batch_size": batch_size,
        "steps": args.steps,
        "samples_per_s": round(statistics.median(entry["samples_per_s"] for entry in windows), 1),
        "steps_per_s": round(statistics.median(entry["steps_per_s"] for entry in windows), 1),
        "gpu_busy": round(busy, 3) if busy is not None else None,
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3) if cuda else None,
        "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 3) if cuda else None,
        "train_seconds": round(seconds, 1),
        "final_loss": round(log[-1]["loss"], 5),
    }
    overhead = data_overhead(dataset, bc, batch_size, steps=30, device=args.device)
    run["data_overhead"] = round(overhead["ratio"], 3)
    run["step_ms"] = round(overhead["step_ms_sampled"], 2)
    if args.episodes:
        metrics = evaluate(EvalConfig(out, episodes=args.episodes, workers=args.workers, weights="ema"))
        run["success_rate"] = metrics["success_rate"]
        run["success_ci95"] = metrics["success_ci95"]
    return run


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="lift")
    parser.add_argument("--demos", type=int, default=50)
    parser.add_argument("--encoders", nargs="+", default=["small", "resnet18"])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--log-every", type=int, default=100)
    parser.add_argument("--history", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--episodes", type=int, default=0, help="closed-loop evaluation episodes per run (0: none)")
    parser.add_argument("--workers", type=int, default=8, help="processes for recording and evaluation")
    parser.add_argument("--device", default="cuda", help="cpu runs the same script without GPU figures (a dry run)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("benchmarks.bc_gpu needs a CUDA GPU; none is visible here (torch.cuda.is_available() is False)")
        sys.exit(2)

    root = Path(tempfile.mkdtemp(prefix="robolearn-bc-gpu-"))
    runs = []
    try:
        dataset = root / "demos" / args.task
        start = time.perf_counter()
        record(
            RecordConfig(
                task=args.task, out=dataset, episodes=args.demos, image_size=args.image_size, workers=args.workers
            )
        )
        record_seconds = time.perf_counter() - start
        for encoder in args.encoders:
            for batch_size in args.batch_sizes:
                out = root / "policies" / f"{encoder}-{batch_size}"
                runs.append(train_and_measure(dataset, out, encoder, batch_size, args))
                print(json.dumps(runs[-1]), flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    properties = torch.cuda.get_device_properties(0) if args.device == "cuda" else None
    summary = {
        "benchmark": "bc_gpu",
        "settings": vars(args),
        "gpu": properties.name if properties else args.device,
        "gpu_memory_gib": round(properties.total_memory / 2**30, 1) if properties else None,
        "torch": torch.__version__,
        "record_seconds": round(record_seconds, 1),
        "runs": runs,
        "machine": machine(),
    }
    rows = [
        f"| {r['encoder']} | {r['batch_size']} | {r['samples_per_s']:,.0f} | {r['steps_per_s']:.0f} "
        f"| {_percent(r['gpu_busy'])} | {_number(r['peak_memory_gib'])} | {r['data_overhead']:.2f} | {r['train_seconds']:.0f} s"
        + (f" | {r['success_rate']:.0%}" if "success_rate" in r else "")
        + " |"
        for r in runs
    ]
    success_header = " | success (EMA, last step)" if args.episodes else ""
    table = "\n".join(
        [
            "# Behaviour cloning (bc) training on a CUDA GPU",
            "",
            f"`python -m benchmarks.bc_gpu --task {args.task} --demos {args.demos} --steps {args.steps} "
            f"--encoders {' '.join(args.encoders)} --batch-sizes {' '.join(map(str, args.batch_sizes))} "
            f"--history {args.history} --episodes {args.episodes}` on {summary['gpu']} "
            f"({summary['gpu_memory_gib']} GiB), torch {summary['torch']}: {args.demos} scripted demonstrations, "
            f"pixels (front + wrist, {args.image_size}x{args.image_size}, history {args.history}) and "
            "proprioception; dataset as uint8 tensors on the GPU, augmentation on the GPU, bf16 autocast.",
            "",
            "GPU busy: NVML utilisation (share of time a kernel was executing) averaged over the training loop. "
            "Peak memory: PyTorch's peak allocation, dataset included. Data overhead: step time with sampling "
            "over step time on one preloaded batch.",
            "",
            f"| encoder | batch | samples/s | steps/s | GPU busy | peak memory (GiB) | data overhead | "
            f"training time{success_header} |",
            "|---|---|---|---|---|---|---|---|" + ("---|" if args.episodes else ""),
            *rows,
            "",
            f"Recording {args.demos} demonstrations with {args.workers} workers: {summary['record_seconds']} s. "
            + machine_line(summary["machine"]),
            "",
        ]
    )
    if args.device == "cuda":
        write_results("bc_gpu", summary, table)
    else:  # a dry run: the committed table holds GPU measurements only
        print(table)
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
