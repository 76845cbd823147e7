"""Which base model a name points at — family, version, format, file identity — without loading weights.

`describe_model` answers from names, folder configs and a safetensors header alone (it never imports
torch), so the worker can say at start-up what it serves, a job can fail with a clear `model_error` before
any download or encode, and `config.json` can record exactly which base a LoRA belongs to.

Accepted sources:
- `tiny`, `tiny-2.3`: the built-in presets (LTX-2.0 and LTX-2.3 topology at toy width);
- a diffusers-format folder (`model_index.json`) or a hub id;
- an official single-file checkpoint (`*.safetensors` with a JSON `config` in its header), of LTX-2.0 or
  LTX-2.3; its version is read from the checkpoint (config and keys), never from the file name.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ltx2trainer.errors import ModelError
from ltx2trainer.model.official.configs import gemma_width_and_layers

FAMILY = "ltx-2"
TINY = "tiny"
TINY_23 = "tiny-2.3"
PRESET_VERSIONS = {TINY: "2.0", TINY_23: "2.3"}
HEADER_LIMIT_BYTES = 100 * 1024**2  # safetensors' own limit on a header

TRANSFORMER_PREFIX = "model.diffusion_model."
# Keys only an audio+video LTX-2 transformer has (LTX-Video 0.9 has adaln_single but no audio stream).
_LTX2_MARKERS = (TRANSFORMER_PREFIX + "audio_adaln_single.", TRANSFORMER_PREFIX + "av_ca_a2v_gate_adaln_single.")
# Keys that only LTX-2.3 has: the caption projection moved in front of the connectors, gated attention.
_V23_MARKERS = ("text_embedding_projection.video_aggregate_embed.", "to_gate_logits.", "prompt_adaln_single.")


@dataclass(frozen=True)
class BaseModelInfo:
    """What a LoRA's base model is. `header_sha256` hashes the safetensors header (names, shapes, dtypes,
    offsets and metadata): a cheap fingerprint that changes with any re-export of the weights' layout."""

    family: str
    version: str  # "2.0" or "2.3"
    format: str  # "preset", "diffusers" or "official"
    source: str  # as configured: preset name, folder, hub id or file path
    file_name: str | None = None
    size_bytes: int | None = None
    header_sha256: str | None = None
    quantization: str | None = None  # "fp8" for official fp8 files
    text_encoder: str | None = None  # the Gemma folder an official file is paired with

    def as_dict(self) -> dict[str, Any]:
        """What outputs and /health record: names, never the server's paths (`source` and `text_encoder` are
        local paths for files and folders; users see the file or folder name)."""
        record = asdict(self)
        if self.file_name is not None:
            record["source"] = self.file_name
        if self.text_encoder is not None:
            record["text_encoder"] = Path(self.text_encoder).name
        return record

    def label(self) -> str:
        """One line for logs and /health: `ltx-2 2.3 (official: ltx-2.3-22b-dev.safetensors)`."""
        where = self.file_name or self.source
        return f"{self.family} {self.version} ({self.format}: {where})"


def describe_model(source: str, text_encoder: str | None = None) -> BaseModelInfo:
    """Identify `source` (see the module docstring) or raise `ModelError` naming what is wrong."""
    if source in PRESET_VERSIONS:
        return BaseModelInfo(FAMILY, PRESET_VERSIONS[source], "preset", source)
    path = Path(source).expanduser()
    if path.is_dir():
        return _describe_diffusers_folder(path)
    if path.suffix == ".safetensors" or path.is_file():
        if not path.is_file():
            raise ModelError(f"model file not found: {path}")
        return _describe_official_file(path, text_encoder)
    if source.count("/") == 1 and not source.startswith((".", "/", "~")):
        # A hub id: nothing to read before downloading; diffusers checks it when it loads.
        return BaseModelInfo(FAMILY, "2.0", "diffusers", source)
    raise ModelError(f"model {source!r} is neither a preset ({', '.join(PRESET_VERSIONS)}), an existing folder, "
                     "a .safetensors checkpoint nor a hub id")


def read_safetensors_header(path: Path) -> tuple[dict[str, Any], dict[str, str], bytes]:
    """(tensor entries, metadata, raw header bytes) of a safetensors file, checking it is complete."""
    size = path.stat().st_size
    with path.open("rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise ModelError(f"{path.name} is not a safetensors file (only {size} bytes)")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > HEADER_LIMIT_BYTES or header_len + 8 > size:
            raise ModelError(f"{path.name} is not a safetensors file, or it is truncated "
                             f"(header of {header_len} bytes in a {size}-byte file)")
        raw = f.read(header_len)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ModelError(f"{path.name} is not a safetensors file (its header is not JSON)") from None
    metadata = header.pop("__metadata__", None) or {}
    data_end = max((entry["data_offsets"][1] for entry in header.values()), default=0)
    if 8 + header_len + data_end > size:
        missing = 8 + header_len + data_end - size
        raise ModelError(f"{path.name} is truncated: its header describes {8 + header_len + data_end} bytes, "
                         f"the file has {size} ({missing} missing); download it again")
    return header, metadata, raw


def official_config(metadata: dict[str, str], name: str) -> dict[str, Any]:
    """The JSON `config` an official checkpoint carries in its header metadata."""
    if "config" not in metadata:
        raise ModelError(f"{name} has no `config` in its safetensors metadata: not an official LTX-2 checkpoint "
                         "(Lightricks' single files carry one); for diffusers-format weights pass their folder")
    try:
        config = json.loads(metadata["config"])
    except json.JSONDecodeError:
        raise ModelError(f"{name}: the `config` in its metadata is not valid JSON") from None
    if not isinstance(config, dict) or "transformer" not in config:
        raise ModelError(f"{name}: its `config` metadata has no `transformer` section: not an LTX-2 checkpoint")
    return config


def official_version(config: dict[str, Any], keys: Any, name: str, model_version: str | None = None) -> str:
    """"2.0" or "2.3", from the transformer config, the tensor names and (where the file has one) the
    `model_version` metadata that Lightricks' pipelines read; refuse anything else or any disagreement."""
    if not any(key.startswith(_LTX2_MARKERS) for key in keys):
        if any(key.startswith(TRANSFORMER_PREFIX + "adaln_single.") for key in keys):
            raise ModelError(f"{name} is an LTX-Video (0.9.x) checkpoint: it has no audio stream. "
                             "ltx2trainer trains LTX-2 (audio+video); use an LTX-2.0 or LTX-2.3 file")
        sample = ", ".join(sorted(keys)[:3])
        raise ModelError(f"{name} is not an LTX-2 checkpoint (no `{_LTX2_MARKERS[0]}*` weights; "
                         f"it starts with: {sample})")
    transformer = config.get("transformer", {})
    has_23_keys = any(marker in key for key in keys for marker in _V23_MARKERS)
    has_23_config = bool(transformer.get("caption_proj_before_connector") or transformer.get("apply_gated_attention")
                         or transformer.get("cross_attention_adaln"))
    if has_23_keys != has_23_config:
        raise ModelError(f"{name}: its config and its weights disagree about the LTX-2 version "
                         f"(config says {'2.3' if has_23_config else '2.0'}, weights say "
                         f"{'2.3' if has_23_keys else '2.0'}); the file was edited or mis-exported")
    version = "2.3" if has_23_keys else "2.0"
    if model_version and not model_version.startswith(version):
        raise ModelError(f"{name}: its metadata says model_version {model_version}, its weights are LTX-{version}")
    return version


def _describe_official_file(path: Path, text_encoder: str | None) -> BaseModelInfo:
    header, metadata, raw = read_safetensors_header(path)
    config = official_config(metadata, path.name)
    version = official_version(config, header.keys(), path.name, metadata.get("model_version"))
    fp8 = any(entry.get("dtype", "").startswith("F8") for entry in header.values())
    if text_encoder is None:
        raise ModelError(f"{path.name} is an official single-file checkpoint: it holds no text encoder. "
                         "Name the Gemma-3 folder with --text-encoder (LTX2T_TEXT_ENCODER)")
    gemma = Path(text_encoder).expanduser()
    if not (gemma / "config.json").is_file():
        raise ModelError(f"text encoder folder {gemma} has no config.json: it must be a Gemma-3 folder "
                         "(config.json, weights and tokenizer files)")
    shapes = {name: entry["shape"] for name, entry in header.items()}
    check_text_encoder(gemma, shapes, config, version, path.name)
    return BaseModelInfo(FAMILY, version, "official", str(path), file_name=path.name, size_bytes=path.stat().st_size,
                         header_sha256=hashlib.sha256(raw).hexdigest(), quantization="fp8" if fp8 else None,
                         text_encoder=str(gemma))


def check_text_encoder(folder: Path, shapes: dict[str, list[int]], config: dict[str, Any], version: str,
                       file_name: str) -> None:
    """Refuse a Gemma folder whose width or depth does not fit the checkpoint's text projection."""
    config_file = folder / "config.json"
    try:
        gemma = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"text encoder {folder}: cannot read config.json ({exc})") from None
    text = gemma.get("text_config", gemma)
    width, layers = text.get("hidden_size"), text.get("num_hidden_layers")
    if not isinstance(width, int) or not isinstance(layers, int):
        raise ModelError(f"text encoder {folder}: config.json has no hidden_size/num_hidden_layers; "
                         "it must be a Gemma-3 model folder")
    need_width, need_states = gemma_width_and_layers(shapes, config, version, file_name)
    if (width, layers + 1) != (need_width, need_states):
        raise ModelError(
            f"text encoder {folder} does not fit {file_name}: it is {width} wide with {layers} layers, the "
            f"checkpoint's text connectors need {need_width} wide with {need_states - 1} layers "
            f"(Gemma-3-12B for the released LTX-2 files)")


def _describe_diffusers_folder(path: Path) -> BaseModelInfo:
    index = path / "model_index.json"
    if not index.is_file():
        raise ModelError(f"{path} is a folder without model_index.json: not a diffusers-format LTX-2 model")
    pipeline_class = json.loads(index.read_text(encoding="utf-8")).get("_class_name", "")
    if not pipeline_class.startswith("LTX2"):
        raise ModelError(f"{path} holds a {pipeline_class or 'unknown'} model, not LTX-2")
    transformer_config = path / "transformer" / "config.json"
    version = "2.0"
    if transformer_config.is_file():
        config = json.loads(transformer_config.read_text(encoding="utf-8"))
        version = "2.3" if config.get("gated_attn") or config.get("cross_attn_mod") else "2.0"
    return BaseModelInfo(FAMILY, version, "diffusers", str(path), file_name=path.name)
