"""The numbers of an LTX-2 model that decide how much memory a job takes, and the real ones as presets.

`ModelDims` holds parameter counts per component and the transformer's shape; nothing here imports torch,
so the gateway can size a request before it is queued. The transformer's parameters are listed analytically
(`TransformerDims.block_linears` and friends) from diffusers 0.42's `LTX2VideoTransformer3DModel`, because the
memory model needs their structure, not only their sum: which Linear weights int8/fp8 replaces, which ones
carry a LoRA, how wide each token stream is. tests/test_planning.py checks every count here against the
diffusers classes built on the meta device (real configs) and against the tiny presets.

Presets: `ltx-2-19b` (LTX-2.0) and `ltx-2.3` with the released sizes (the configs `bench/official_load.py`
writes real-width files from), `tiny` / `tiny-2.3` (`model/tiny.py`). Gemma-3-12B, the text encoder of both
real versions, is 12.20 B parameters with its vision tower (the language model 11.77 B, the lm_head tied to
the embedding): 24.4 GB in bf16.

Counts are of what a module holds: its parameters and buffers (the VAEs' latent statistics, the LTX-2.3
vocoder's mel filterbank...), in elements; the transformer and connectors have no buffers. Sizes read from
files count what the files store (parameters and persistent buffers).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property

# Blocks whose Linear layers model/quantize.py leaves in the base dtype (ltx-core's fp8 policy: the first and
# the last five of 48), besides every Linear outside the blocks. Mirrored here to stay torch-free; a test
# compares it with model.quantize.EXCLUDED_LAYER_SUBSTRINGS.
UNQUANTIZED_BLOCKS = frozenset({0, 43, 44, 45, 46, 47})
TIMESTEP_PROJECTION = 256  # sinusoidal timestep features fed to every AdaLN embedder


@dataclass(frozen=True)
class Linear:
    name: str
    d_in: int
    d_out: int
    lora: bool  # a LoRA target (model/lora.py LORA_TARGET_MODULES)


@dataclass(frozen=True)
class TransformerDims:
    """The transformer's shape. The flags are what LTX-2.3 changed: gated attention, cross-attention
    modulation (9 AdaLN rows instead of 6, prompt AdaLN) and no caption projection inside the model."""

    layers: int
    video_heads: int
    video_head_dim: int
    audio_heads: int
    audio_head_dim: int
    cross_attention_dim: int
    audio_cross_attention_dim: int
    caption_channels: int
    in_channels: int = 128
    out_channels: int = 128
    audio_in_channels: int = 128
    audio_out_channels: int = 128
    gated_attention: bool = False
    cross_attention_modulation: bool = False
    caption_projection: bool = True
    ff_mult: int = 4

    @property
    def video_width(self) -> int:
        return self.video_heads * self.video_head_dim

    @property
    def audio_width(self) -> int:
        return self.audio_heads * self.audio_head_dim

    @property
    def modulation_rows(self) -> int:
        """AdaLN rows per token and block (shift/scale/gate of attention and feed-forward, + text query)."""
        return 9 if self.cross_attention_modulation else 6

    @property
    def context_widths(self) -> tuple[int, int]:
        """Widths of the video and audio text context the transformer is given (the connectors' output)."""
        if self.caption_projection:
            return self.caption_channels, self.caption_channels
        return self.video_width, self.audio_width

    @cached_property
    def block_linears(self) -> tuple[Linear, ...]:
        """Every nn.Linear of one transformer block (LTX2VideoTransformerBlock)."""
        d, da, ff = self.video_width, self.audio_width, self.ff_mult
        attentions = (  # name, query width, key/value width, inner width, heads
            ("attn1", d, d, d, self.video_heads),
            ("audio_attn1", da, da, da, self.audio_heads),
            ("attn2", d, self.cross_attention_dim, d, self.video_heads),
            ("audio_attn2", da, self.audio_cross_attention_dim, da, self.audio_heads),
            ("audio_to_video_attn", d, da, da, self.audio_heads),  # a2v runs at the audio heads' width
            ("video_to_audio_attn", da, d, da, self.audio_heads),
        )
        linears = []
        for name, q, kv, inner, heads in attentions:
            linears += [Linear(f"{name}.to_q", q, inner, True), Linear(f"{name}.to_k", kv, inner, True),
                        Linear(f"{name}.to_v", kv, inner, True), Linear(f"{name}.to_out.0", inner, q, True)]
            if self.gated_attention:
                linears.append(Linear(f"{name}.to_gate_logits", q, heads, False))  # not a LoRA target
        for name, width in (("ff", d), ("audio_ff", da)):
            linears += [Linear(f"{name}.net.0.proj", width, ff * width, True),
                        Linear(f"{name}.net.2", ff * width, width, True)]
        return tuple(linears)

    @cached_property
    def block_params(self) -> int:
        """Parameters of one block: Linear weights and biases, the q/k RMSNorm weights, the AdaLN tables."""
        d, da = self.video_width, self.audio_width
        linear = sum(lin.d_in * lin.d_out + lin.d_out for lin in self.block_linears)
        qk_norms = 2 * (d + da + d + da + da + da)  # norm_q/norm_k of the six attentions (their inner widths)
        tables = self.modulation_rows * (d + da) + 5 * (d + da)  # AdaLN and a2v/v2a scale-shift tables
        if self.cross_attention_modulation:
            tables += 2 * (d + da)  # prompt scale-shift tables
        return linear + qk_norms + tables

    @cached_property
    def outer_params(self) -> int:
        """Parameters outside the blocks: input/output projections, caption projections, AdaLN embedders."""
        d, da = self.video_width, self.audio_width

        def adaln(width: int, rows: int) -> int:  # LTX2AdaLayerNormSingle: 256→w→w embedder, w→rows·w
            return (TIMESTEP_PROJECTION * width + width) + (width * width + width) + (width * rows * width
                                                                                         + rows * width)

        total = (self.in_channels * d + d) + (self.audio_in_channels * da + da)
        if self.caption_projection:  # PixArtAlphaTextProjection: caption→w, w→w
            total += sum(self.caption_channels * w + w + w * w + w for w in (d, da))
        total += adaln(d, self.modulation_rows) + adaln(da, self.modulation_rows)
        total += adaln(d, 4) + adaln(da, 4) + adaln(d, 1) + adaln(da, 1)  # a2v/v2a scale-shift and gates
        if self.cross_attention_modulation:
            total += adaln(d, 2) + adaln(da, 2)  # prompt AdaLN
        total += 2 * (d + da)  # output scale-shift tables
        total += (d * self.out_channels + self.out_channels) + (da * self.audio_out_channels
                                                                + self.audio_out_channels)
        return total

    @property
    def params(self) -> int:
        return self.outer_params + self.layers * self.block_params

    @cached_property
    def block_linear_weights(self) -> int:
        return sum(lin.d_in * lin.d_out for lin in self.block_linears)

    @cached_property
    def block_rows(self) -> int:
        """Output rows of a block's Linear layers: quantized weights keep a scale (and int8 a zero point)
        per row."""
        return sum(lin.d_out for lin in self.block_linears)

    @property
    def block_text_kv_weights(self) -> int:
        """Weights of the keys and values read from the text context, whose input never needs a gradient."""
        return 2 * (self.cross_attention_dim * self.video_width + self.audio_cross_attention_dim * self.audio_width)

    @property
    def largest_linear(self) -> int:
        return max(lin.d_in * lin.d_out for lin in self.block_linears)

    def lora_params(self, rank: int) -> int:
        """LoRA parameters (A: r×d_in, B: d_out×r) on every target of every block."""
        return self.layers * rank * sum(lin.d_in + lin.d_out for lin in self.block_linears if lin.lora)

    def quantized_blocks(self) -> int:
        return sum(1 for block in range(self.layers) if block not in UNQUANTIZED_BLOCKS)


@dataclass(frozen=True)
class ModelDims:
    """What the memory model needs of a whole LTX-2 model (see the module docstring)."""

    name: str
    version: str  # "2.0" or "2.3"
    transformer: TransformerDims
    connectors_params: int  # counts: parameters and buffers, in elements (see the module docstring)
    text_encoder_params: int
    text_width: int  # Gemma hidden size
    text_layers: int  # Gemma layers; the connectors read layers + 1 hidden states
    text_vocab: int
    text_tokens: int  # prompt length the pipelines pad to (1024 for the real models)
    vae_encoder_params: int
    vae_decoder_params: int
    vae_encoder_channels: int  # width of the video VAE encoder's first level (its conv_in output)
    vae_decoder_channels: int  # width of the decoder's last level (its conv_out input)
    vae_tiling: bool  # decode/encode in 512-pixel tiles (load_components, load_official)
    audio_vae_params: int
    vocoder_params: int
    vocoder_sample_rate: int
    vae_patch_size: int = 4
    vae_spatial_compression: int = 32
    vae_temporal_compression: int = 8
    audio_latents_per_second: float = 25.0  # 16 kHz / hop 160 / 4x compression
    mel_bins: int = 64
    vae_tile: int = 512  # diffusers' tile_sample_min_height/width

    def with_name(self, name: str) -> ModelDims:
        return replace(self, name=name)


_REAL_TRANSFORMER = dict(layers=48, video_heads=32, video_head_dim=128, audio_heads=32, audio_head_dim=64,
                         cross_attention_dim=4096, audio_cross_attention_dim=2048, caption_channels=3840)
_GEMMA_3_12B = dict(text_encoder_params=12_202_568_001, text_width=3840, text_layers=48, text_vocab=262_208,
                    text_tokens=1024)

LTX_2_19B = ModelDims(
    name="ltx-2-19b", version="2.0", transformer=TransformerDims(**_REAL_TRANSFORMER),
    connectors_params=1_431_475_200, **_GEMMA_3_12B,
    vae_encoder_params=694_098_881, vae_decoder_params=528_380_976, vae_encoder_channels=128,
    vae_decoder_channels=128, vae_tiling=True, audio_vae_params=53_248_402, vocoder_params=55_592_802,
    vocoder_sample_rate=24_000,
)
LTX_23 = ModelDims(
    name="ltx-2.3", version="2.3",
    transformer=TransformerDims(**_REAL_TRANSFORMER, gated_attention=True, cross_attention_modulation=True,
                                caption_projection=False),
    connectors_params=1_660_692_608, **_GEMMA_3_12B,
    vae_encoder_params=347_250_497, vae_decoder_params=631_017_520, vae_encoder_channels=128,
    vae_decoder_channels=128, vae_tiling=True, audio_vae_params=53_248_402, vocoder_params=129_085_075,
    vocoder_sample_rate=48_000,
)
_TINY_TRANSFORMER = dict(layers=2, video_heads=2, video_head_dim=16, audio_heads=2, audio_head_dim=8,
                         cross_attention_dim=32, audio_cross_attention_dim=16, caption_channels=32,
                         in_channels=8, out_channels=8)
_TINY_COMMON = dict(text_encoder_params=35_601, text_width=32, text_layers=2, text_vocab=264, text_tokens=64,
                    vae_encoder_params=569_797, vae_decoder_params=899_376, vae_encoder_channels=8,
                    vae_decoder_channels=8, vae_tiling=False, audio_vae_params=4_460_306)
TINY = ModelDims(name="tiny", version="2.0", transformer=TransformerDims(**_TINY_TRANSFORMER),
                 connectors_params=28_864, vocoder_params=42_942, vocoder_sample_rate=24_000, **_TINY_COMMON)
TINY_23 = ModelDims(name="tiny-2.3", version="2.3",
                    transformer=TransformerDims(**_TINY_TRANSFORMER, gated_attention=True,
                                                cross_attention_modulation=True, caption_projection=False),
                    connectors_params=21_028, vocoder_params=632_355, vocoder_sample_rate=48_000, **_TINY_COMMON)

PRESETS: dict[str, ModelDims] = {dims.name: dims for dims in (LTX_2_19B, LTX_23, TINY, TINY_23)}
