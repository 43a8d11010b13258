"""Engine speed on CPU: training throughput, inference latency, peak memory, parameter counts.

Two configurations: the paper's (ConvNeXt-tiny + CXR-BERT at 224x224, random weights built
from ../shared/data/configs) and the default model's (the `model` section of
configs/default-qata.yaml: MobileNetV2 + all-MiniLM-L6-v2 at 128x128). fp32,
`torch.set_num_threads(2)`, median of 7 timed runs after 2 warm-ups; every case runs in its
own process so that its peak resident memory (ru_maxrss) is its own.

Cases:
- train8: one training step at batch 8 through `LitTeViA.training_step` (forward, DiceCE +
  0.1 x alignment, prototype update) + backward + AdamW step (`configure_optimizers`), with
  the text embeddings precomputed once as `tevia train` does; augmentation off.
- infer1, infer16: `Segmenter.encode_images` + `Segmenter.decode` (vision encoder, decoder
  with the cached text embedding, sigmoid) at batch 1 and 16.
- *_bf16: the same in bfloat16 (training under `torch.autocast("cpu", torch.bfloat16)`, what
  `train.precision: bf16-mixed` does; inference through `Segmenter(precision="bf16")`, what
  `--precision bf16` does), with the deviation from fp32 on the same inputs. Not identical to
  fp32: reported beside the fp32 figures, never in their place. Paper configuration only unless
  --bf16-configs says otherwise.
- ref_*: the same network (the project's decoder options, docs/FIDELITY.md) run the way the
  reference code runs it (facts from ../shared/notes/reference-implementation.md), on this
  machine, so that ours and the reference's way compare side by side: the frozen text encoder (BERT with its masked-LM head
  over the whole vocabulary, as the reference calls it) runs on every batch; the network runs
  its plain path (bench/plain_path.py: NCHW, MONAI's upsampling, fresh position codes);
  the optimiser is torch's default AdamW. Paper configuration only unless --reference-configs
  says otherwise.
The prototype is switched on (as after the warm-up) in every case.

Usage (from the repository root):
    python bench/bench_engine.py                      # everything -> bench/engine.json
    python bench/bench_engine.py --quick --out /tmp/x.json   # 1 warm-up + 1 run, to check it works
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "TeViASegment"))

__all__ = ["main"]

log = logging.getLogger("bench_engine")

SHARED = Path(os.environ.get("TEVIA_SHARED_DATA", REPO.parent / "shared" / "data"))
CASES = ("train8", "infer1", "infer16")
# The same cases under bf16 autocast: an explicit option, not identical to fp32 (train.precision:
# bf16-mixed for training; inference has no such option in the engine: informational).
BF16_CASES = ("train8_bf16", "infer1_bf16", "infer16_bf16")
REFERENCE_CASES = ("ref_train8", "ref_infer1", "ref_infer16")
PROMPT = "Bilateral pulmonary infection, two infected areas, upper left lung and lower right lung."

# ../shared/notes/reference-implementation.md, "Speed and size of the reference architecture"
# (the reference code, paper configuration, measured 2026-11-24 on one machine of this kind).
REFERENCE = {
    "train8_images_per_s": 2.9,
    "infer1_ms_per_image": 162.0,
    "infer16_ms_per_image": 127.0,
    "peak_rss_mib": {"infer16": 1662, "infer1": 1197, "train8": 2937},
    "params_m": {"total": 153.6, "trainable": 44.0, "text_encoder": 109.6, "vision_encoder": 27.8},
    "note": "machines of this kind differ up to 2x (the same build measured 2x slower on another one)",
}
# Issue 2 item 10: targets for the paper configuration.
TARGETS = {"train8_images_per_s_min": 4.4, "infer1_ms_per_image_max": 81.0, "infer16_peak_rss_mib_max": 1662}


def model_config(name: str, default_config: Path):
    """The ModelConfig of a benchmarked configuration (random vision weights)."""
    from tevia.config import ModelConfig, TextConfig, VisionConfig, load_config

    if name == "paper":
        if not (SHARED / "configs").is_dir():
            raise FileNotFoundError(f"{SHARED / 'configs'} does not exist: set TEVIA_SHARED_DATA to the shared data folder")
        return ModelConfig(
            vision=VisionConfig("hf", str(SHARED / "configs" / "convnext-tiny-224"), False),
            text=TextConfig(str(SHARED / "configs" / "BiomedVLP-CXR-BERT-specialized"), False, 24),
            image_size=(224, 224),
        )
    if name == "default":
        config = load_config(default_config).model
        config.vision.pretrained = False  # same speed, no download or package needed
        return config
    raise ValueError(f"configuration must be 'paper' or 'default', got {name!r}")


def _parameters(network, text_encoder) -> dict[str, float]:
    def count(module, trainable_only: bool = False) -> float:
        return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only) / 1e6

    total_net = count(network)
    return {
        "total": round(total_net + count(text_encoder), 2),
        "trainable": round(count(network, True), 2),
        "text_encoder": round(count(text_encoder), 2),
        "vision_encoder": round(count(network.encoder), 2),
        "decoder_and_head": round(total_net - count(network.encoder), 2),
    }


def _switch_on_prototype(network, generator) -> None:
    import torch

    proto = network.prototype
    proto.start_collecting()
    proto.observe([torch.rand(2, w, generator=generator) for w in proto.widths])
    proto.finish_collecting()


def _reference_text_encoder(config, batch: int):
    """The reference's text encoder call: BERT with its masked-LM head, run on every batch.

    Returns the model and a function of no arguments giving its last hidden state
    (batch, tokens, width) for the benchmark prompt.
    """
    import torch
    from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast

    folder = Path(config.text.source)
    values = {k: v for k, v in json.loads((folder / "config.json").read_text()).items()
              if k not in ("auto_map", "architectures", "model_type")}
    model = BertForMaskedLM(BertConfig(**values)).eval().requires_grad_(False)
    tokens = BertTokenizerFast.from_pretrained(folder)([PROMPT] * batch, padding="max_length", truncation=True,
                                                  max_length=config.text.max_tokens, return_tensors="pt")

    def encode() -> torch.Tensor:
        with torch.no_grad():
            return model(**tokens, output_hidden_states=True).hidden_states[-1]

    return model, encode


def _time(step, warmup: int, runs: int) -> tuple[list[float], list[float]]:
    """Wall-clock and process CPU seconds (all threads) of each timed run."""
    for _ in range(warmup):
        step()
    wall, cpu = [], []
    for _ in range(runs):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return wall, cpu


def run_case(config_name: str, case: str, default_config: Path, warmup: int, runs: int) -> dict:
    """One case in this process; returns its measurements."""
    import torch

    from tevia.config import TrainConfig
    from tevia.inference.segmenter import Segmenter
from tevia.inference.spec import ModelSpec
    from tevia.training.lightning_module import LitTeViA
    from tevia.model.build import build_network, build_text_encoder

    torch.set_num_threads(2)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    config = model_config(config_name, default_config)
    if case.startswith("ref_"):  # the reference's BERT + masked-LM head instead of our text encoder
        batch = {"ref_train8": 8, "ref_infer1": 1, "ref_infer16": 16}[case]
        text_encoder, encode_text = _reference_text_encoder(config, batch)
        network = build_network(config, text_encoder.config.hidden_size)
    else:
        text_encoder = build_text_encoder(config)
        network = build_network(config, text_encoder.hidden_size)
    _switch_on_prototype(network, gen)
    h, w = config.image_size
    result: dict = {"config": config_name, "case": case, "image_size": [h, w],
                    "params_m": _parameters(network, text_encoder)}

    bf16 = case.endswith("_bf16")
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)
    if case.startswith("ref_"):
        times, cpu_times = _reference_case(case == "ref_train8", config, network, encode_text, batch, gen, warmup, runs)
        if case == "ref_train8":
            result["images_per_s"] = round(batch / statistics.median(times), 3)
        else:
            result["ms_per_image"] = round(1000 * statistics.median(times) / batch, 2)
    elif case.startswith("train8"):
        batch = 8
        with torch.no_grad():  # embedded once, as tevia train does
            table = text_encoder([PROMPT])
        lit = LitTeViA(network, table, {PROMPT: 0}, TrainConfig(augment=False)).train()
        optimiser = lit.configure_optimizers()["optimizer"]
        mask = torch.zeros(batch, 1, h, w)
        mask[:, :, h // 4 : 3 * h // 4, w // 8 : w // 2] = 1
        data = {"image": torch.rand(batch, config.in_channels, h, w, generator=gen), "mask": mask,
                "text": [PROMPT] * batch}
        if bf16:
            with torch.no_grad():
                fp32_loss = float(lit.training_step(data, 0))
                with autocast:
                    bf16_loss = float(lit.training_step(data, 0))
            result["deviation_from_fp32"] = {"loss_relative": round(abs(bf16_loss - fp32_loss) / abs(fp32_loss), 5)}

        def step() -> None:
            optimiser.zero_grad(set_to_none=True)
            with autocast:
                loss = lit.training_step(data, 0)
            loss.backward()
            optimiser.step()

        times, cpu_times = _time(step, warmup, runs)
        result["images_per_s"] = round(batch / statistics.median(times), 3)
    else:
        batch = 1 if case.startswith("infer1_") or case == "infer1" else 16
        spec = ModelSpec(name=config_name, version="bench", image_size=(h, w), in_channels=config.in_channels)
        seg = Segmenter(network, text_encoder, spec, torch.device("cpu"), precision="bf16" if bf16 else "fp32")
        text = seg.encode_text([PROMPT])  # cached: the text encoder runs once
        images = torch.rand(batch, h, w, generator=gen).numpy()

        def step() -> torch.Tensor:
            return seg.decode(seg.encode_images(images), text)

        if bf16:
            plain = Segmenter(network, text_encoder, spec, torch.device("cpu"))
            fp32 = plain.decode(plain.encode_images(images), text)
            diff = step() - fp32
            flips = ((fp32 > 0.5) != (fp32 + diff > 0.5)).float().mean()
            result["deviation_from_fp32"] = {"probability_max_abs": round(float(diff.abs().max()), 5),
                                             "mask_pixels_flipped": round(float(flips), 6)}
        times, cpu_times = _time(step, warmup, runs)
        result["ms_per_image"] = round(1000 * statistics.median(times) / batch, 2)
    result["batch"] = batch
    result["median_ms_per_batch"] = round(1000 * statistics.median(times), 1)
    result["runs_ms"] = [round(1000 * t, 1) for t in times]
    result["median_cpu_ms_per_batch"] = round(1000 * statistics.median(cpu_times), 1)  # both threads together
    result["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]  # 1, 5, 15 min: others on the CPU?
    return result


def _reference_case(train: bool, config, network, encode_text, batch: int, gen, warmup: int,
                    runs: int) -> tuple[list, list]:
    """Times a ref_* case (see the module docstring); returns (wall, cpu) seconds per run."""
    import torch
    from monai.losses import DiceCELoss
    from plain_path import plain_forward

    from tevia.model.alignment import alignment_loss

    h, w = config.image_size
    image = torch.rand(batch, config.in_channels, h, w, generator=gen)
    if train:
        network.train()
        mask = torch.zeros(batch, 1, h, w)
        mask[:, :, h // 4 : 3 * h // 4, w // 8 : w // 2] = 1
        loss_fn = DiceCELoss(sigmoid=True)
        optimiser = torch.optim.AdamW([p for p in network.parameters() if p.requires_grad], lr=3e-4)

        def step() -> None:
            optimiser.zero_grad(set_to_none=True)
            out = plain_forward(network, image, encode_text())
            foreground = network.foreground(out, mask)
            loss = loss_fn(out.logits, mask) + 0.1 * alignment_loss(out.stage_text, foreground, mask)
            network.prototype.observe([f.mean(0, keepdim=True) for f in foreground])
            loss.backward()
            optimiser.step()
    else:
        network.eval()

        def step() -> torch.Tensor:
            with torch.no_grad():
                return torch.sigmoid(plain_forward(network, image, encode_text()).logits)

    return _time(step, warmup, runs)


def machine() -> dict:
    """CPU model, core count, torch version, load at the start, and other tevia jobs running then."""
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    others = subprocess.run(["pgrep", "-af", "tevia (train|evaluate|predict)"], capture_output=True, text=True)
    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "torch": torch.__version__, "threads": 2,
            "python": platform.python_version(), "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
            "tevia_jobs_running_at_start": [line.split(None, 1)[1] for line in others.stdout.splitlines()],
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _summary(cases: dict) -> dict:
    """Paper configuration against the reference figures and the targets."""
    paper = {c: cases.get(f"paper/{c}") for c in CASES}
    if not all(paper.values()):
        return {}
    train, i1, i16 = paper["train8"]["images_per_s"], paper["infer1"]["ms_per_image"], paper["infer16"]["ms_per_image"]
    peak = paper["infer16"]["peak_rss_mib"]
    return {
        "train8_images_per_s": {"ours": train, "reference": REFERENCE["train8_images_per_s"],
                                "speedup": round(train / REFERENCE["train8_images_per_s"], 2),
                                "target_met": train >= TARGETS["train8_images_per_s_min"]},
        "infer1_ms_per_image": {"ours": i1, "reference": REFERENCE["infer1_ms_per_image"],
                                "speedup": round(REFERENCE["infer1_ms_per_image"] / i1, 2),
                                "target_met": i1 <= TARGETS["infer1_ms_per_image_max"]},
        "infer16_ms_per_image": {"ours": i16, "reference": REFERENCE["infer16_ms_per_image"],
                                 "speedup": round(REFERENCE["infer16_ms_per_image"] / i16, 2)},
        "peak_rss_mib": {c: {"ours": paper[c]["peak_rss_mib"], "reference": REFERENCE["peak_rss_mib"][c],
                             "ratio": round(paper[c]["peak_rss_mib"] / REFERENCE["peak_rss_mib"][c], 2)}
                         for c in CASES},
        "infer16_peak_target_met": peak <= TARGETS["infer16_peak_rss_mib_max"],
        "same_machine_vs_reference_way": _same_machine(cases),
        "with_bf16_autocast_option": {
            c: {"ours": r.get("images_per_s", r.get("ms_per_image")), "deviation_from_fp32": r["deviation_from_fp32"]}
            for c in BF16_CASES if (r := cases.get(f"paper/{c}"))
        },
    }


def _same_machine(cases: dict) -> dict:
    """Ours (fp32, and with the bf16 option) against the ref_* cases measured in the same run:
    the ratios the targets are about (training >= 1.5x, batch-1 latency <= 0.5x)."""
    out = {}
    for case in CASES:
        ref = cases.get(f"paper/ref_{case}")
        if not ref:
            continue
        key = "images_per_s" if case.startswith("train") else "ms_per_image"
        row = {"reference_way": ref[key]}
        for label, name in (("ours_fp32", case), ("ours_bf16", f"{case}_bf16")):
            if (r := cases.get(f"paper/{name}")):
                speedup = r[key] / ref[key] if key == "images_per_s" else ref[key] / r[key]
                row[label], row[f"{label}_speedup"] = r[key], round(speedup, 2)
        if case == "train8":
            row["target"] = "speedup >= 1.5"
            row.update({f"{k}_target_met": row[f"{k}_speedup"] >= 1.5 for k in ("ours_fp32", "ours_bf16") if k in row})
        if case == "infer1":
            row["target"] = "speedup >= 2 (latency at most half)"
            row.update({f"{k}_target_met": row[f"{k}_speedup"] >= 2 for k in ("ours_fp32", "ours_bf16") if k in row})
        out[case] = row
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "engine.json")
    parser.add_argument("--configs", nargs="*", default=["paper", "default"], choices=["paper", "default"])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--bf16-configs", nargs="*", default=["paper"], choices=["paper", "default"],
                        help="configurations also measured under bf16 autocast (none: leave them out)")
    parser.add_argument("--reference-configs", nargs="*", default=["paper"], choices=["paper"],
                        help="configurations also run the reference code's way (ref_* cases; none: leave them out)")
    parser.add_argument("--default-config", type=Path, default=REPO / "configs" / "default-qata.yaml",
                        help="YAML whose model section is the default configuration")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="1 warm-up + 1 run: checks that it works, no figures")
    parser.add_argument("--note", default="", help="free text stored in the JSON (e.g. 'measured under load')")
    parser.add_argument("--child", nargs=2, metavar=("CONFIG", "CASE"), help=argparse.SUPPRESS)  # one case, JSON out
    args = parser.parse_args(argv)
    if args.quick:
        args.warmup, args.runs = 1, 1
        args.note = ("quick check (1 warm-up, 1 run): not figures. " + args.note).strip()
    if args.child:
        logging.disable(logging.WARNING)
        warnings.simplefilter("ignore")
        print(json.dumps(run_case(*args.child, args.default_config, args.warmup, args.runs)))
        return 0

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    report = {"machine": machine(), "settings": {"dtype": "float32 (cases named *_bf16: bf16 autocast)", "warmup": args.warmup, "runs": args.runs,
                                                 "statistic": "median", "default_config": str(args.default_config)},
              "note": args.note, "reference_paper_configuration": REFERENCE, "targets_paper_configuration": TARGETS,
              "cases": {}}
    jobs = [(c, case) for c in args.configs for case in args.cases]
    jobs += [(c, f"{case}_bf16") for c in args.bf16_configs for case in args.cases]
    jobs += [(c, f"ref_{case}") for c in args.reference_configs for case in args.cases]
    for config_name, case in jobs:
        cmd = [sys.executable, __file__, "--child", config_name, case, "--default-config",
               str(args.default_config), "--warmup", str(args.warmup), "--runs", str(args.runs)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
        if proc.returncode != 0:
            raise RuntimeError(f"{config_name}/{case} failed:\n{proc.stderr[-3000:]}")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        report["cases"][f"{config_name}/{case}"] = result
        log.info("%s/%s: %s", config_name, case,
                 {k: result[k] for k in ("images_per_s", "ms_per_image", "peak_rss_mib") if k in result})
        report["paper_vs_reference"] = _summary(report["cases"])
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")  # after each case: a stopped run keeps its part
    log.info("written %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
