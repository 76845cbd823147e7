"""Measuring what a phase of a job really holds in memory, to check `ltx2trainer.planning` against.

There is no `torch.cuda.max_memory_allocated` on a CPU, so `LiveBytes` counts storage instead: a
`TorchDispatchMode` that sees every tensor an operator returns, adds its storage's bytes once (views share a
storage), and takes them off when the storage is freed (a weak reference's callback). `peak` is the largest
sum seen. It counts what PyTorch's caching allocator would be asked for, without the allocator's rounding
and caching and without the CUDA context: exactly the part of the planner's prediction that is not its
`allocator_overhead` term.

`torch.distributed._tools.mem_tracker.MemTracker` does the same and more, but it installs a gradient hook on
every parameter and fails on frozen ones (`register_hook` on a tensor that does not require grad), which is
what a LoRA's base model is made of.

Two ways of running a phase under it:
- the tiny presets on real CPU tensors, through the engine's own functions (`measure_tiny_*`);
- the real dimensions with no memory at all: modules built on the meta device and given `FakeTensor`
  parameters (`FakeTensorMode`: shapes, dtypes and devices propagate, nothing is allocated), so one
  training step of the 19B transformer at 89 frames 768x768 is "run" on a laptop (`measure_fake_*`). The
  fake tensors say "cpu", so scaled dot-product attention dispatches to its flash kernel for the CPU, which
  like CUDA's flash and memory-efficient kernels keeps no S x S matrix.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode, is_traceable_wrapper_subclass
from torch.utils._pytree import tree_flatten

from ltx2trainer.model.lora import attach_lora
from ltx2trainer.training.flow import Batch, flow_matching_loss, prepare_flow_step
from ltx2trainer.training.timesteps import ShiftedLogitNormalSampler


class LiveBytes(TorchDispatchMode):
    """Live tensor storage in bytes, and the largest it has been (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._storages: dict[int, tuple[weakref.ref, int]] = {}
        self._shapes: dict[int, tuple[tuple[int, ...], torch.dtype]] = {}  # for `largest_live`

    def track(self, *tensors: Any) -> LiveBytes:
        """Count tensors that existed before the mode was entered (weights, optimizer state, inputs)."""
        for tensor in tree_flatten(list(tensors))[0]:
            if isinstance(tensor, torch.Tensor):
                self._add(tensor)
        return self

    def track_module(self, *modules: torch.nn.Module | None) -> LiveBytes:
        for module in modules:
            if module is not None:
                self.track(*module.parameters(), *module.buffers())
        return self

    def reset_peak(self) -> None:
        self.peak = self.live

    def largest_live(self, count: int = 20) -> list[tuple[tuple[int, ...], torch.dtype, int]]:
        """(shape, dtype, bytes) of the largest live storages, as first seen: what holds the memory now."""
        live = [(self._shapes[key], size) for key, (ref, size) in self._storages.items() if ref() is not None]
        return [(shape, dtype, size) for (shape, dtype), size in sorted(live, key=lambda item: -item[1])[:count]]

    def _add(self, tensor: torch.Tensor) -> None:
        if is_traceable_wrapper_subclass(tensor):  # torchao's quantized weights: count what they store
            for name in tensor.__tensor_flatten__()[0]:
                inner = getattr(tensor, name)
                if isinstance(inner, torch.Tensor):
                    self._add(inner)
            return
        storage = tensor.untyped_storage()
        key = id(storage)
        known = self._storages.get(key)
        if known is not None and known[0]() is storage:
            return
        size = storage.nbytes()

        def freed(_: weakref.ref, key: int = key, size: int = size) -> None:
            if self._storages.pop(key, None) is not None:
                self.live -= size

        self._storages[key] = (weakref.ref(storage, freed), size)
        self._shapes[key] = (tuple(tensor.shape), tensor.dtype)
        self.live += size
        self.peak = max(self.peak, self.live)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                self._add(tensor)
        return out


@dataclass
class Measured:
    """Bytes held before the phase started (`baseline`: weights, LoRA, optimizer state, inputs) and at its
    peak; `parts` names what the baseline is made of."""

    baseline: int
    peak: int
    parts: dict[str, int] = field(default_factory=dict)


def storage_bytes(*tensors_or_modules: Any) -> int:
    """Bytes of distinct storages (what `LiveBytes.track` would add), for reporting the baseline's parts."""
    tracker = LiveBytes()
    for item in tensors_or_modules:
        if isinstance(item, torch.nn.Module):
            tracker.track_module(item)
        else:
            tracker.track(item)
    return tracker.live


# --------------------------------------------------------------------------------------- fake modules


def fake_module(build: Callable[[], torch.nn.Module], fake_mode, dtype: torch.dtype,
                prepare: Callable[[torch.nn.Module], Any] | None = None) -> torch.nn.Module:
    """`build()` on the meta device in `dtype`, then `prepare(module)` there (e.g. attach a LoRA), then every
    parameter and buffer swapped for a FakeTensor on the "cpu" with its shape, dtype and requires_grad."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("meta"):
            module = build()
    finally:
        torch.set_default_dtype(previous)
    if prepare is not None:
        prepare(module)
    swapped: dict[int, torch.nn.Parameter] = {}  # tied weights (Gemma's embedding and lm_head) stay tied
    for sub in module.modules():
        for name, parameter in list(sub._parameters.items()):
            if parameter is not None:
                if id(parameter) not in swapped:
                    with fake_mode:
                        empty = torch.empty(parameter.shape, dtype=parameter.dtype, device="cpu")
                    swapped[id(parameter)] = torch.nn.Parameter(empty, requires_grad=parameter.requires_grad)
                sub._parameters[name] = swapped[id(parameter)]
        for name, buffer in list(sub._buffers.items()):
            if buffer is not None:
                with fake_mode:
                    sub._buffers[name] = torch.empty(buffer.shape, dtype=buffer.dtype, device="cpu")
    return module


def fake_mode():
    from torch._subclasses.fake_tensor import FakeTensorMode

    return FakeTensorMode(allow_non_fake_inputs=True)


# --------------------------------------------------------------------------------------- training step


def synthetic_batch(config: dict[str, Any], *, latent_frames: int, latent_height: int, latent_width: int,
                    audio_tokens: int, text_tokens: int, fps: float = 25.0, seed: int = 0) -> Batch:
    """A Batch of one sample with the shapes the engine feeds `config`'s transformer (float32, CPU). LTX-2.0
    projects captions inside the transformer (both contexts are the connectors' caption-wide output);
    LTX-2.3's connectors project them to the video and audio widths."""
    g = torch.Generator().manual_seed(seed)
    c = config["in_channels"]
    if config.get("use_prompt_embeddings", True):
        video_width = audio_width = config["caption_channels"]
    else:
        video_width = config["num_attention_heads"] * config["attention_head_dim"]
        audio_width = config["audio_num_attention_heads"] * config["audio_attention_head_dim"]
    return Batch(
        video=torch.randn(1, c, latent_frames, latent_height, latent_width, generator=g),
        first_frame=torch.randn(1, c, 1, latent_height, latent_width, generator=g),
        audio=torch.randn(1, audio_tokens, config["audio_in_channels"], generator=g), audio_in_loss=True,
        video_context=torch.randn(1, text_tokens, video_width, generator=g),
        audio_context=torch.randn(1, text_tokens, audio_width, generator=g),
        mask=torch.ones(1, text_tokens, dtype=torch.long), fps=fps,
    )


def measure_train_step(transformer: torch.nn.Module, batch: Batch, *, dtype: torch.dtype, rank: int,
                       checkpointing: bool, fake=None, lora_attached: bool = False) -> Measured:
    """Peak of one steady-state training step as the engine takes it (`training/trainer.py`): forward,
    `flow_matching_loss`, backward, gradient clipping, a fused AdamW step, `zero_grad(set_to_none=True)`.

    The optimizer state exists before the step (a first step made it), as in every step but the first.
    `fake`: the FakeTensorMode the transformer's parameters belong to (None: real tensors).
    """
    parameters = [p for p in transformer.parameters() if p.requires_grad] if lora_attached else \
        attach_lora(transformer, rank)
    if checkpointing:
        transformer.enable_gradient_checkpointing()
    transformer.train()
    # The engine's step, with its inputs drawn for real on the CPU (the sampler needs real numbers), then
    # made fake where the model is: on a GPU they are the device copies of the batch.
    flow = prepare_flow_step(batch, ShiftedLogitNormalSampler(), torch.Generator().manual_seed(1),
                             first_frame_p=1.0, device="cpu", dtype=dtype)
    if fake is not None:
        convert = fake.from_tensor
        flow.model_kwargs = {k: convert(v) if isinstance(v, torch.Tensor) else v for k, v in flow.model_kwargs.items()}
        flow.video_target, flow.video_loss_mask, flow.audio_target = (
            convert(flow.video_target), convert(flow.video_loss_mask), convert(flow.audio_target))
    context = fake if fake is not None else contextlib.nullcontext()
    with context:
        optimizer = torch.optim.AdamW(parameters, lr=1e-4, fused=True)
        for p in parameters:  # one step to create the state (AdamW's moments), as after the first step
            p.grad = torch.zeros_like(p)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        inputs = [v for v in flow.model_kwargs.values() if isinstance(v, torch.Tensor)]
        inputs += [flow.video_target, flow.video_loss_mask, flow.audio_target]
        tracker = LiveBytes().track_module(transformer)
        tracker.track(optimizer.state_dict()["state"], inputs)
        parts = {"weights": storage_bytes(transformer), "optimizer": storage_bytes(optimizer.state_dict()["state"]),
                 "inputs": storage_bytes(inputs)}
        baseline = tracker.live
        with tracker:
            video, audio = transformer(**flow.model_kwargs)
            loss, _, _ = flow_matching_loss(video, audio, flow)
            loss.backward()
            del video, audio
            torch.nn.utils.clip_grad_norm_(parameters, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return Measured(baseline, tracker.peak, parts)


@contextlib.contextmanager
def tracking(*modules: torch.nn.Module | None, extra: Any = ()) -> Iterator[LiveBytes]:
    """LiveBytes over `modules`' weights and `extra` tensors, entered."""
    tracker = LiveBytes().track_module(*modules)
    tracker.track(extra)
    with tracker:
        yield tracker


# --------------------------------------------------------------------------------------- tiny presets


def tiny_components(version: str, seed: int = 0):
    from ltx2trainer.model.tiny import build_tiny_components

    return build_tiny_components(seed, version=version)


def measure_tiny_encode(version: str, *, frames: int, width: int, height: int, with_audio: bool = True,
                        caption: str = "a red car on a wet street at night") -> Measured:
    """The encode phase's peak for one sample: the resident modules are the text encoder, the connectors and
    both VAEs (staged loading: no transformer); the engine's own encoders run on a clip of random pixels."""
    from ltx2trainer.model.encoders import (
        audio_latent_length,
        connect_prompts,
        encode_audio,
        encode_prompts,
        encode_video,
    )

    components = tiny_components(version)
    resident = (components.text_encoder, components.connectors, components.vae, components.audio_vae)
    pixels = torch.rand(3, frames, height, width) * 2 - 1
    waveform = torch.zeros(2, round(frames / 25.0 * 16_000))
    with torch.no_grad(), tracking(*resident) as tracker:
        baseline = tracker.live
        tracker.track(pixels, waveform)  # on a GPU: the decoded clip, moved to the device
        embeds, mask = encode_prompts(components, [caption])
        connect_prompts(components, embeds, mask)
        del embeds, mask
        encode_video(components, pixels)
        encode_video(components, pixels[:, :1])  # the first frame, encoded alone
        if with_audio:
            encode_audio(components, waveform, audio_latent_length(components, frames, 25.0))
    return Measured(baseline, tracker.peak, {"weights": storage_bytes(*resident)})


def measure_tiny_train(version: str, *, frames: int, width: int, height: int, rank: int, checkpointing: bool,
                       precision: str = "fp32", text_tokens: int | None = None) -> Measured:
    """One steady-state training step of a tiny preset on real CPU tensors: fp32 as the CPU trains, or as a
    GPU would (`bf16`: the base in bf16; `int8`: then torchao's weight-only int8, model/quantize.py)."""
    components = tiny_components(version)
    transformer = components.transformer
    dtype = torch.float32
    if precision != "fp32":
        dtype = torch.bfloat16
        for tensor in (*transformer.parameters(), *transformer.buffers()):  # (.to() warns about fp32 modules)
            tensor.data = tensor.data.to(dtype) if tensor.is_floating_point() else tensor.data
        if precision != "bf16":
            from ltx2trainer.model.quantize import quantize_linears, weight_config

            quantize_linears(transformer, weight_config(precision))  # quantize_base refuses fp8 off a GPU
    batch = synthetic_batch(
        dict(transformer.config), latent_frames=(frames - 1) // 8 + 1, latent_height=height // 32,
        latent_width=width // 32, audio_tokens=round(frames / 25.0 * 25), text_tokens=text_tokens or
        components.max_sequence_length)
    return measure_train_step(transformer, batch, dtype=dtype, rank=rank, checkpointing=checkpointing)


def measure_tiny_validate(version: str, *, frames: int, width: int, height: int, rank: int,
                          stg_scale: float = 1.0, image: bool = False) -> Measured:
    """One validation sample of a tiny preset (`pipeline/validate.generate_sample`: CFG, STG, audio, VAE
    decode) with a LoRA and its AdamW state resident, as at a validation point of a run."""
    from PIL import Image

    from ltx2trainer.pipeline.validate import EncodedPrompt, SampleSpec, encode_prompt_texts, generate_sample

    components = tiny_components(version)
    parameters = attach_lora(components.transformer, rank)
    optimizer = torch.optim.AdamW(parameters, lr=1e-4)
    for p in parameters:
        p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    positive, negative = encode_prompt_texts(components, ["a red car", "worst quality"])
    picture = Image.new("RGB", (width, height), (200, 40, 40)) if image else None
    resident = (components.transformer, components.connectors, components.vae, components.audio_vae,
                components.vocoder)
    with tracking(*resident, extra=optimizer.state_dict()["state"]) as tracker:
        baseline = tracker.live
        # On a GPU the prompts held on the host are copied to the device for the sample: fresh tensors.
        on_device = [EncodedPrompt(p.embeds.clone(), p.mask.clone()) for p in (positive, negative)]
        spec = SampleSpec(number_of_frames=frames, frame_rate=25, width=width, height=height, stg_scale=stg_scale)
        generate_sample(components, on_device[0], spec, negative_prompt=on_device[1], image=picture, output_type="np")
    return Measured(baseline, tracker.peak, {"weights": storage_bytes(*resident),
                                             "optimizer": storage_bytes(optimizer.state_dict()["state"])})


# --------------------------------------------------------------------------------------- real sizes, fake


def real_config(version: str, layers: int = 48) -> dict[str, Any]:
    """The official config of a released LTX-2 `version` with `layers` blocks (bench/official_load.py)."""
    from bench.official_load import real_config as official

    return official(version, layers)


def real_transformer_config(version: str, layers: int) -> dict[str, Any]:
    from ltx2trainer.model.official.configs import transformer_config

    return transformer_config(real_config(version, layers), version)


def measure_fake_train(version: str, *, layers: int, frames: int, width: int, height: int, rank: int = 32,
                       dtype: torch.dtype = torch.bfloat16, checkpointing: bool = True,
                       text_tokens: int = 1024) -> Measured:
    """One training step of the real-size transformer (`layers` of its 48 blocks) on fake tensors."""
    from diffusers import LTX2VideoTransformer3DModel

    config = real_transformer_config(version, layers)
    mode = fake_mode()
    model = fake_module(lambda: LTX2VideoTransformer3DModel(**config), mode, dtype)
    batch = synthetic_batch(config, latent_frames=(frames - 1) // 8 + 1, latent_height=height // 32,
                            latent_width=width // 32, audio_tokens=round(frames / 25.0 * 25), text_tokens=text_tokens)
    return measure_train_step(model, batch, dtype=dtype, rank=rank, checkpointing=checkpointing, fake=mode)


def measure_fake_inference(version: str, *, layers: int, batch: int, frames: int, width: int, height: int,
                           per_token_timesteps: bool = False, rank: int = 32, text_tokens: int = 1024) -> Measured:
    """A no-grad forward of the real-size transformer with a LoRA, as a validation sample's CFG batch."""
    from diffusers import LTX2VideoTransformer3DModel

    config = real_transformer_config(version, layers)
    mode = fake_mode()
    dtype = torch.bfloat16
    model = fake_module(lambda: LTX2VideoTransformer3DModel(**config), mode, dtype,
                        prepare=lambda module: attach_lora(module, rank))
    model.eval()
    f, h, w = (frames - 1) // 8 + 1, height // 32, width // 32
    video_tokens, audio_tokens = f * h * w, round(frames / 25.0 * 25)
    ctx = synthetic_batch(config, latent_frames=1, latent_height=1, latent_width=1, audio_tokens=1,
                          text_tokens=1)
    with mode:
        kwargs = dict(
            hidden_states=torch.empty(batch, video_tokens, config["in_channels"], dtype=dtype),
            audio_hidden_states=torch.empty(batch, audio_tokens, config["audio_in_channels"], dtype=dtype),
            encoder_hidden_states=torch.empty(batch, text_tokens, ctx.video_context.shape[-1], dtype=dtype),
            audio_encoder_hidden_states=torch.empty(batch, text_tokens, ctx.audio_context.shape[-1], dtype=dtype),
            timestep=torch.empty(batch, video_tokens, dtype=dtype) if per_token_timesteps else
            torch.empty(batch, dtype=dtype),
            sigma=torch.empty(batch, dtype=dtype), audio_timestep=torch.empty(batch, dtype=dtype),
            audio_sigma=torch.empty(batch, dtype=dtype),
            encoder_attention_mask=torch.ones(batch, text_tokens, dtype=torch.long),
            audio_encoder_attention_mask=torch.ones(batch, text_tokens, dtype=torch.long),
            num_frames=f, height=h, width=w, fps=25.0, audio_num_frames=audio_tokens, use_cross_timestep=True,
            return_dict=False)
        inputs = [v for v in kwargs.values() if isinstance(v, torch.Tensor)]
        with torch.no_grad(), tracking(model, extra=inputs) as tracker:
            baseline = tracker.live
            model(**kwargs)
    return Measured(baseline, tracker.peak, {"weights": storage_bytes(model), "inputs": storage_bytes(inputs)})


def measure_fake_vae(version: str, *, encode: bool, frames: int, width: int, height: int) -> Measured:
    """The real video VAE (tiling on, as the loaders set it) encoding a clip or decoding latents, bf16."""
    from diffusers import AutoencoderKLLTX2Video

    from ltx2trainer.model.official.configs import video_vae_config

    config = video_vae_config(real_config(version, 1), "real")
    mode = fake_mode()
    vae = fake_module(lambda: AutoencoderKLLTX2Video(**config), mode, torch.bfloat16)
    vae.enable_tiling()
    vae.eval()
    with mode:
        if encode:
            x = torch.empty(1, 3, frames, height, width, dtype=torch.bfloat16)
        else:
            x = torch.empty(1, config["latent_channels"], (frames - 1) // 8 + 1, height // 32, width // 32,
                            dtype=torch.bfloat16)
        with torch.no_grad(), tracking(vae, extra=[x]) as tracker:
            baseline = tracker.live
            if encode:
                vae.encode(x).latent_dist.mode()
            else:
                temb = torch.full((1,), 0.05, dtype=torch.bfloat16) if config.get("timestep_conditioning") else None
                vae.decode(x, temb, return_dict=False)
    return Measured(baseline, tracker.peak)


def measure_fake_gemma(layers: int, *, tokens: int = 1024) -> Measured:
    """Gemma-3-12B (`layers` of its 48 layers) encoding one prompt as the LTX-2 pipelines do: every hidden
    state, stacked, flattened and repeated (`LTX2Pipeline._get_gemma_prompt_embeds`)."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3TextConfig, SiglipVisionConfig

    config = Gemma3Config(
        text_config=Gemma3TextConfig(vocab_size=262_208, hidden_size=3840, intermediate_size=15_360,
                                     num_hidden_layers=layers, num_attention_heads=16, num_key_value_heads=8,
                                     head_dim=256, sliding_window=1024),
        vision_config=SiglipVisionConfig(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
                                         num_attention_heads=16, image_size=896, patch_size=14),
        mm_tokens_per_image=256)
    mode = fake_mode()
    model = fake_module(lambda: Gemma3ForConditionalGeneration(config), mode, torch.bfloat16)
    model.eval()
    mask = torch.ones(1, tokens, dtype=torch.long)
    mask[:, : tokens // 2] = 0  # left padding, as the pipelines tokenize
    ids, mask = mode.from_tensor(torch.randint(0, 1000, (1, tokens))), mode.from_tensor(mask)
    with mode, torch.no_grad(), tracking(model, extra=[ids, mask]) as tracker:
        baseline = tracker.live
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        torch.stack(out.hidden_states, dim=-1).flatten(2, 3).repeat(1, 1, 1)
    return Measured(baseline, tracker.peak, {"weights": storage_bytes(model),
                                             "parameters": sum(p.numel() for p in model.parameters())})


def measure_fake_connectors(version: str, *, batch: int, tokens: int = 1024) -> Measured:
    """The real text connectors on `batch` prompts' stacked Gemma states (validation's CFG pair: 2)."""
    from diffusers.pipelines.ltx2 import LTX2TextConnectors

    from bench.official_load import official_shapes
    from ltx2trainer.model.official.configs import connectors_config

    official = real_config(version, 1)
    config = connectors_config(official_shapes(official), official, version, "real")
    mode = fake_mode()
    connectors = fake_module(lambda: LTX2TextConnectors(**config), mode, torch.bfloat16)
    width = config["caption_channels"] * config["text_proj_in_factor"]
    with mode:
        x = torch.empty(batch, tokens, width, dtype=torch.bfloat16)
        mask = torch.ones(batch, tokens, dtype=torch.long)
        with torch.no_grad(), tracking(connectors, extra=[x, mask]) as tracker:
            baseline = tracker.live
            connectors(x, mask, padding_side="left")
    return Measured(baseline, tracker.peak, {"weights": storage_bytes(connectors)})
