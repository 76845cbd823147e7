"""The `tiny` and `tiny-2.3` presets: diffusers' real LTX-2 classes at tiny width, random seeded weights,
real topology of LTX-2.0 and LTX-2.3.

It keeps everything that shapes data and code paths: 32× spatial / 8× temporal video compression with a
causal encoder, 4× audio compression over 64 mel bins at 16 kHz with 128-wide audio tokens, left-padded
Gemma 3 hidden states of every layer into text connectors with learnable registers, and a transformer
with all six attention kinds and perturbed attention (STG). What it drops is width and depth, so that it
builds in about a second and trains on a CPU. Nothing is downloaded: the tokenizer is built here too.

The configuration keeps the dimension constraints the diffusers classes impose on each other (connector
width == Gemma width == transformer caption channels, audio VAE base channels == latent channels × mel
bins / 4, 3-level audio VAE so its compression is 4×), with the audio latent widened to LTX-2's 8
channels so that audio tokens are 128 wide as in the real model.

`tiny-2.3` switches on what LTX-2.3 changes, so those code paths run everywhere the tiny preset does:
gated attention in the transformer and the connectors, prompt AdaLN (timestep-modulated cross-attention),
the caption projection moved in front of the connectors (one per modality, with bias, so the connectors
run at the video and audio widths), and a vocoder with bandwidth extension to 48 kHz.
"""

from __future__ import annotations

import torch
from diffusers import (
    AutoencoderKLLTX2Audio,
    AutoencoderKLLTX2Video,
    FlowMatchEulerDiscreteScheduler,
    LTX2VideoTransformer3DModel,
)
from diffusers.pipelines.ltx2 import LTX2TextConnectors, LTX2Vocoder
from diffusers.pipelines.ltx2.vocoder import LTX2VocoderWithBWE
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import (
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3TextConfig,
    PreTrainedTokenizerFast,
    SiglipVisionConfig,
)

from ltx2trainer.model.components import ModelComponents
from ltx2trainer.model.identity import TINY, TINY_23

TINY_TEXT_WIDTH = 32  # Gemma hidden size = connector width = transformer caption channels
TINY_GEMMA_LAYERS = 2  # the connectors read all hidden states: embeddings + 2 layers = 3
TINY_INFERENCE_STEPS = 8  # validation denoising steps: enough to see the LoRA, fast on a CPU
TINY_MAX_SEQUENCE_LENGTH = 64  # prompt tokens (real: 1024); a multiple of the 8 learnable registers

SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>"]
# A small fixed corpus for the tokenizer's WordPiece vocabulary: common caption words, so that captions
# tokenize into whole words where they can and into letters where they cannot.
_CORPUS = """
a an the of in on at to and with without from over under into through by for near behind between
person people man woman child dog cat bird car street road city night day light dark sun moon sky water
sea river lake forest tree trees mountain snow rain fire smoke walking running dancing jumping sitting
standing talking singing playing looking turning moving slowly quickly camera zoom pan tilt shot close up
wide view scene video clip frame color colour red green blue yellow white black grey gray orange purple
pink bright soft steady tone test pattern bars fractal noise music sound voice loud quiet high low hum
beat drum guitar piano speaks says laughs smiles face hand hands eyes hair head body shirt dress hat
building house room window door table chair wall floor stage neon lit glowing shining reflection shadow
worst quality inconsistent motion blurry jittery distorted sks tok demo style cinematic realistic
animation cartoon portrait landscape aerial drone footage slow fast moving background foreground
""".split()


def build_tiny_components(seed: int = 0, version: str = "2.0") -> ModelComponents:
    """Build the tiny preset of LTX-`version` deterministically: the same seed gives bit-identical weights."""
    if version not in ("2.0", "2.3"):
        raise ValueError(f"no tiny preset for LTX-{version}")
    v23 = version == "2.3"
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        tokenizer = build_tiny_tokenizer()
        vocab = len(tokenizer)
        text_encoder = Gemma3ForConditionalGeneration(
            Gemma3Config(
                text_config=Gemma3TextConfig(
                    vocab_size=vocab, hidden_size=TINY_TEXT_WIDTH, intermediate_size=64,
                    num_hidden_layers=TINY_GEMMA_LAYERS, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                    sliding_window=16, max_position_embeddings=256,
                    pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                    bos_token_id=tokenizer.bos_token_id,
                ),
                # A vision tower is required by the class even for text-only use; one tiny layer.
                vision_config=SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                                 num_attention_heads=2, image_size=32, patch_size=8),
                mm_tokens_per_image=4, boi_token_index=vocab + 1, eoi_token_index=vocab + 2,
                image_token_index=vocab + 3,
            )
        )
        connectors = LTX2TextConnectors(
            caption_channels=TINY_TEXT_WIDTH, text_proj_in_factor=TINY_GEMMA_LAYERS + 1,
            video_connector_num_attention_heads=2, video_connector_attention_head_dim=16,
            video_connector_num_layers=1, video_connector_num_learnable_registers=8,
            audio_connector_num_attention_heads=2, audio_connector_attention_head_dim=8 if v23 else 16,
            audio_connector_num_layers=1, audio_connector_num_learnable_registers=8,
            connector_rope_base_seq_len=TINY_MAX_SEQUENCE_LENGTH, rope_double_precision=True, rope_type="split",
            # 2.3: per-modality projections to the transformer's widths (video 2×16, audio 2×8), gated attention.
            per_modality_projections=v23, video_hidden_dim=32, audio_hidden_dim=16, proj_bias=v23,
            video_gated_attn=v23, audio_gated_attn=v23,
        )
        vae = AutoencoderKLLTX2Video(
            latent_channels=8, block_out_channels=(16, 32, 64, 64), decoder_block_out_channels=(16, 32, 64),
            layers_per_block=(1, 1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1),
            spatio_temporal_scaling=(True,) * 4, decoder_spatio_temporal_scaling=(True,) * 3,
            decoder_inject_noise=(False,) * 4,
            downsample_type=("spatial", "temporal", "spatiotemporal", "spatiotemporal"),
            upsample_type=("spatiotemporal",) * 3, upsample_residual=(True,) * 3, upsample_factor=(2, 2, 2),
            timestep_conditioning=False, patch_size=4, patch_size_t=1, encoder_causal=True, decoder_causal=False,
            encoder_spatial_padding_mode="zeros", decoder_spatial_padding_mode="reflect",
            # Always pass these: derived values would be 64/16 for this topology (pitfall 2).
            spatial_compression_ratio=32, temporal_compression_ratio=8,
        )
        # 8 latent channels × 16 mel bins = 128-wide audio tokens, as in LTX-2. The latent statistics have
        # base_channels entries applied to packed tokens, so base_channels must be 8 × 64 / 4 = 128; three
        # levels give the 4× compression the pipelines assume, at constant width to stay small.
        audio_vae = AutoencoderKLLTX2Audio(
            base_channels=128, output_channels=2, ch_mult=(1, 1, 1), num_res_blocks=1, in_channels=2,
            latent_channels=8, norm_type="pixel", causality_axis="height", sample_rate=16_000,
            mel_hop_length=160, is_causal=True, mel_bins=64, double_z=True,
        )
        if v23:
            # 16 kHz from the mel frames (100/s: 8·5·4 = 160×), then bandwidth extension to 48 kHz from a mel
            # spectrogram of that (hop 80: 200/s, 6·5·8 = 240×).
            vocoder = LTX2VocoderWithBWE(
                in_channels=128, hidden_channels=32, out_channels=2, upsample_kernel_sizes=[16, 11, 8],
                upsample_factors=[8, 5, 4], resnet_kernel_sizes=[3], resnet_dilations=[[1, 3, 5]],
                bwe_in_channels=128, bwe_hidden_channels=32, bwe_out_channels=2,
                bwe_upsample_kernel_sizes=[12, 11, 16], bwe_upsample_factors=[6, 5, 8], bwe_resnet_kernel_sizes=[3],
                bwe_resnet_dilations=[[1, 3, 5]], num_mel_channels=64, input_sampling_rate=16_000,
                output_sampling_rate=48_000,
            )
        else:
            vocoder = LTX2Vocoder(
                in_channels=128, hidden_channels=32, out_channels=2, upsample_kernel_sizes=[12, 10, 16],
                upsample_factors=[6, 5, 8], resnet_kernel_sizes=[3], resnet_dilations=[[1, 3, 5]],
                output_sampling_rate=24_000,
            )
        transformer = LTX2VideoTransformer3DModel(
            in_channels=8, out_channels=8, num_attention_heads=2, attention_head_dim=16, cross_attention_dim=32,
            audio_in_channels=128, audio_out_channels=128, audio_num_attention_heads=2, audio_attention_head_dim=8,
            audio_cross_attention_dim=16, num_layers=2, caption_channels=TINY_TEXT_WIDTH, rope_type="split",
            rope_double_precision=True, vae_scale_factors=(8, 32, 32), audio_scale_factor=4,
            timestep_scale_multiplier=1000, cross_attn_timestep_scale_multiplier=1000, perturbed_attn=True,
            gated_attn=v23, audio_gated_attn=v23, cross_attn_mod=v23, audio_cross_attn_mod=v23,
            use_prompt_embeddings=not v23,
        )
    finally:
        torch.random.set_rng_state(generator_state)
    scheduler = FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True, base_shift=0.95, max_shift=2.05, base_image_seq_len=1024,
        max_image_seq_len=4096, shift_terminal=0.1,
    )
    return ModelComponents(
        tokenizer=tokenizer, text_encoder=text_encoder, connectors=connectors, vae=vae, audio_vae=audio_vae,
        vocoder=vocoder, transformer=transformer, scheduler=scheduler, name=TINY_23 if v23 else TINY,
        max_sequence_length=TINY_MAX_SEQUENCE_LENGTH, stg_blocks=[1], inference_steps=TINY_INFERENCE_STEPS,
    )


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A WordPiece tokenizer over a fixed vocabulary: the special tokens, single characters (word-initial
    and `##` continuations, so any word still tokenizes) and the words of `_CORPUS` whole.

    The vocabulary is written out rather than trained because the `tokenizers` trainer breaks ties in a
    different order from run to run, and the preset must be bit-identical for a given seed.
    """
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789.,;:!?'\"-()"
    pieces = SPECIAL_TOKENS + list(alphabet) + [f"##{c}" for c in alphabet]
    pieces += [word for word in dict.fromkeys(_CORPUS) if word not in pieces]
    tokenizer = Tokenizer(models.WordPiece(vocab={piece: i for i, piece in enumerate(pieces)}, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKD(), normalizers.Lowercase(),
                                                 normalizers.StripAccents()])
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", pieces.index("<bos>"))]
    )
    tokenizer.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>",
        padding_side="left", model_max_length=TINY_MAX_SEQUENCE_LENGTH,
    )
