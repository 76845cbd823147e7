"""Peak host memory of a streamed load of an official single-file checkpoint.

    .venv/bin/python bench/official_load.py [--version 2.0|2.3] [--layers 4] [--keep DIR]

Writes an official-layout LTX-2 file at the REAL widths (32×128 video heads, 4096/2048 cross-attention,
3840×49 Gemma projection, the full VAEs and vocoder) with fewer transformer blocks (a 48-block file is
40 GB; the per-block cost is linear, so a few blocks show the behaviour), then loads its five modules in a
fresh process two ways and samples the process's anonymous memory (RssAnon: what the loader allocates, not
the page cache of the memory-mapped file) every 5 ms.

`ltx2trainer.model.official.load` reads tensors one at a time into meta-initialised modules, in bf16 (the
file's dtype) and fp32 (a CPU run's dtype, so every tensor is converted on the way).

Needs the dev install (ltx-core, for the official layout). The file is written tensor by tensor with a small
hand-written safetensors writer, because `safetensors.torch.save_file` needs every tensor in memory at once.
"""

from __future__ import annotations

import argparse
import json
import math
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

REAL_GEMMA_WIDTH, REAL_GEMMA_LAYERS = 3840, 48


def real_config(version: str, layers: int) -> dict:
    """The tiny fixture's config (the real files' keys and values) with the real sizes put back."""
    from tests.official_ckpt import tiny_official_config

    config = tiny_official_config(version)
    t = config["transformer"]
    t.update(num_layers=layers, num_attention_heads=32, attention_head_dim=128, in_channels=128, out_channels=128,
             cross_attention_dim=4096, caption_channels=REAL_GEMMA_WIDTH, audio_num_attention_heads=32,
             audio_attention_head_dim=64, audio_out_channels=128, audio_cross_attention_dim=2048,
             connector_num_layers=2)
    if version == "2.3":
        t.update(connector_num_attention_heads=32, connector_attention_head_dim=128,
                 audio_connector_num_attention_heads=32, audio_connector_attention_head_dim=64)
    else:
        t.update(connector_num_attention_heads=30, connector_attention_head_dim=128)
    vae = config["vae"]
    vae.update(latent_channels=128, encoder_base_channels=128, decoder_base_channels=128)
    for blocks, counts in ((vae["encoder_blocks"], [4, 6, 6, 2, 2]), (vae["decoder_blocks"], [5, 5, 5, 5, 5])):
        res = [block for block in blocks if block[0] == "res_x"]
        for block, count in zip(res, counts):
            block[1]["num_layers"] = count
    dd = config["audio_vae"]["model"]["params"]["ddconfig"]
    dd.update(ch_mult=[1, 2, 4], num_res_blocks=2)
    vocoder = config["vocoder"]
    if version == "2.3":
        vocoder["vocoder"].update(upsample_initial_channel=1536, upsample_rates=[5, 2, 2, 2, 2, 2],
                                  upsample_kernel_sizes=[11, 4, 4, 4, 4, 4], resblock_kernel_sizes=[3, 7, 11],
                                  resblock_dilation_sizes=[[1, 3, 5]] * 3)
        vocoder["bwe"].update(upsample_initial_channel=512, upsample_rates=[6, 5, 2, 2, 2],
                              upsample_kernel_sizes=[12, 11, 4, 4, 4], resblock_kernel_sizes=[3, 7, 11],
                              resblock_dilation_sizes=[[1, 3, 5]] * 3)
    else:
        vocoder.update(upsample_initial_channel=1024, upsample_rates=[6, 5, 2, 2, 2],
                       upsample_kernel_sizes=[16, 15, 8, 4, 4], resblock_kernel_sizes=[3, 7, 11],
                       resblock_dilation_sizes=[[1, 3, 5]] * 3)
    return config


def official_shapes(config: dict) -> dict[str, list[int]]:
    """Every tensor name and shape of an official file with this config, from ltx-core's meta-built modules."""
    import torch

    from tests.ltxcore_ref import component_specs, gemma_feature_sizes
    from tests.official_ckpt import _file_key

    shapes: dict[str, list[int]] = {}
    with gemma_feature_sizes(REAL_GEMMA_WIDTH, REAL_GEMMA_LAYERS), torch.device("meta"):
        for component, (configurator, _) in component_specs().items():
            for key, value in configurator.from_config(config).state_dict().items():
                shapes.setdefault(_file_key(component, key), list(value.shape))
    latent = config["vae"]["latent_channels"]
    for extra in ("channel", "mean-of-stds", "mean-of-stds_over_std-of-means"):
        shapes[f"vae.per_channel_statistics.{extra}"] = [latent]
    return shapes


def write_streaming(path: Path, shapes: dict[str, list[int]], metadata: dict[str, str]) -> int:
    """A bf16 safetensors file written one tensor at a time (positive values for the statistics)."""
    import torch

    header, offset = {"__metadata__": metadata}, 0
    for name in sorted(shapes):
        size = math.prod(shapes[name]) * 2
        header[name] = {"dtype": "BF16", "shape": shapes[name], "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    generator = torch.Generator().manual_seed(0)
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for name in sorted(shapes):
            tensor = torch.rand(shapes[name], generator=generator, dtype=torch.float32).mul_(0.02).add_(0.5)
            f.write(tensor.to(torch.bfloat16).view(torch.int16).numpy().tobytes())
            del tensor
    return 8 + len(raw) + offset


CHILD = r"""
import sys, threading, time, json, torch
sys.path.insert(0, sys.argv[3])
from pathlib import Path
from ltx2trainer.model.identity import official_config, read_safetensors_header, official_version
from ltx2trainer.model.official.load import build_empty_modules, plan_load, stream_tensors

def rss(field="RssAnon:"):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
anon = rss
peak, peak_file = [0], [0]
stop = threading.Event()
def sample():
    while not stop.is_set():
        peak[0] = max(peak[0], anon()); peak_file[0] = max(peak_file[0], rss("RssFile:")); time.sleep(0.005)
path, mode = Path(sys.argv[1]), sys.argv[2]
header, metadata, _ = read_safetensors_header(path)
config = official_config(metadata, path.name)
version = official_version(config, header.keys(), path.name)
shapes = {k: v["shape"] for k, v in header.items()}
baseline = anon()
threading.Thread(target=sample, daemon=True).start()
t0 = time.perf_counter()
modules = build_empty_modules(shapes, config, version, path.name)
plan = plan_load(header, config, modules, path.name)
stream_tensors(path, plan, modules, device=torch.device("cpu"), dtype=getattr(torch, mode))
seconds = time.perf_counter() - t0
time.sleep(0.05); stop.set()
held = sum(t.numel() * t.element_size() for m in modules.values() for t in m.state_dict().values())
largest = max(v["data_offsets"][1] - v["data_offsets"][0] for v in header.values())
print(json.dumps({"peak": peak[0] - baseline, "held": held, "largest": largest, "seconds": seconds,
                  "file_pages": peak_file[0]}))
"""


def measure(path: Path, mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(path), mode, str(ROOT)], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", choices=["2.0", "2.3"], default="2.0")
    parser.add_argument("--layers", type=int, default=4, help="transformer blocks in the file (real: 48)")
    parser.add_argument("--keep", type=Path, help="write the file here and keep it (default: a temp dir)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"ltx-{args.version}-real-width-{args.layers}-blocks.safetensors"
        config = real_config(args.version, args.layers)
        size = write_streaming(path, official_shapes(config), {"config": json.dumps(config)})
        gib = 1024**3
        print(f"LTX-{args.version} official layout, real widths, {args.layers} of 48 transformer blocks: "
              f"file {size / gib:.2f} GiB")
        print(f"{'load dtype':<10} {'peak RssAnon':>13} {'weights held':>13} {'overhead':>10} "
              f"{'largest tensor':>15} {'mapped file':>12} {'seconds':>8}")
        for dtype in ("bfloat16", "float32"):
            r = measure(path, dtype)
            mapped = r["peak"] < r["held"] / 2  # the weights are views of the mapped file, not copies
            overhead = "  mapped" if mapped else f"{(r['peak'] - r['held']) / gib:>8.2f} G"
            print(f"{dtype:<10} {r['peak'] / gib:>11.2f} G {r['held'] / gib:>11.2f} G {overhead:>10} "
                  f"{r['largest'] / gib:>13.2f} G "
                  f"{r['file_pages'] / gib:>10.2f} G {r['seconds']:>8.1f}")
        print("overhead = peak anonymous memory minus the weights the modules end up holding: the loader's own "
              "memory (at most the one tensor in flight). 'mapped file' is the page cache of the memory-mapped "
              "file (clean, reclaimable, not process memory). A bf16 load on the CPU copies nothing: the weights "
              "are views of the mapped file. On a GPU they go to the device, so host memory peaks at about one "
              "tensor.")


if __name__ == "__main__":
    main()
