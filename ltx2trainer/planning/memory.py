"""Peak GPU memory of each phase of a job, predicted from the model's dimensions and the request.

    encode    Gemma + connectors + both VAEs resident (staged loading: no transformer yet); the peak is the
              largest of: Gemma's forward on one caption, the connectors on its hidden states, the video VAE
              encoding the clip (in 512-pixel tiles), the audio VAE encoding its sound (or silence: the model
              always runs both branches, so a dataset without audio takes the same memory).
    train     the transformer at the base precision, the LoRA (fp32) with its gradients and optimizer state,
              one micro-batch's inputs, and the activations of a step (with gradient checkpointing: every
              block's input kept, one block recomputed at a time, attention by SDPA/flash: no S×S matrix).
    validate  the transformer and LoRA (and the optimizer state, unless moved off the device), connectors,
              VAEs and vocoder resident; the largest of: the connectors on the CFG pair of prompts, one
              denoising forward at the validation size with CFG's batch of 2 (STG and modality guidance run
              their own batch-1 forwards after it), the tiled VAE decode and the video's denormalisation,
              the audio decode and vocoder.

Every phase is a sum of named terms in bytes (`PhaseMemory.terms`): weights, LoRA, optimizer, inputs,
activations, and on a GPU `allocator_overhead`. Weights and optimizer state are exact counts. Activations are
token counts × stream widths × coefficients, which come from counting what diffusers' LTX-2 blocks keep for
backward (torch's saved-tensor hooks, with PEFT's LoRA attached: it casts each LoRA input to fp32, which is
most of a block's footprint) and measuring the transient peaks of the real modules at the real sizes on fake
tensors (`bench/plan.py --derive` re-derives them; tests/test_planning.py checks the predictions against
storage actually allocated). Sizes are bytes; GB in the plan means GiB (2**30), as GPU memory is sold.

Loading the transformer is not a phase of its own: with an int8/fp8 base it is read into host memory and each
layer is quantized on its way to the GPU (`ModelComponents.load_transformer`), and under FSDP each block is
sharded on its way there, so the GPU never holds more than the train phase's weights plus one layer or block.

Sharding (`MemorySettings.shards` > 1, FSDP over that many GPUs, bf16 base): each process holds 1/N of the
base, the LoRA, its gradients and the optimizer state, plus, for the moment they run, the unsharded weights of
the parts outside the blocks (FSDP's root stays gathered through the step) and of two blocks (the one running
and the one prefetched). Activations are per process and do not shrink.

Not modelled: host memory; memory other processes hold on the GPU; PyTorch versions or attention kernels that
keep more than these did (the coefficients are diffusers 0.42 / PEFT 0.21 / torch 2.13's).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ltx2trainer.planning.dims import ModelDims
from ltx2trainer.schemas import TrainingInput, frame_size, input_default

GIB = 2**30
Precision = Literal["fp32", "bf16", "int8", "fp8"]
OptimizerName = Literal["adamw", "adamw8bit"]

# --- training: bytes per token and unit of width (video: d, audio: d_audio, text: cross-attention width),
# counted with torch.autograd.graph.saved_tensors_hooks over one block of diffusers 0.42's
# LTX2VideoTransformerBlock with PEFT LoRA on every target. Keyed by (LTX-2.3 layout, compute bytes).
# bf16 (16-bit base, fp32 LoRA), video, per token and unit width: 22 saved tensors of the compute dtype
# (6 AdaLN values, q/k/v/out of the self and text attentions, the norm inputs, the a2v/v2a projections at
# half width, 4 of the GELU's hidden layer) and 24.6 in fp32 (PEFT's fp32 copy of every LoRA input: 3 for
# q/k/v, 4 for the feed-forward's hidden layer...; the fp32 upcasts of the q/k RMSNorms; the RoPE products).
_SAVED_PER_BLOCK = {
    (False, 2): {"video": 142.1, "audio": 142.2, "text": 24.0},
    (False, 4): {"video": 152.1, "audio": 140.2, "text": 24.1},
    (True, 2): {"video": 150.2, "audio": 142.4, "text": 24.0},  # + 3 AdaLN rows, the text-query modulation
    (True, 4): {"video": 178.3, "audio": 152.5, "text": 24.1},
}
# Besides, every LoRA keeps its A projection's output (r wide, fp32) for B's gradient: 12 LoRA layers read
# video tokens, 12 audio tokens and 4 text tokens (the text attentions' keys and values).
_LORA_LAYERS_PER_TOKEN = {"video": 12, "audio": 12, "text": 4}
# The step's transient peak above everything kept, per video token and unit width: with checkpointing it is
# the recompute and backward of the feed-forward (its fp32 LoRA branch and the hidden layer's gradients),
# measured 26.7-28.8 bytes over both versions and precisions; without, the last block's forward, which also
# holds a block's AdaLN values (rows x compute bytes) on top of 26.
_TRANSIENT_CHECKPOINTED = 28.0
_TRANSIENT_FORWARD = 26.0
# --- validation: a no-grad forward's peak per sample, video token and unit width, LoRA unmerged (PEFT's fp32
# branch on the feed-forward dominates). Per-token timesteps (image-to-video) add the AdaLN embedding and one
# block's AdaLN values: (2 * rows + 1) x compute bytes.
_INFERENCE = {2: 64.4, 4: 82.7}
# --- video VAE, per tile: a * (pixels x 3 channels) + b * (first level: pixels / patch² x its width), in the
# compute dtype; fitted to the real VAEs (fake tensors) and the tiny one (real tensors), see bench/plan.py.
_VAE_ENCODE = (1.67, 4.42)  # the same encoder first level in both versions
_VAE_DECODE = {"2.0": (1.18, 4.91), "2.3": (1.33, 4.05)}  # LTX-2.3's decoder has a fourth up block
# --- audio: the audio VAE keeps about 4 copies of its first level (128 channels x mel frames x mel bins);
# the vocoders measured up to 160 bytes per output sample (LTX-2.0: 160, LTX-2.3 with BWE: 113, tiny: 70).
_AUDIO_VAE_LEVEL0_COPIES = 4.1
_AUDIO_VAE_WIDTH = 128
_VOCODER_BYTES_PER_SAMPLE = 160
_MEL_FRAMES_PER_SECOND = 100
# --- text: Gemma keeps every hidden state, stacks and repeats them (4 copies) and computes the logits of
# every token; the connectors' normalisation of the stacked states peaks at k x their size (measured).
_GEMMA_HIDDEN_COPIES = 4
_CONNECTORS = {"2.0": 5.5, "2.3": 3.4}
# --- the GPU beyond tensors: the CUDA context and library workspaces (outside PyTorch's allocator), and what
# the caching allocator reserves beyond what is allocated. Assumptions, not measured here (no GPU).
CUDA_CONTEXT_BYTES = int(0.75 * GIB)
ALLOCATOR_SLACK = 0.08
_ADAMW8BIT_BLOCK = 256  # bitsandbytes' blockwise 8-bit state: one fp32 absmax per 256 values, per moment


_TRAIN_SIZE = frame_size(input_default("resolution"), input_default("aspect_ratio"))
_VALIDATION_SIZE = frame_size(input_default("validation_resolution"), input_default("validation_aspect_ratio"))


@dataclass(frozen=True)
class MemoryRequest:
    """What of a training request decides memory (see `from_input`), in the units the model works in. The
    defaults (for the planner's own studies) are the schema's, read from it, with one text-to-video
    validation prompt: a request without validation needs less, so planning with one is the safe side."""

    frames: int = input_default("number_of_frames")
    width: int = _TRAIN_SIZE[0]
    height: int = _TRAIN_SIZE[1]
    frame_rate: float = float(input_default("frame_rate"))
    rank: int = input_default("rank")
    validation: bool = True  # any validation prompt
    validation_frames: int = input_default("validation_number_of_frames")
    validation_width: int = _VALIDATION_SIZE[0]
    validation_height: int = _VALIDATION_SIZE[1]
    validation_frame_rate: float = float(input_default("validation_frame_rate"))
    validation_images: bool = False  # image-to-video: per-token timesteps

    @classmethod
    def from_input(cls, training_input: TrainingInput) -> MemoryRequest:
        width, height = training_input.frame_size
        val_width, val_height = training_input.validation_frame_size
        entries = training_input.validation
        return cls(
            frames=training_input.number_of_frames, width=width, height=height,
            frame_rate=float(training_input.frame_rate), rank=training_input.rank,
            validation=bool(entries),
            validation_frames=training_input.validation_number_of_frames, validation_width=val_width,
            validation_height=val_height, validation_frame_rate=float(training_input.validation_frame_rate),
            validation_images=any(entry.image_url for entry in entries),
        )


@dataclass(frozen=True)
class MemorySettings:
    """How the job runs. `fp32` is the CPU's precision (everything fp32, nothing quantized); `gpu` adds the
    CUDA context and allocator slack to every phase."""

    base_precision: Precision = "bf16"
    optimizer: OptimizerName = "adamw"
    gradient_checkpointing: bool = True
    gradient_accumulation_steps: int = 1  # micro-batches of `batch_size`: memory is that of one of them
    batch_size: int = 1
    offload_optimizer_for_validation: bool = True  # the engine's default on a GPU (training/optimizer.py)
    shards: int = 1  # GPUs one job is sharded over with FSDP (1: each process holds the whole transformer)
    gpu: bool = True

    def __post_init__(self) -> None:
        if self.shards < 1:
            raise ValueError("shards must be at least 1")
        if self.shards > 1 and self.base_precision in ("int8", "fp8"):
            raise ValueError("FSDP shards a bf16 base only: torchao's quantized weights cannot be sharded")


@dataclass
class PhaseMemory:
    name: str
    terms: dict[str, int] = field(default_factory=dict)

    @property
    def peak(self) -> int:
        return sum(self.terms.values())

    @property
    def tensors(self) -> int:
        """The peak without the GPU's overhead: what PyTorch allocates for tensors."""
        return self.peak - self.terms.get("allocator_overhead", 0)


@dataclass(frozen=True)
class _Tokens:
    video: int
    audio: int
    text: int


def tokens(dims: ModelDims, frames: int, width: int, height: int, frame_rate: float) -> _Tokens:
    """Latent tokens of one clip: 8x temporal (plus the first frame) and 32x spatial video compression,
    `audio_latents_per_second` audio latents, the prompt padded to `text_tokens`."""
    latent_frames = (frames - 1) // dims.vae_temporal_compression + 1
    video = latent_frames * (height // dims.vae_spatial_compression) * (width // dims.vae_spatial_compression)
    return _Tokens(video, round(frames / frame_rate * dims.audio_latents_per_second), dims.text_tokens)


def estimate(request: MemoryRequest, dims: ModelDims, settings: MemorySettings | None = None
             ) -> dict[str, PhaseMemory]:
    """The three phases' predicted peaks (`validate` only when the request has validation prompts)."""
    settings = settings or MemorySettings()
    phases = {"encode": encode_phase(request, dims, settings)}
    phases["train"] = train_phase(request, dims, settings)
    if request.validation:
        phases["validate"] = validate_phase(request, dims, settings)
    if settings.gpu:
        for phase in phases.values():
            phase.terms["allocator_overhead"] = CUDA_CONTEXT_BYTES + int(ALLOCATOR_SLACK * phase.peak)
    return phases


def compute_bytes(settings: MemorySettings) -> int:
    """Activations' bytes per value: fp32 on the CPU, bf16 on a GPU (quantized bases compute in bf16)."""
    return 4 if settings.base_precision == "fp32" else 2


def transformer_weight_bytes(dims: ModelDims, precision: str) -> int:
    """The base transformer as stored: int8/fp8 weights (one byte, plus per-row scales: fp32 for both and an
    int8 zero point for int8, as torchao stores them) in the quantized blocks; everything else as loaded."""
    t = dims.transformer
    loaded = 4 if precision == "fp32" else 2
    total = t.params * loaded
    if precision in ("int8", "fp8"):
        row_bytes = 5 if precision == "int8" else 4
        blocks = t.quantized_blocks()
        total -= blocks * t.block_linear_weights * (loaded - 1)
        total += blocks * t.block_rows * row_bytes
    return total


def lora_terms(dims: ModelDims, rank: int, optimizer: str) -> dict[str, int]:
    params = dims.transformer.lora_params(rank)
    state = params * 8 if optimizer == "adamw" else int(params * 2 * (1 + 4 / _ADAMW8BIT_BLOCK))
    return {"lora_weights": params * 4, "lora_gradients": params * 4, "optimizer_state": state}


def encode_phase(request: MemoryRequest, dims: ModelDims, settings: MemorySettings) -> PhaseMemory:
    c = compute_bytes(settings)
    w = 4 if settings.base_precision == "fp32" else 2  # the encoders load in bf16 (fp32 on the CPU)
    stacked = stacked_text_bytes(dims, c)
    gemma = gemma_activation(dims, c)
    connectors = stacked + connectors_activation(dims, 1, c)  # the states moved back, and the normalisation
    clip = 3 * request.frames * request.width * request.height * c  # the decoded clip on the device
    video = clip + vae_activation(dims, request.frames, request.width, request.height, c, encode=True)
    audio = audio_vae_activation(dims, request.frames / request.frame_rate, c)
    return PhaseMemory("encode", {
        "text_encoder_weights": dims.text_encoder_params * w,
        "connectors_weights": dims.connectors_params * w,
        "vae_weights": (dims.vae_encoder_params + dims.vae_decoder_params + dims.audio_vae_params) * w,
        "activations": max(gemma, connectors, video, audio),
    })


def train_phase(request: MemoryRequest, dims: ModelDims, settings: MemorySettings) -> PhaseMemory:
    t, c, b = dims.transformer, compute_bytes(settings), settings.batch_size
    n = tokens(dims, request.frames, request.width, request.height, request.frame_rate)
    ctx_v, ctx_a = t.context_widths
    # Inputs on the device (training/flow.py): noisy latents, contexts, per-token timesteps in the compute
    # dtype; velocity targets and the loss mask in fp32; the masks as int64.
    inputs = b * ((n.video * t.in_channels + n.audio * t.audio_in_channels + n.text * (ctx_v + ctx_a) + n.video) * c
                  + (n.video * t.in_channels + n.audio * t.audio_in_channels + n.video) * 4 + 2 * n.text * 8)
    activations = b * train_activations(dims, n, c, request.rank, settings.gradient_checkpointing)
    lora = lora_terms(dims, request.rank, settings.optimizer)
    lora["lora_gradients"] = gradients_at_peak(dims, n, c, request.rank, settings)
    weights = {"transformer_weights": transformer_weight_bytes(dims, settings.base_precision)}
    if settings.shards > 1:
        weights, lora = sharded(weights, lora, dims, request.rank, settings)
    quantized = settings.base_precision in ("int8", "fp8") and t.quantized_blocks() > 0
    if quantized:
        # Autograd keeps the dequantized weight (compute dtype) of every quantized layer whose input needs a
        # gradient (all but the text keys and values) for the backward pass: a block's worth while it is
        # recomputed, every quantized block's without checkpointing (torchao's int8 under PEFT, measured on
        # the CPU at the real widths).
        kept = 1 if settings.gradient_checkpointing else t.quantized_blocks()
        activations += kept * (t.block_linear_weights - t.block_text_kv_weights) * c
    return PhaseMemory("train", {
        **weights,
        **lora,
        "inputs": inputs,
        "activations": activations,
    })


def sharded(weights: dict[str, int], lora: dict[str, int], dims: ModelDims, rank: int, settings: MemorySettings
            ) -> tuple[dict[str, int], dict[str, int]]:
    """The terms of one of `settings.shards` FSDP processes: 1/N of each, plus what is gathered at once (the
    parts outside the blocks and two blocks, with their LoRA in fp32)."""
    t, n = dims.transformer, settings.shards
    loaded = 4 if settings.base_precision == "fp32" else 2
    lora_per_block = t.lora_params(rank) // t.layers * 4
    shares = {name: -(-value // n) for name, value in weights.items()}
    shares["gathered_weights"] = (t.outer_params + 2 * t.block_params) * loaded + 2 * lora_per_block
    return shares, {name: -(-value // n) for name, value in lora.items()}


def gradients_at_peak(dims: ModelDims, n: _Tokens, c: int, rank: int, settings: MemorySettings) -> int:
    """LoRA gradients allocated when the step peaks. With accumulation every gradient is there from the first
    micro-batch on. Otherwise they appear block by block as backward runs: with checkpointing the peak is at
    the first block backward reaches while its inputs are all kept, or at the last one, by then holding every
    gradient, when gradients grow faster than checkpointed inputs are released (short, small clips); without
    checkpointing the peak is the end of the forward pass, before any gradient."""
    t = dims.transformer
    total = t.lora_params(rank) * 4
    if settings.gradient_accumulation_steps > 1:
        return total
    if not settings.gradient_checkpointing:
        return 0
    per_block = total // t.layers
    released = (n.video * t.video_width + n.audio * t.audio_width) * c * settings.batch_size
    return per_block if released >= per_block else total - (t.layers - 1) * released


def train_activations(dims: ModelDims, n: _Tokens, c: int, rank: int, checkpointing: bool) -> int:
    """One sample's activation peak in a training step (bytes; see the coefficient comments above)."""
    t = dims.transformer
    d, da = t.video_width, t.audio_width
    rows = t.modulation_rows
    # Kept through the whole step: per-token AdaLN (video timesteps are per token), RoPE tables (fp32 cos and
    # sin of the self and cross-modal attentions), the last block's output and the output norm's.
    persistent = n.video * (rows * d * c + (d + da) * 4 + 2 * d * c) + n.audio * (2 * da * 4 + 2 * da * c)
    if t.caption_projection:
        persistent += n.text * (d + da) * c  # LTX-2.0 projects the captions once per step
    coefficients = _SAVED_PER_BLOCK[(t.cross_attention_modulation, c)]
    block = (n.video * d * coefficients["video"] + n.audio * da * coefficients["audio"]
             + n.text * t.cross_attention_dim * coefficients["text"])
    block += 4 * rank * sum(count * getattr(n, stream) for stream, count in _LORA_LAYERS_PER_TOKEN.items())
    if checkpointing:
        inputs = t.layers * (n.video * d + n.audio * da) * c  # each block's input, kept for its recompute
        return int(persistent + inputs + block + _TRANSIENT_CHECKPOINTED * n.video * d)
    return int(persistent + t.layers * block + (_TRANSIENT_FORWARD + rows * c) * n.video * d)


def validate_phase(request: MemoryRequest, dims: ModelDims, settings: MemorySettings) -> PhaseMemory:
    t, c = dims.transformer, compute_bytes(settings)
    w = 4 if settings.base_precision == "fp32" else 2
    frames, width, height = request.validation_frames, request.validation_width, request.validation_height
    n = tokens(dims, frames, width, height, request.validation_frame_rate)
    cfg_batch = 2  # CFG runs the negative and the positive prompt together; STG and modality guidance alone
    stacked = stacked_text_bytes(dims, c)
    # The prompt and the negative prompt copied to the device, and the pipeline's concatenation of the two:
    # all three live until the sample is decoded.
    prompts = 2 * stacked + cfg_batch * stacked
    connectors = connectors_activation(dims, cfg_batch, c)
    denoise = inference_activation(dims, n, cfg_batch, c, per_token_timesteps=request.validation_images)
    if settings.base_precision in ("int8", "fp8"):
        denoise += t.largest_linear * c  # one layer's dequantized weight at a time
    video = 3 * frames * width * height * c
    decode = vae_activation(dims, frames, width, height, c, encode=False)
    if dims.vae_tiling and max(width, height) > dims.vae_tile:
        # Decoded tiles are kept until all are blended: when the last full-size tile peaks, about the frame
        # outside one tile is already decoded.
        tile_area = min(width, dims.vae_tile) * min(height, dims.vae_tile)
        decode += int(video * (1 - tile_area / (width * height)))
    # The decoded video is denormalised on the device before it is copied to the host: (x / 2 + 0.5) and the
    # clamp, each a new video-sized tensor while the video itself is still referenced.
    postprocess = 3 * video
    audio = audio_vae_activation(dims, frames / request.validation_frame_rate, c) + \
        _VOCODER_BYTES_PER_SAMPLE * 2 * round(frames / request.validation_frame_rate * dims.vocoder_sample_rate)
    weights = {"transformer_weights": transformer_weight_bytes(dims, settings.base_precision)}
    lora = {"lora_weights": t.lora_params(request.rank) * 4}
    # On a GPU the engine moves the optimizer state to host memory while it samples, except sharded state.
    if not (settings.gpu and settings.offload_optimizer_for_validation and settings.shards == 1):
        lora["optimizer_state"] = lora_terms(dims, request.rank, settings.optimizer)["optimizer_state"]
    if settings.shards > 1:
        weights, lora = sharded(weights, lora, dims, request.rank, settings)
    terms = {**weights, **lora}
    terms.update({
        "connectors_weights": dims.connectors_params * w,
        "vae_weights": (dims.vae_encoder_params + dims.vae_decoder_params + dims.audio_vae_params
                        + dims.vocoder_params) * w,
        "inputs": prompts,
        "activations": max(connectors, denoise, decode, postprocess, audio),
    })
    return PhaseMemory("validate", terms)


def stacked_text_bytes(dims: ModelDims, c: int) -> int:
    """One prompt's Gemma hidden states of every layer, stacked: what the connectors read."""
    return dims.text_tokens * dims.text_width * (dims.text_layers + 1) * c


def gemma_activation(dims: ModelDims, c: int) -> int:
    """Gemma's forward on one prompt: the logits of every token, and its hidden states 4 times over."""
    return dims.text_tokens * dims.text_vocab * c + _GEMMA_HIDDEN_COPIES * stacked_text_bytes(dims, c)


def connectors_activation(dims: ModelDims, batch: int, c: int) -> int:
    return int(_CONNECTORS[dims.version] * batch * stacked_text_bytes(dims, c))


def inference_activation(dims: ModelDims, n: _Tokens, batch: int, c: int, *, per_token_timesteps: bool) -> int:
    """A no-grad forward of the transformer with its LoRA (see `_INFERENCE`)."""
    t = dims.transformer
    per_token = (2 * t.modulation_rows + 1) * c if per_token_timesteps else 0
    return int(batch * n.video * t.video_width * (_INFERENCE[c] + per_token))


def vae_activation(dims: ModelDims, frames: int, width: int, height: int, c: int, *, encode: bool) -> int:
    """The video VAE's peak on one tile (the whole frame without tiling): a share of the pixels and of its
    first level (the patchified input, padded copies, the first convolutions' outputs)."""
    if dims.vae_tiling:
        width, height = min(width, dims.vae_tile), min(height, dims.vae_tile)
    pixels = frames * width * height
    a, b = _VAE_ENCODE if encode else _VAE_DECODE[dims.version]
    first_level = dims.vae_encoder_channels if encode else dims.vae_decoder_channels
    return int((a * 3 * pixels + b * first_level * pixels / dims.vae_patch_size**2) * c)


def audio_vae_activation(dims: ModelDims, seconds: float, c: int) -> int:
    return int(_AUDIO_VAE_LEVEL0_COPIES * _AUDIO_VAE_WIDTH * _MEL_FRAMES_PER_SECOND * seconds * dims.mel_bins * c)
